"""A CPU matmul for a decode step's few rows: `x [M, K] @ W [K, N]`, W packed in 32-column panels.

    from merg_jax.kernels import panel_matmul as pm
    if pm.available():                        # builds the kernel on first use (a C++ compiler, ~3 s), or says why not
        packed = pm.pack(w)                   # [K, N] -> [1, ceil(N/32), K, 32]; stacked [L, K, N] -> [L, ...]
        y = pm.panel_matmul(x, packed, n=N)   # [M, K] -> [M, N], inside or outside jit
    pm.unavailable_reason()                   # None, or why the XLA dot is used instead

Why: a decode step multiplies B ≤ 8 rows by every weight matrix once, so it is a stream of the weights. At
batch 8 XLA:CPU's product kernels (Eigen, oneDNN, XNNPACK/YNNPACK alike) run the 33.5M model's shapes at
24-36 GB/s, compute-bound in kernels made for large M (docs/performance.md); at batch 1 its strided reads of
`[K, N]` leave bandwidth unused. This kernel reads each weight once per step as contiguous panels and spends one
FMA per loaded vector per row (panel_matmul.cc says how). `generate` uses it on CPU for float32 models
(`Llm.layer_blocks(panel_matmul=True)`); `merg-jax bench llm` measures it against Hugging Face `generate`.

Build: the source (`panel_matmul.cc`) is compiled once per machine with `g++ -O3 -march=native` against the XLA FFI
headers that ship with jaxlib, into `$XDG_CACHE_HOME/merg_jax/kernels/` (default `~/.cache/...`), named by a hash
of the source, the compiler, the flags, jaxlib's version and the CPU's model and feature flags (a cache shared
by different machines never runs code built for another CPU). Then it is registered with XLA as the custom call
`merg_panel_matmul`. `CXX` chooses the compiler; `MERG_JAX_PANEL_MATMUL=off` turns the kernel off. Without a
compiler, or on a failed build, `available()` is False, `unavailable_reason()` says why (once, in the log too), and
callers use XLA's dot.

Reference: `panel_matmul_reference` (unpack, then `jnp.dot` at HIGHEST precision); tests/test_panel_matmul.py
checks the kernel against it.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import math
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from jaxtyping import Array, Float

log = logging.getLogger(__name__)

PANEL = 32  # columns per panel (panel_matmul.cc's kPanel)
TARGET = "merg_panel_matmul"
ENV = "MERG_JAX_PANEL_MATMUL"
SOURCE = pathlib.Path(__file__).with_suffix(".cc")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")


def pack(w: Float[Array, "*L K N"]) -> Float[Array, "L P K 32"]:
    """Weights `[K, N]` (or stacked `[L, K, N]`) → panels `[L, ceil(N/32), K, 32]`, zero-padded to whole panels:
    `packed[l, p, k, j] = w[l, k, 32p + j]`. One transposing copy."""
    if w.ndim == 2:
        w = w[None]
    if w.ndim != 3:
        raise ValueError(f"pack: expected weights [K, N] or [L, K, N], got shape {w.shape}")
    layers, k, n = w.shape
    panels = math.ceil(n / PANEL)
    w = jnp.pad(w, ((0, 0), (0, 0), (0, panels * PANEL - n)))
    return jnp.transpose(w.reshape(layers, k, panels, PANEL), (0, 2, 1, 3))


def unpack(packed: Float[Array, "L P K 32"], n: int) -> Float[Array, "L K N"]:
    """The inverse of `pack`: panels → `[L, K, n]`."""
    layers, panels, k, _ = packed.shape
    return jnp.transpose(packed, (0, 2, 1, 3)).reshape(layers, k, panels * PANEL)[..., :n]


def panel_matmul(x: Float[Array, "M K"], packed: Float[Array, "L P K 32"], n: int,
                 layer: int = 0) -> Float[Array, "M N"]:
    """`x @ W_layer` where `packed = pack(W)`; float32, on CPU, after `available()` returned True.

    n: W's column count (the panels may hold up to 31 zero columns more). layer: which of the stacked matrices
    (a Python int: the kernel offsets into the stack, so no slice of it is copied)."""
    if x.ndim != 2 or packed.ndim != 4 or packed.shape[-1] != PANEL or packed.shape[2] != x.shape[1]:
        raise ValueError(f"panel_matmul: x {x.shape} and packed {packed.shape} (expected [M, K], [L, P, K, 32])")
    if math.ceil(n / PANEL) != packed.shape[1]:
        raise ValueError(f"panel_matmul: n={n} does not fill the {packed.shape[1]} panels of {packed.shape}")
    if not 0 <= layer < packed.shape[0]:
        raise ValueError(f"panel_matmul: layer {layer} outside the stack of {packed.shape[0]}")
    if x.dtype != jnp.float32 or packed.dtype != jnp.float32:
        raise ValueError(f"panel_matmul: float32 only (x {x.dtype}, packed {packed.dtype})")
    if not available():
        raise RuntimeError(f"panel_matmul: the kernel is not available: {unavailable_reason()}")
    out = jax.ShapeDtypeStruct((x.shape[0], n), jnp.float32)
    return jax.ffi.ffi_call(TARGET, out)(x, packed, layer=np.int64(layer))


def panel_matmul_reference(x: Float[Array, "M K"], packed: Float[Array, "L P K 32"], n: int,
                           layer: int = 0) -> Float[Array, "M N"]:
    """What `panel_matmul` computes, by definition: the unpacked weights, XLA's dot at full float32 precision."""
    return jnp.dot(x, unpack(packed, n)[layer], precision=jax.lax.Precision.HIGHEST)


