"""What every `merg-jax bench TARGET` checks before it measures anything: no stray arguments, its own flag checks,
and the PyTorch peer installed.

    code = preflight("speech", args, rest, parser, _check(args))
    if code is not None:
        return code          # 2, after one line per problem on stderr
"""

from __future__ import annotations

import argparse
import importlib.util
import sys


def preflight(target: str, args, rest: list[str], parser: argparse.ArgumentParser, problems: list[str], *,
              needs_torch: bool = True) -> int | None:
    """None when the run may go on, else the exit status (2) after the usage and one line per problem."""
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if problems:
        parser.print_usage(sys.stderr)
        for p in problems:
            print(f"merg-jax bench {target}: error: {p}", file=sys.stderr)
        return 2
    if needs_torch and (importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None):
        print(f"merg-jax bench {target}: the peer side needs PyTorch and transformers, which are not installed. "
              "Install the CPU build (`pip install torch==2.13.0`) and run again.", file=sys.stderr)
        return 2
    return None
