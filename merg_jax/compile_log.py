"""Which XLA programs were compiled while a block ran: the check behind "compile once".

    with CompileLog() as compiled:
        responder(dialogue, out=out)
    assert compiled.names == []            # a second reply compiles nothing

Every backend compilation JAX performs reports its duration to `jax.monitoring` under
`/jax/core/compile/backend_compile_duration` with the program's name. A program loaded from the persistent
compilation cache (merg_jax.compile_cache) reports under the same event and is counted too: the count is of
programs made ready for this process, which is what "compile once" is about. `names` lists them in order (a
name twice: the same function compiled for two shapes or shardings, or recompiled), `seconds` their compile
times.
"""

from __future__ import annotations

import collections

import jax

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileLog:
    """A context manager collecting the XLA compilations inside its block (see the module docstring)."""

    def __init__(self):
        self.names: list[str] = []
        self.seconds: list[float] = []

    def _listen(self, event: str, duration: float, **kwargs) -> None:
        if event == BACKEND_COMPILE_EVENT:
            self.names.append(str(kwargs.get("fun_name", "?")))
            self.seconds.append(float(duration))

    def __enter__(self) -> CompileLog:
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listen)

    def counts(self) -> dict[str, int]:
        """{program name: times compiled}."""
        return dict(collections.Counter(self.names))


__all__ = ["BACKEND_COMPILE_EVENT", "CompileLog"]
