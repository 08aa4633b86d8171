"""Blockwise attention in pure JAX: online softmax over key blocks, memory linear in length.

The fallback on every backend without a Pallas kernel (CPU included). Forward: for each query block, a loop
over key blocks keeps a running max, sum and output (FlashAttention's recurrence); key blocks that the mask
rules out entirely are skipped with `lax.cond`. The custom VJP saves only the output and the log-sum-exp and
recomputes scores block by block: dq in one sweep over query blocks, dk/dv in one sweep over key blocks.
Peak temporaries are O(B·H·block_q·block_k), never O(Lq·Lk).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from merg_jax.kernels.mask import MaskInfo, PaddedMask, element_mask, needed_blocks, pad_to_blocks
from merg_jax.kernels.vma import varying_like

DEFAULT_BLOCK = 512


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def _blocks(x, block: int, axis: int = 1):
    """[B, L, ...] → [N, B, block, ...] (block index leading, for lax.map / dynamic indexing)."""
    shape = x.shape
    x = x.reshape(shape[:axis] + (shape[axis] // block, block) + shape[axis + 1:])
    return jnp.moveaxis(x, axis, 0)


def _unblocks(x, axis: int = 1):
    x = jnp.moveaxis(x, 0, axis)
    return x.reshape(x.shape[:axis] + (x.shape[axis] * x.shape[axis + 1],) + x.shape[axis + 2:])


def _block_mask(m: PaddedMask, qi, ki, bq: int, bk: int):
    def cut(x, i, b):
        return jax.lax.dynamic_slice_in_dim(x, i * b, b, axis=1)

    return element_mask(m.causal, cut(m.q_segment_ids, qi, bq), cut(m.kv_segment_ids, ki, bk),
                        cut(m.q_positions, qi, bq), cut(m.kv_positions, ki, bk),
                        cut(m.q_span_ids, qi, bq), cut(m.kv_span_ids, ki, bk))  # [B, bq, bk]


def _scores(qb, kb, scale):
    """qb [B, bq, Hk, G, D], kb [B, bk, Hk, D] → [B, Hk, G, bq, bk] float32."""
    return jnp.einsum("bqkgd,bskd->bkgqs", qb, kb, preferred_element_type=jnp.float32) * scale


def _forward(q, k, v, m: PaddedMask, need, scale, bq, bk):
    """q [B, Lqp, Hk, G, D] (padded), k/v [B, Lkp, Hk, D]. Returns out (q's layout, f32) and lse [B,Hk,G,Lqp]."""
    b, lqp, hk, g, d = q.shape
    dv = v.shape[-1]
    kb_all, vb_all = _blocks(k, bk), _blocks(v, bk)
    nk = kb_all.shape[0]

    def one_q_block(args):
        qi, qb = args

        def visit(ki, carry):
            acc, row_max, row_sum = carry
            s = _scores(qb, kb_all[ki], scale)
            mask = _block_mask(m, qi, ki, bq, bk)[:, None, None]
            s = jnp.where(mask, s, -jnp.inf)
            new_max = jnp.maximum(row_max, s.max(-1))
            safe_max = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
            p = jnp.where(mask, jnp.exp(s - safe_max[..., None]), 0.0)
            correction = jnp.exp(jnp.where(jnp.isfinite(row_max), row_max, 0.0) - safe_max)
            correction = jnp.where(jnp.isfinite(row_max), correction, 0.0)
            acc = acc * correction[..., None] + jnp.einsum(
                "bkgqs,bskd->bkgqd", p.astype(vb_all.dtype), vb_all[ki], preferred_element_type=jnp.float32)
            return acc, new_max, row_sum * correction + p.sum(-1)

        def step(ki, carry):
            return jax.lax.cond(need[:, qi, ki].any(), visit, lambda _, c: c, ki, carry)

        init = jax.tree.map(functools.partial(varying_like, qb), (
            jnp.zeros((b, hk, g, bq, dv), jnp.float32), jnp.full((b, hk, g, bq), -jnp.inf, jnp.float32),
            jnp.zeros((b, hk, g, bq), jnp.float32)))
        acc, row_max, row_sum = jax.lax.fori_loop(0, nk, step, init)
        empty = row_sum == 0
        out = acc / jnp.where(empty, 1.0, row_sum)[..., None]
        lse = jnp.where(empty, -jnp.inf, row_max + jnp.log(jnp.where(empty, 1.0, row_sum)))
        return out, lse

    nq = lqp // bq
    out, lse = jax.lax.map(one_q_block, (jnp.arange(nq), _blocks(q, bq)))
    # out [NQ, B, Hk, G, bq, Dv] → [B, Lqp, Hk, G, Dv]; lse [NQ, B, Hk, G, bq] → [B, Hk, G, Lqp]
    out = jnp.moveaxis(out, 4, 2).reshape(nq, b, bq, hk, g, dv)
    lse = jnp.moveaxis(lse, 0, 3).reshape(b, hk, g, lqp)
    return _unblocks(out), lse


def _probs(qb, kb, lse_b, mask, scale):
    s = _scores(qb, kb, scale)
    safe_lse = jnp.where(jnp.isfinite(lse_b), lse_b, 0.0)
    return jnp.where(mask[:, None, None], jnp.exp(s - safe_lse[..., None]), 0.0)


def _backward(q, k, v, m, need, out, lse, d_out, scale, bq, bk):
    b, lqp, hk, g, d = q.shape
    nq, nk = lqp // bq, k.shape[1] // bk
    delta = jnp.einsum("bqkgd,bqkgd->bkgq", d_out.astype(jnp.float32), out.astype(jnp.float32))
    qb_all, dob_all = _blocks(q, bq), _blocks(d_out, bq)
    kb_all, vb_all = _blocks(k, bk), _blocks(v, bk)
    lse_b = jnp.moveaxis(lse.reshape(b, hk, g, nq, bq), 3, 0)  # [NQ, B, Hk, G, bq]
    delta_b = jnp.moveaxis(delta.reshape(b, hk, g, nq, bq), 3, 0)

    def ds_block(qi, ki):
        p = _probs(qb_all[qi], kb_all[ki], lse_b[qi], _block_mask(m, qi, ki, bq, bk), scale)
        dp = jnp.einsum("bqkgd,bskd->bkgqs", dob_all[qi], vb_all[ki], preferred_element_type=jnp.float32)
        return p, p * (dp - delta_b[qi][..., None])

    def dq_block(qi):
        def visit(ki, dq):
            _, ds = ds_block(qi, ki)
            return dq + scale * jnp.einsum("bkgqs,bskd->bqkgd", ds.astype(k.dtype), kb_all[ki],
                                           preferred_element_type=jnp.float32)

        step = lambda ki, dq: jax.lax.cond(need[:, qi, ki].any(), visit, lambda _, x: x, ki, dq)  # noqa: E731
        return jax.lax.fori_loop(0, nk, step, varying_like(q, jnp.zeros((b, bq, hk, g, d), jnp.float32)))

    def dkv_block(ki):
        def visit(qi, carry):
            dk, dv = carry
            p, ds = ds_block(qi, ki)
            dv = dv + jnp.einsum("bkgqs,bqkgd->bskd", p.astype(q.dtype), dob_all[qi],
                                 preferred_element_type=jnp.float32)
            dk = dk + scale * jnp.einsum("bkgqs,bqkgd->bskd", ds.astype(q.dtype), qb_all[qi],
                                         preferred_element_type=jnp.float32)
            return dk, dv

        step = lambda qi, c: jax.lax.cond(need[:, qi, ki].any(), visit, lambda _, x: x, qi, c)  # noqa: E731
        init = (varying_like(q, jnp.zeros((b, bk, hk, d), jnp.float32)),
                varying_like(q, jnp.zeros((b, bk, hk, v.shape[-1]), jnp.float32)))
        return jax.lax.fori_loop(0, nq, step, init)

    dq = _unblocks(jax.lax.map(dq_block, jnp.arange(nq)))
    dk, dv = jax.lax.map(dkv_block, jnp.arange(nk))
    return dq.astype(q.dtype), _unblocks(dk).astype(k.dtype), _unblocks(dv).astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _attend(q, k, v, m, causal, scale, bq, bk):
    return _attend_fwd(q, k, v, m, causal, scale, bq, bk)[0]


def _attend_fwd(q, k, v, m, causal, scale, bq, bk):
    m = PaddedMask(*m, causal=causal)
    need = needed_blocks(m, bq, bk)
    out, lse = _forward(q, k, v, m, need, scale, bq, bk)
    out = out.astype(q.dtype)
    return out, (q, k, v, tuple(m[:6]), out, lse)


def _attend_bwd(causal, scale, bq, bk, res, d_out):
    q, k, v, m_arrays, out, lse = res
    m = PaddedMask(*m_arrays, causal=causal)
    need = needed_blocks(m, bq, bk)
    dq, dk, dv = _backward(q, k, v, m, need, out, lse, d_out, scale, bq, bk)
    return dq, dk, dv, jax.tree.map(lambda _: None, m_arrays)


_attend.defvjp(_attend_fwd, _attend_bwd)


def blockwise_attention(q: Float[Array, "B Lq H D"], k: Float[Array, "B Lk Hk D"], v: Float[Array, "B Lk Hk Dv"],
                        info: MaskInfo, scale: float, block_sizes=None) -> Float[Array, "B Lq H Dv"]:
    """`block_sizes`: None, an int, or (block_q, block_k); blocks are capped at the (8-rounded) lengths."""
    b, lq, h, d = q.shape
    lk, hk = k.shape[1], k.shape[2]
    if block_sizes is None:
        block_sizes = DEFAULT_BLOCK
    bq, bk = (block_sizes, block_sizes) if isinstance(block_sizes, int) else tuple(block_sizes)
    bq, bk = min(bq, _round_up(lq, 8)), min(bk, _round_up(lk, 8))
    lqp, lkp = _round_up(lq, bq), _round_up(lk, bk)
    m = pad_to_blocks(info, lqp, lkp)
    qp = jnp.pad(q, ((0, 0), (0, lqp - lq), (0, 0), (0, 0))).reshape(b, lqp, hk, h // hk, d)
    kp = jnp.pad(k, ((0, 0), (0, lkp - lk), (0, 0), (0, 0)))
    vp = jnp.pad(v, ((0, 0), (0, lkp - lk), (0, 0), (0, 0)))
    out = _attend(qp, kp, vp, tuple(m[:6]), info.causal, float(scale), bq, bk)
    return out.reshape(b, lqp, h, v.shape[-1])[:, :lq]


def default_scale(d: int) -> float:
    return 1.0 / math.sqrt(d)
