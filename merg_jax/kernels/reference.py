"""The naive definition of attention: full score matrix, float32. Every other implementation is tested
against this one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from merg_jax.kernels.mask import MaskInfo, dense_mask


def group_queries(q: Float[Array, "B Lq H D"], num_kv_heads: int) -> Float[Array, "B Lq Hk G D"]:
    b, lq, h, d = q.shape
    if h % num_kv_heads:
        raise ValueError(f"attention: {h} query heads are not a multiple of {num_kv_heads} key/value heads")
    return q.reshape(b, lq, num_kv_heads, h // num_kv_heads, d)


def masked_softmax_attention(q, k, v, info: MaskInfo, scale: float, compute_dtype) -> Float[Array, "B Lq H D"]:
    """softmax(q·k*scale masked)·v with grouped heads; fully masked rows give exactly zero."""
    b, lq, h, d = q.shape
    qg = group_queries(q, k.shape[2]).astype(compute_dtype)
    scores = jnp.einsum("bqkgd,bskd->bkgqs", qg, k.astype(compute_dtype)).astype(jnp.float32) * scale
    mask = dense_mask(info)[:, None, None]  # [B, 1, 1, Lq, Lk]
    scores = jnp.where(mask, scores, -jnp.inf)
    row_max = jnp.max(scores, axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    p = jnp.where(mask, jnp.exp(scores - row_max), 0.0)
    denom = jnp.sum(p, axis=-1, keepdims=True)
    p = p / jnp.where(denom == 0, 1.0, denom)
    out = jnp.einsum("bkgqs,bskd->bqkgd", p.astype(compute_dtype), v.astype(compute_dtype))
    return out.reshape(b, lq, h, v.shape[-1]).astype(q.dtype)


def reference_attention(q, k, v, info: MaskInfo, scale: float) -> Float[Array, "B Lq H D"]:
    with jax.default_matmul_precision("highest"):
        return masked_softmax_attention(q, k, v, info, scale, jnp.float32)
