"""Dense attention for short sequences: the whole score matrix in one XLA program, with a hand-written VJP.

`impl="xla"` (what `auto` picks while Lq·Lk ≤ 2²⁰). Two choices make it fast where the reference is slow:

- **Rows layout.** Queries go to `[B·Hk, G·Lq, D]` (the G query heads that share a key/value head stacked
  along the rows) and keys/values to `[B·Hk, Lk, D]`, so every product is one batched matmul with the batch
  axis major and the contraction minor — the form XLA:CPU's dot emitters run fastest (the grouped 5-D einsum
  of the reference made it transpose operands per call; the whole attention ran ~1.8x slower).
- **FlashAttention's backward on the saved probabilities P** instead of autodiff through the softmax (which
  differentiates the max, the masks and the normalising division separately: more passes over the score
  matrix than the matmuls cost at these lengths):

      dV = Pᵀ·dO      dP = dO·Vᵀ      δ = rowsum(dO ⊙ O)      dS = P ⊙ (dP − δ)·scale      dQ = dS·K      dK = dSᵀ·Q

P is saved (float32), so the memory is the autodiff one.

**Causal query blocks.** When the mask is the plain causal one in sequence order (`info.causal` and
`info.in_order`: positions are the index, no spans, Lq = Lk), a block of queries ending at row e sees no
key at or after e. The queries are cut into blocks of `causal_query_block(L)` rows and each block attends only
to the keys before its end: 2 blocks skip a quarter of the score matrix, 8 blocks nearly half. Every block is
the same rows-layout program; the key/value gradients of the blocks add up through the slices.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from merg_jax.kernels.mask import MaskInfo, dense_mask
from merg_jax.kernels.reference import group_queries


def causal_query_block(length: int) -> int:
    """Rows per query block under a plain causal mask (`length` itself: no split).

    Measured fwd+bwd of the core on this 2-core CPU (docs/performance.md): 64-row blocks win at L = 128
    (3.7 -> 2.4 ms, B 8, 4 heads of 32), 128-row ones from L = 256 (19.4 -> 13.4 ms at L 256, 77.7 -> 39.2 ms
    at L 1024; B 4 / 1, 8 heads of 64); below L = 128 the split gains nothing.
    """
    if length < 128:
        return length
    return 64 if length < 256 else 128


def dense_attention(q: Float[Array, "B Lq H D"], k: Float[Array, "B Lk Hk D"], v: Float[Array, "B Lk Hk Dv"],
                    info: MaskInfo, scale: float) -> Float[Array, "B Lq H Dv"]:
    """softmax(q·kᵀ·scale, masked)·v with grouped heads; fully masked rows give exactly zero."""
    b, lq, h, _ = q.shape
    hk = k.shape[2]
    k, v = k.astype(q.dtype), v.astype(q.dtype)
    if not (info.causal and info.in_order):
        out = _rows_attention(_q_rows(q, hk), kv_rows(k), kv_rows(v), dense_mask(info), float(scale))
        return _from_q_rows(out, b, lq, h)
    block = causal_query_block(lq)
    outs = []
    for start in range(0, lq, block):
        end = min(start + block, lq)
        rows, keys = slice(start, end), slice(0, end)
        out = _rows_attention(_q_rows(q[:, rows], hk), kv_rows(k[:, keys]), kv_rows(v[:, keys]),
                              dense_mask(info, rows, keys), float(scale))
        outs.append(_from_q_rows(out, b, end - start, h))
    return jnp.concatenate(outs, axis=1)


def _q_rows(q: Float[Array, "B L H D"], hk: int) -> Float[Array, "BHk GL D"]:
    b, lq, h, d = q.shape
    return group_queries(q, hk).transpose(0, 2, 3, 1, 4).reshape(b * hk, (h // hk) * lq, d)


def kv_rows(x: Float[Array, "B S Hk D"]) -> Float[Array, "BHk S D"]:
    """Keys or values in the core's rows layout (what `KVCache` stores)."""
    b, s, hk, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b * hk, s, d)


def from_kv_rows(x: Float[Array, "BHk S D"], batch: int) -> Float[Array, "B S Hk D"]:
    """`kv_rows` undone: passed to `attention`, the core's own `kv_rows` cancels it, so no copy is made."""
    bhk, s, d = x.shape
    return x.reshape(batch, bhk // batch, s, d).transpose(0, 2, 1, 3)


def _from_q_rows(x: Float[Array, "BHk GL D"], b: int, lq: int, h: int) -> Float[Array, "B L H D"]:
    bhk, _, d = x.shape
    hk = bhk // b
    return x.reshape(b, hk, h // hk, lq, d).transpose(0, 3, 1, 2, 4).reshape(b, lq, h, d)


def _masked(s: Float[Array, "BHk GL S"], mask: Bool[Array, "B Lq S"], value) -> Float[Array, "BHk GL S"]:
    """where(mask, s, value), the `[B, Lq, S]` mask broadcast over every head of each batch row."""
    b, lq, lk = mask.shape
    view = s.reshape(b, -1, lq, lk)  # [B, Hk·G, Lq, S]: a bitcast of the rows layout
    return jnp.where(mask[:, None], view, value).reshape(s.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _rows_attention(q, k, v, mask, scale):
    return _forward(q, k, v, mask, scale)[0]


def _forward(q, k, v, mask, scale):
    s = jnp.einsum("nmd,nsd->nms", q, k).astype(jnp.float32) * scale
    s = _masked(s, mask, -jnp.inf)
    row_max = jnp.max(s, axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    p = _masked(jnp.exp(s - row_max), mask, 0.0)
    denom = jnp.sum(p, axis=-1, keepdims=True)
    p = p / jnp.where(denom == 0, 1.0, denom)
    return jnp.einsum("nms,nsd->nmd", p.astype(q.dtype), v), p


def _fwd(q, k, v, mask, scale):
    out, p = _forward(q, k, v, mask, scale)
    return out, (q, k, v, mask, p, out)


def _bwd(scale, res, d_out):
    q, k, v, mask, p, out = res
    dt = q.dtype
    d_out = d_out.astype(dt)
    dv = jnp.einsum("nms,nmd->nsd", p.astype(dt), d_out)
    dp = jnp.einsum("nmd,nsd->nms", d_out, v).astype(jnp.float32)
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    ds = (p * (dp - delta) * scale).astype(dt)
    return jnp.einsum("nms,nsd->nmd", ds, k), jnp.einsum("nms,nmd->nsd", ds, q), dv, None


_rows_attention.defvjp(_fwd, _bwd)
