"""What every `merg-jax` command shares: progress lines on stdout, and bad input as one line on stderr with exit
status 2 (no traceback)."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("merg_jax")


def setup_logging() -> None:
    """merg_jax's log lines (progress, results) go to stdout as plain text; other libraries keep their own level."""
    ours = [h for h in log.handlers if getattr(h, "_merg_cli", False)]
    if ours:
        # The current stdout: a caller (a test, a notebook) may have replaced it. Not setStream: it flushes the
        # old stream, which may be closed by now.
        ours[0].stream = sys.stdout
    else:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._merg_cli = True
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def usage_error(prog: str, message: object) -> int:
    """Prints `prog: error: message` on one line to stderr; returns the exit status 2."""
    text = " ".join(str(message).split("\n"))
    print(f"{prog}: error: {text}", file=sys.stderr)
    return 2


__all__ = ["log", "setup_logging", "usage_error"]
