"""`attention`: the one entry point for every attention in merg_jax.

Layout `[batch, length, heads, head_dim]`; k/v may have fewer heads than q (grouped queries); Lq may differ
from Lk (cross-attention). Mask semantics: `merg_jax.kernels.mask`.
"""

from __future__ import annotations

import math

import jax
from jaxtyping import Array, Float

from merg_jax.kernels.blockwise import blockwise_attention
from merg_jax.kernels.dense import dense_attention
from merg_jax.kernels.mask import make_mask_info
from merg_jax.kernels.pallas_gpu import pallas_gpu_attention
from merg_jax.kernels.pallas_tpu import pallas_tpu_attention
from merg_jax.kernels.reference import reference_attention
from merg_jax.kernels.shapes import check_qkv

IMPLS = ("auto", "reference", "xla", "blockwise", "pallas_tpu", "pallas_gpu")
# Below this many score entries per head the whole score matrix is cheap and one fused XLA program wins.
_SMALL_SCORES = 1 << 20
# Shortest query/key lengths worth a kernel launch (decode steps and tiny cross-attentions stay on XLA).
_KERNEL_MIN_LENGTH = {"tpu": 128, "gpu": 64}
_KERNEL_PLATFORM = {"pallas_tpu": "tpu", "pallas_gpu": "gpu"}


def auto_impl(lq: int, lk: int, backend: str | None = None) -> str:
    """The implementation `impl="auto"` runs: the one place that branches on hardware."""
    backend = jax.default_backend() if backend is None else backend
    backend = "gpu" if backend in ("cuda", "rocm") else backend
    if backend in _KERNEL_MIN_LENGTH and min(lq, lk) >= _KERNEL_MIN_LENGTH[backend]:
        return f"pallas_{backend}"
    return "xla" if lq * lk <= _SMALL_SCORES else "blockwise"


def attention(
    q: Float[Array, "B Lq H D"],
    k: Float[Array, "B Lk Hk D"],
    v: Float[Array, "B Lk Hk Dv"],
    *,
    causal: bool = False,
    q_segment_ids=None,
    kv_segment_ids=None,
    q_span_ids=None,
    kv_span_ids=None,
    q_positions=None,
    kv_positions=None,
    scale: float | None = None,
    impl: str = "auto",
    block_sizes=None,
    interpret: bool | None = None,
) -> Float[Array, "B Lq H Dv"]:
    """Masked multi-head attention. Returns `[B, Lq, H, Dv]` in q's dtype.

    impl: `reference` (naive float32, the definition), `xla` (same maths in the input dtype with float32
    softmax), `blockwise` (online softmax over key blocks, O(L) memory, custom VJP), `pallas_tpu` (Mosaic) and
    `pallas_gpu` (Triton) flash kernels with block skipping; `auto` picks by backend and shape (`auto_impl`).
    block_sizes: an int or (block_q, block_k) for the blocked implementations. interpret: run a Pallas kernel
    in the Pallas interpreter; None means "when the backend is not the kernel's platform" (so the same code
    runs, slowly but exactly, on CPU).
    """
    check_qkv("attention", q, k, v)
    b, lq, _, d = q.shape
    info = make_mask_info(b, lq, k.shape[1], causal=causal, q_segment_ids=q_segment_ids,
                          kv_segment_ids=kv_segment_ids, q_span_ids=q_span_ids, kv_span_ids=kv_span_ids,
                          q_positions=q_positions, kv_positions=kv_positions)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    if impl == "reference":
        return reference_attention(q, k, v, info, scale)
    if impl == "auto":
        impl = auto_impl(lq, k.shape[1])
    if impl == "xla":
        return dense_attention(q, k, v, info, scale)
    if impl == "blockwise":
        return blockwise_attention(q, k, v, info, scale, block_sizes)
    if impl in _KERNEL_PLATFORM:
        if interpret is None:
            backend = jax.default_backend()
            interpret = ("gpu" if backend in ("cuda", "rocm") else backend) != _KERNEL_PLATFORM[impl]
        kernel = pallas_tpu_attention if impl == "pallas_tpu" else pallas_gpu_attention
        return kernel(q, k, v, info, scale, block_sizes, interpret=interpret)
    raise ValueError(f"attention: unknown impl {impl!r}; choose one of {IMPLS}")
