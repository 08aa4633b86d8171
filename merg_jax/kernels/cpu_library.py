"""This project's XLA:CPU custom calls: C++ sources beside their Python wrappers, built on the user's machine.

    reason = cpu_library.register(SOURCE, {"merg_panel_matmul": "MergPanelMatmul"})  # None once registered

A source (`panel_matmul.cc`) is compiled once per machine with `g++ -O3 -march=native`
against the XLA FFI headers that ship with jaxlib, into `$XDG_CACHE_HOME/merg_jax/kernels/` (default
`~/.cache/...`), named by a hash of the source, the compiler and its version, the flags, jaxlib's version and the
CPU's model and feature flags (a cache shared by different machines never runs code built for another CPU); then
its handlers are registered with XLA under their custom-call names. `CXX` chooses the compiler;
`MERG_JAX_CPU_KERNELS=off` turns every kernel off. Without a compiler, or on a failed build, `register` returns
why, and the wrappers' callers use XLA's own ops.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile

import jax
import jaxlib

from merg_jax.compile_cache import cache_root

log = logging.getLogger(__name__)

ENV = "MERG_JAX_CPU_KERNELS"
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")


def register(source: pathlib.Path, targets: dict[str, str]) -> str | None:
    """Builds `source` (unless cached), loads it and registers each `{custom-call name: exported symbol}` for
    the CPU platform. Returns None on success, otherwise why not (the kernels are then not registered)."""
    choice = os.environ.get(ENV, "on").lower()
    if choice not in ("on", "off"):
        return f"{ENV}={os.environ[ENV]!r}: expected on or off"
    if choice == "off":
        return f"turned off by {ENV}=off"
    cxx = compiler()
    if not cxx:
        return "no C++ compiler (install g++, or set CXX)"
    try:
        lib = ctypes.cdll.LoadLibrary(str(build(source, cxx)))
        for name, symbol in targets.items():
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as e:
        return str(e)
    return None


def compiler() -> str | None:
    """`$CXX`, else g++ or c++ on the PATH, else None."""
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def build(source: pathlib.Path, cxx: str) -> pathlib.Path:
    """The built library of `source` for this machine, compiled first when the cache has none (RuntimeError
    with the compiler's message when that fails)."""
    library = library_path(source, cxx)
    if not library.exists():
        _compile(source, cxx, library)
    return library


def library_path(source: pathlib.Path, cxx: str) -> pathlib.Path:
    """Where the built library lives: the cache folder, named by everything the build depends on."""
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60,
                                 check=False).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"C++ compiler {cxx!r} does not run: {e}") from e
    key = hashlib.sha256()
    for part in (source.read_bytes(), cxx.encode(), version.encode(), " ".join(FLAGS).encode(),
                 jaxlib.__version__.encode(), _cpu_fingerprint().encode()):
        key.update(part)
        key.update(b"\0")
    return cache_root() / "kernels" / f"{source.stem}-{key.hexdigest()[:16]}.so"


def _cpu_fingerprint() -> str:
    """The CPU's model and feature flags (Linux), or what `platform` knows: `-march=native` builds for them."""
    try:
        lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    wanted = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in wanted}))


def _compile(source: pathlib.Path, cxx: str, library: pathlib.Path) -> None:
    """Compiles `source` into `library` (written under a temporary name and renamed: concurrent builds by
    several processes each finish with a whole file)."""
    library.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=library.stem, suffix=".so.tmp", dir=library.parent)
    os.close(fd)
    cmd = [cxx, *FLAGS, f"-I{jax.ffi.include_dir()}", str(source), "-o", tmp]
    log.info("building %s", library)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            tail = " ".join(done.stderr.strip().splitlines()[-5:])
            raise RuntimeError(f"building {source.name} failed ({' '.join(cmd)}): {tail}")
        os.replace(tmp, library)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
