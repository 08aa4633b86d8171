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
(`Llm.panel_weights`, `Llm.layer_blocks(panels=...)`); `merg-jax bench llm` measures it against Hugging Face
`generate`.

Build: `panel_matmul.cc` is compiled on first use and registered as the custom call `merg_panel_matmul`
(`kernels.cpu_library`: g++ -O3 -march=native, cached per machine; `MERG_JAX_CPU_KERNELS=off` turns it off).
Without a compiler, or on a failed build, `available()` is False, `unavailable_reason()` says why (once, in the
log too), and callers use XLA's dot.

Reference: `panel_matmul_reference` (unpack, then `jnp.dot` at HIGHEST precision); tests/test_panel_matmul.py
checks the kernel against it.
"""

from __future__ import annotations

import functools
import logging
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from merg_jax.kernels import cpu_library

log = logging.getLogger(__name__)

PANEL = 32  # columns per panel (panel_matmul.cc's kPanel)
TARGET = "merg_panel_matmul"
SOURCE = pathlib.Path(__file__).with_suffix(".cc")


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
    reason = cpu_library.register(SOURCE, {TARGET: "MergPanelMatmul"})
    if reason is not None:
        log.info("panel_matmul: using XLA's dot for decode products (%s)", reason)
    return reason
