"""`attention`: the one entry point for every attention in merg_jax.

Layout `[batch, length, heads, head_dim]`; k/v may have fewer heads than q (grouped queries); Lq may differ
from Lk (cross-attention). Mask semantics: `merg_jax.kernels.mask`.
"""

from __future__ import annotations

import math

import jax
from jaxtyping import Array, Float

from merg_jax.kernels.blockwise import blockwise_attention
from merg_jax.kernels.mask import make_mask_info
from merg_jax.kernels.reference import masked_softmax_attention, reference_attention

IMPLS = ("auto", "reference", "xla", "blockwise")
# Below this many score entries per head the whole score matrix is cheap and one fused XLA program wins.
_SMALL_SCORES = 1 << 20


def _auto_impl(lq: int, lk: int) -> str:
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
    interpret: bool = False,
) -> Float[Array, "B Lq H Dv"]:
    """Masked multi-head attention. Returns `[B, Lq, H, Dv]` in q's dtype.

    impl: `reference` (naive float32, the definition), `xla` (same maths in the input dtype with float32
    softmax), `blockwise` (online softmax over key blocks, O(L) memory, custom VJP); `auto` picks by backend
    and shape. block_sizes: an int or (block_q, block_k) for the blocked implementations.
    """
    del interpret  # used by the Pallas kernels
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention: expected [B, L, H, D] inputs, got q{q.shape} k{k.shape} v{v.shape}")
    if k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"attention: incompatible shapes q{q.shape} k{k.shape} v{v.shape}")
    b, lq, _, d = q.shape
    info = make_mask_info(b, lq, k.shape[1], causal=causal, q_segment_ids=q_segment_ids,
                          kv_segment_ids=kv_segment_ids, q_span_ids=q_span_ids, kv_span_ids=kv_span_ids,
                          q_positions=q_positions, kv_positions=kv_positions)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    if impl == "reference":
        return reference_attention(q, k, v, info, scale)
    if impl == "auto":
        impl = _auto_impl(lq, k.shape[1])
    if impl == "xla":
        return masked_softmax_attention(q, k, v, info, scale, q.dtype)
    if impl == "blockwise":
        return blockwise_attention(q, k, v, info, scale, block_sizes)
    raise ValueError(f"attention: unknown impl {impl!r}; choose one of {IMPLS}")