def available() -> bool:
    """Whether the kernel is built, loaded and registered (building it on the first call)."""
    return unavailable_reason() is None


@functools.cache
def unavailable_reason() -> str | None:
    """None once the kernel is registered with XLA; otherwise why it cannot be (also logged, once)."""
    reason = _load()
    if reason is not None:
        log.info("panel_matmul: using XLA's dot for decode products (%s)", reason)
    return reason


def _load() -> str | None:
    choice = os.environ.get(ENV, "on").lower()
    if choice not in ("on", "off"):
        return f"{ENV}={os.environ[ENV]!r}: expected on or off"
    if choice == "off":
        return f"turned off by {ENV}=off"
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        return "no C++ compiler (install g++, or set CXX)"
    try:
        lib = ctypes.cdll.LoadLibrary(str(build(compiler)))
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.MergPanelMatmul), platform="cpu")
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        return str(e)
    return None


def build(compiler: str) -> pathlib.Path:
    """The built kernel library for this machine, compiled first if the cache has none (RuntimeError with the
    compiler's message when that fails)."""
    library = library_path(compiler)
    if not library.exists():
        _build(compiler, library)
    return library


def library_path(compiler: str) -> pathlib.Path:
    """Where the built kernel lives: the cache folder, named by everything the build depends on."""
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60,
                                 check=False).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"C++ compiler {compiler!r} does not run: {e}") from e
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), compiler.encode(), version.encode(), " ".join(FLAGS).encode(),
                 jaxlib.__version__.encode(),
                 _cpu_fingerprint().encode()):
        key.update(part)
        key.update(b"\0")
    base = os.environ.get("XDG_CACHE_HOME") or str(pathlib.Path.home() / ".cache")
    return pathlib.Path(base) / "merg_jax" / "kernels" / f"panel_matmul-{key.hexdigest()[:16]}.so"


def _cpu_fingerprint() -> str:
    """The CPU's model and feature flags (Linux), or what `platform` knows: `-march=native` builds for them."""
    try:
        lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    wanted = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in wanted}))


def _build(compiler: str, library: pathlib.Path) -> None:
    """Compiles the source into `library` (written under a temporary name and renamed: concurrent builds by
    several processes each finish with a whole file)."""
    library.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=library.stem, suffix=".so.tmp", dir=library.parent)
    os.close(fd)
    cmd = [compiler, *FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", tmp]
    log.info("panel_matmul: building %s", library)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            tail = " ".join(done.stderr.strip().splitlines()[-5:])
            raise RuntimeError(f"building {SOURCE.name} failed ({' '.join(cmd)}): {tail}")
        os.replace(tmp, library)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
