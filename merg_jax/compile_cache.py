"""JAX's persistent compilation cache, on by default for `merg-jax` commands.

    merg-jax respond ...                         # the first run compiles and stores; the next ones load
    JAX_COMPILATION_CACHE_DIR=/fast/disk ...     # JAX's own variable: where the cache lives
    MERG_JAX_COMPILATION_CACHE=off ...           # no persistent cache

On CPU a short command spends most of its time compiling: `merg-jax respond` compiles its encoders, the LLM's
prefill and decode loop and both generators; a resumed training run compiles every stage's step again. JAX can keep
compiled programs on disk, keyed by the program, the compile options, the devices and the versions, so a second
process running the same programs loads them instead (the first call of the tiny LLM's training step: 3.9 s with
compilation, 0.6 s with the program loaded). `configure()` sets that up through JAX's environment variables before
JAX is imported, unless the user set `JAX_COMPILATION_CACHE_DIR` already or turned the cache off:

- the folder: `$XDG_CACHE_HOME/merg_jax/xla` (default `~/.cache/merg_jax/xla`);
- its size: at most 4 GiB (`JAX_COMPILATION_CACHE_MAX_SIZE`), least recently used programs evicted first.

JAX stores only programs that took at least a second to compile (`jax_persistent_cache_min_compile_time_secs`),
so the cache holds the big steps, not every small helper.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import MutableMapping

ENV = "MERG_JAX_COMPILATION_CACHE"
JAX_DIR = "JAX_COMPILATION_CACHE_DIR"
JAX_MAX_SIZE = "JAX_COMPILATION_CACHE_MAX_SIZE"
MAX_SIZE_BYTES = 4 << 30


def cache_root(environ: MutableMapping[str, str] = os.environ) -> pathlib.Path:
    """`$XDG_CACHE_HOME/merg_jax`, `~/.cache/merg_jax` when XDG_CACHE_HOME is unset: where merg_jax keeps what it
    compiles (XLA programs here, the CPU kernels' libraries in `kernels/`, `merg_jax.kernels.cpu_library`)."""
    base = environ.get("XDG_CACHE_HOME") or str(pathlib.Path.home() / ".cache")
    return pathlib.Path(base) / "merg_jax"


def default_dir(environ: MutableMapping[str, str] = os.environ) -> pathlib.Path:
    """`$XDG_CACHE_HOME/merg_jax/xla`, `~/.cache/merg_jax/xla` when XDG_CACHE_HOME is unset."""
    return cache_root(environ) / "xla"


def configure(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Points JAX's persistent cache at its folder (setting environment variables JAX reads when it is first
    imported); returns the folder, or None when the cache is off. A folder the user chose is kept.

    Raises ValueError for a `MERG_JAX_COMPILATION_CACHE` other than `on` / `off`."""
    choice = (environ.get(ENV) or "on").lower()
    if choice not in ("on", "off"):
        raise ValueError(f"{ENV}={environ[ENV]!r}: expected on or off")
    if choice == "off":
        return None
    if not environ.get(JAX_DIR):
        environ[JAX_DIR] = str(default_dir(environ))
        environ.setdefault(JAX_MAX_SIZE, str(MAX_SIZE_BYTES))
    return environ[JAX_DIR]
