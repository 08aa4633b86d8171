"""Pallas GPU (Triton) attention: fused forward and backward kernels with block skipping.

FlashAttention-2 on the Triton backend of `jax.experimental.pallas`, with the merg_jax mask semantics
(`merg_jax.kernels.mask`: segment ids, causal by positions, bidirectional non-zero spans), grouped-query heads,
cross-attention (Lq ≠ Lk), float32 and bfloat16.

Layout of the work:
- Sequences are padded to whole blocks with `pad_to_blocks` (padding gets segment ids nobody shares) and head
  dims to a power of two ≥ 16 (zeros, which change no dot product) — Triton wants power-of-two tiles.
- Block skipping: `needed_blocks` says which (query block, key block) pairs may hold a visible pair. Outside the
  kernels each needed row is compacted into a schedule `[count, idx_0, idx_1, ...]` (needed block indices in
  increasing order), so a kernel loops `count` times over exactly the needed blocks and a skipped block costs
  nothing, not even a branch.
- Forward, grid (q block, batch, head): online softmax over the scheduled key blocks; writes the output, the
  log-sum-exp (for the backward) and the number of key blocks it computed.
- Backward (custom VJP): delta = rowsum(dO∘O) in XLA; a dq kernel over query blocks (grid as the forward) and a
  dk/dv kernel over key blocks (grid (key block, batch, kv head), looping over the query heads of its group and
  the scheduled query blocks, so grouped-query gradients are summed in registers). Both recompute
  P = exp(S - lse) and count the blocks they computed.
- Fully masked rows (a query whose segment no key has, padding) have no visible key: their output, lse-weights
  and gradients are exactly zero. Scores of masked pairs are set to a large finite negative value and the
  probabilities selected to 0, so no inf - inf ever happens.

`interpret=True` runs the very same kernel bodies through the Pallas HLO interpreter (that is how the CPU tests
run them). float32 dots ask for IEEE precision (`Precision.HIGHEST`), so Triton does not silently use TF32.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
from jaxtyping import Array, Float, Int

from merg_jax.kernels.mask import MaskInfo, PaddedMask, element_mask, needed_blocks, pad_to_blocks
from merg_jax.kernels.shapes import check_qkv
from merg_jax.kernels.vma import out_struct

# A finite stand-in for -inf in scores (as the upstream Pallas kernels do), so running maxima stay finite.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
_MIN_TILE = 16  # Triton's tl.dot wants every dimension ≥ 16


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes (powers of two; below 16, Triton's minimum dot tile, they are raised to 16).

    Defaults are meant for H100 with head_dim 64-128 (not tuned on hardware yet)."""

    block_q: int = 128  # forward
    block_k: int = 64
    block_q_dq: int = 64  # dq kernel
    block_k_dq: int = 64
    block_q_dkv: int = 64  # dk/dv kernel
    block_k_dkv: int = 64

    @classmethod
    def uniform(cls, block_q: int, block_k: int | None = None) -> BlockSizes:
        block_k = block_q if block_k is None else block_k
        return cls(block_q, block_k, block_q, block_k, block_q, block_k)


class Visits(NamedTuple):
    """Key/query blocks each kernel program actually computed, counted inside the kernels (int32).

    forward: [B, H, NQ] key blocks per query block; dq: [B, H, NQ_dq] key blocks per query block;
    dkv: [B, H, NK_dkv] query blocks per key block (for query head h of the kv head's group).
    """

    forward: Int[Array, "B H NQ"]
    dq: Int[Array, "B H NQdq"] | None = None
    dkv: Int[Array, "B H NKdkv"] | None = None


class _Config(NamedTuple):
    """Static configuration of one attention problem (hashable; a nondiff argument of the custom VJP)."""

    scale: float
    causal: bool
    use_spans: bool
    blocks: BlockSizes
    interpret: bool
    num_warps: int
    num_stages: int


def _next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def _check_block(name: str, b: int):
    if not isinstance(b, int) or b < 1 or b & (b - 1):
        raise ValueError(f"pallas_gpu_attention: {name}={b!r} must be a power of two")


def _resolve_blocks(block_sizes, lq: int, lk: int) -> BlockSizes:
    if block_sizes is None:
        bs = BlockSizes()
    elif isinstance(block_sizes, BlockSizes):
        bs = block_sizes
    elif isinstance(block_sizes, int):
        bs = BlockSizes.uniform(block_sizes)
    else:
        bs = BlockSizes.uniform(*tuple(block_sizes))
    for f in dataclasses.fields(bs):
        _check_block(f.name, getattr(bs, f.name))
    # Tiles are at least Triton's minimum and never wider than the (power-of-two-rounded) sequence.
    cap_q, cap_k = max(_MIN_TILE, _next_pow2(lq)), max(_MIN_TILE, _next_pow2(lk))
    fit_q = lambda x: min(max(x, _MIN_TILE), cap_q)  # noqa: E731
    fit_k = lambda x: min(max(x, _MIN_TILE), cap_k)  # noqa: E731
    return BlockSizes(fit_q(bs.block_q), fit_k(bs.block_k), fit_q(bs.block_q_dq), fit_k(bs.block_k_dq),
                      fit_q(bs.block_q_dkv), fit_k(bs.block_k_dkv))


def _schedule(need: jax.Array) -> Int[Array, "B N M1"]:
    """[B, N, M] bool → [B, N, M + 1] int32 rows `[count, needed indices ascending..., (don't care)]`."""
    m = need.shape[-1]
    count = need.sum(-1, dtype=jnp.int32)
    order = jnp.argsort(~need, axis=-1, stable=True).astype(jnp.int32)  # needed blocks first, ascending
    # entries past `count` are never read; repeat the last needed index there (harmless, prefetch-friendly)
    last = jnp.take_along_axis(order, jnp.maximum(count - 1, 0)[..., None], axis=-1)
    order = jnp.where(jnp.arange(m) < count[..., None], order, last)
    return jnp.concatenate([count[..., None], order], axis=-1)


def _dot(a, b, *, trans_a: bool = False, trans_b: bool = False):
    """2-D dot with float32 accumulation; float32 inputs in IEEE precision (no TF32)."""
    precision = jax.lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return plgpu.dot(a, b, trans_a=trans_a, trans_b=trans_b, precision=precision)


def _mask(cfg: _Config, q_ids, kv_ids):
    q_seg, q_pos, q_span = q_ids
    kv_seg, kv_pos, kv_span = kv_ids
    return element_mask(cfg.causal, q_seg, kv_seg, q_pos, kv_pos, q_span, kv_span)


def _load_ids(seg_ref, pos_ref, span_ref, cfg: _Config, idx=Ellipsis):
    return seg_ref[idx], pos_ref[idx], (span_ref[idx] if cfg.use_spans else None)


# --------------------------------------------------------------------------------------------------- kernels


def _fwd_kernel(sched_ref, q_ref, k_ref, v_ref, qseg_ref, qpos_ref, qspan_ref, kseg_ref, kpos_ref, kspan_ref,
                o_ref, lse_ref, visits_ref, *, cfg: _Config, bk: int):
    q = q_ref[...]  # [bq, D]
    bq = q.shape[0]
    q_ids = _load_ids(qseg_ref, qpos_ref, qspan_ref, cfg)

    def body(j, carry):
        acc, m_prev, l_prev, n = carry
        ki = sched_ref[j + 1]
        ks = pl.ds(pl.multiple_of(ki * bk, bk), bk)
        k, v = k_ref[ks, :], v_ref[ks, :]
        mask = _mask(cfg, q_ids, _load_ids(kseg_ref, kpos_ref, kspan_ref, cfg, ks))
        s = jnp.where(mask, _dot(q, k, trans_b=True) * cfg.scale, _MASK_VALUE)  # [bq, bk] f32
        m_next = jnp.maximum(m_prev, s.max(axis=-1))
        p = jnp.where(mask, jnp.exp(s - m_next[:, None]), 0.0)
        correction = jnp.exp(m_prev - m_next)
        l_next = l_prev * correction + p.sum(axis=-1)
        acc = acc * correction[:, None] + _dot(p.astype(v.dtype), v)
        return acc, m_next, l_next, n + 1

    init = (jnp.zeros((bq, v_ref.shape[-1]), jnp.float32), jnp.full((bq,), _MASK_VALUE, jnp.float32),
            jnp.zeros((bq,), jnp.float32), jnp.int32(0))
    acc, m, l, n = jax.lax.fori_loop(0, sched_ref[0], body, init)
    empty = l == 0.0  # no visible key: output 0 (the backward zeroes P for such rows through the mask)
    safe_l = jnp.where(empty, 1.0, l)
    o_ref[...] = (acc / safe_l[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(empty, 0.0, m + jnp.log(safe_l))
    visits_ref[...] = n


def _dq_kernel(sched_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qseg_ref, qpos_ref, qspan_ref,
               kseg_ref, kpos_ref, kspan_ref, dq_ref, visits_ref, *, cfg: _Config, bk: int):
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]
    q_ids = _load_ids(qseg_ref, qpos_ref, qspan_ref, cfg)

    def body(j, carry):
        dq, n = carry
        ki = sched_ref[j + 1]
        ks = pl.ds(pl.multiple_of(ki * bk, bk), bk)
        k, v = k_ref[ks, :], v_ref[ks, :]
        mask = _mask(cfg, q_ids, _load_ids(kseg_ref, kpos_ref, kspan_ref, cfg, ks))
        s = _dot(q, k, trans_b=True) * cfg.scale
        p = jnp.where(mask, jnp.exp(s - lse[:, None]), 0.0)
        dp = _dot(do, v, trans_b=True)
        ds = p * (dp - delta[:, None])
        return dq + _dot(ds.astype(k.dtype), k), n + 1

    dq, n = jax.lax.fori_loop(0, sched_ref[0], body, (jnp.zeros(q.shape, jnp.float32), jnp.int32(0)))
    dq_ref[...] = (dq * cfg.scale).astype(dq_ref.dtype)
    visits_ref[...] = n


def _dkv_kernel(sched_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qseg_ref, qpos_ref, qspan_ref,
                kseg_ref, kpos_ref, kspan_ref, dk_ref, dv_ref, visits_ref, *, cfg: _Config, bq: int, groups: int):
    k, v = k_ref[...], v_ref[...]  # [bk, D], [bk, Dv]
    kv_ids = _load_ids(kseg_ref, kpos_ref, kspan_ref, cfg)
    count = sched_ref[0]

    def head(g, carry):
        def body(j, carry):
            dk, dv, n = carry
            qi = sched_ref[j + 1]
            qs = pl.ds(pl.multiple_of(qi * bq, bq), bq)
            q, do = q_ref[qs, g, :], do_ref[qs, g, :]
            lse, delta = lse_ref[g, qs], delta_ref[g, qs]
            mask = _mask(cfg, _load_ids(qseg_ref, qpos_ref, qspan_ref, cfg, qs), kv_ids)
            s = _dot(q, k, trans_b=True) * cfg.scale
            p = jnp.where(mask, jnp.exp(s - lse[:, None]), 0.0)  # [bq, bk]
            dv = dv + _dot(p.astype(do.dtype), do, trans_a=True)
            dp = _dot(do, v, trans_b=True)
            ds = p * (dp - delta[:, None])
            dk = dk + _dot(ds.astype(q.dtype), q, trans_a=True)
            return dk, dv, n + 1

        dk, dv = carry
        dk, dv, n = jax.lax.fori_loop(0, count, body, (dk, dv, jnp.int32(0)))
        visits_ref[g] = n
        return dk, dv

    init = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
    dk, dv = jax.lax.fori_loop(0, groups, head, init)
    dk_ref[...] = (dk * cfg.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


# ------------------------------------------------------------------------------------------------ pallas_calls


def _compiler_params(cfg: _Config):
    return plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _id_specs(length: int, block: int, blocked: bool, batch_axis: int, block_axis: int):
    """BlockSpecs for the three `[B, L]` id arrays: one block (`blocked`) or the whole row."""
    if blocked:
        spec = pl.BlockSpec((None, block), lambda *g: (g[batch_axis], g[block_axis]))
    else:
        spec = pl.BlockSpec((None, length), lambda *g: (g[batch_axis], 0))
    return [spec] * 3


def _forward(q, k, v, m: PaddedMask, cfg: _Config):
    """q [B, Lqp, H, D], k/v [B, Lkp, Hk, D*] (padded) → out [B, Lqp, H, Dv], lse [B, H, Lqp], visits [B, H, NQ]."""
    b, lqp, h, d = q.shape
    lkp, hk, dv = k.shape[1], k.shape[2], v.shape[-1]
    groups = h // hk
    bq, bk = cfg.blocks.block_q, cfg.blocks.block_k
    nq = lqp // bq
    sched = _schedule(needed_blocks(m, bq, bk))  # [B, NQ, NK + 1]
    kernel = functools.partial(_fwd_kernel, cfg=cfg, bk=bk)
    in_specs = [
        pl.BlockSpec((None, None, sched.shape[-1]), lambda i, bi, hi: (bi, i, 0)),
        pl.BlockSpec((None, bq, None, d), lambda i, bi, hi: (bi, i, hi, 0)),
        pl.BlockSpec((None, lkp, None, d), lambda i, bi, hi: (bi, 0, hi // groups, 0)),
        pl.BlockSpec((None, lkp, None, dv), lambda i, bi, hi: (bi, 0, hi // groups, 0)),
        *_id_specs(lqp, bq, True, 1, 0),
        *_id_specs(lkp, bk, False, 1, 0),
    ]
    out_specs = [
        pl.BlockSpec((None, bq, None, dv), lambda i, bi, hi: (bi, i, hi, 0)),
        pl.BlockSpec((None, None, bq), lambda i, bi, hi: (bi, hi, i)),
        pl.BlockSpec((None, None, None), lambda i, bi, hi: (bi, hi, i)),
    ]
    out_shape = [out_struct((b, lqp, h, dv), q.dtype, q, k, v), out_struct((b, h, lqp), jnp.float32, q, k, v),
                 out_struct((b, h, nq), jnp.int32, q, k, v)]
    return pl.pallas_call(
        kernel, grid=(nq, b, h), in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
        compiler_params=_compiler_params(cfg), interpret=cfg.interpret, name="merg_attention_fwd",
    )(sched, q, k, v, m.q_segment_ids, m.q_positions, m.q_span_ids, m.kv_segment_ids, m.kv_positions,
      m.kv_span_ids)


def _backward(q, k, v, m: PaddedMask, out, lse, d_out, cfg: _Config):
    """Returns dq, dk, dv (input dtypes) and the visit counts of the dq and dk/dv kernels."""
    b, lqp, h, d = q.shape
    lkp, hk, dv_dim = k.shape[1], k.shape[2], v.shape[-1]
    groups = h // hk
    bs = cfg.blocks
    # delta_i = Σ_d dO_id O_id (FlashAttention-2's D), float32 [B, H, Lqp]
    delta = jnp.einsum("bqhd,bqhd->bhq", d_out.astype(jnp.float32), out.astype(jnp.float32))

    # dq: grid (q block, batch, head) over the scheduled key blocks
    bq, bk = bs.block_q_dq, bs.block_k_dq
    nq = lqp // bq
    sched = _schedule(needed_blocks(m, bq, bk))
    in_specs = [
        pl.BlockSpec((None, None, sched.shape[-1]), lambda i, bi, hi: (bi, i, 0)),
        pl.BlockSpec((None, bq, None, d), lambda i, bi, hi: (bi, i, hi, 0)),
        pl.BlockSpec((None, lkp, None, d), lambda i, bi, hi: (bi, 0, hi // groups, 0)),
        pl.BlockSpec((None, lkp, None, dv_dim), lambda i, bi, hi: (bi, 0, hi // groups, 0)),
        pl.BlockSpec((None, bq, None, dv_dim), lambda i, bi, hi: (bi, i, hi, 0)),
        pl.BlockSpec((None, None, bq), lambda i, bi, hi: (bi, hi, i)),
        pl.BlockSpec((None, None, bq), lambda i, bi, hi: (bi, hi, i)),
        *_id_specs(lqp, bq, True, 1, 0),
        *_id_specs(lkp, bk, False, 1, 0),
    ]
    out_specs = [pl.BlockSpec((None, bq, None, d), lambda i, bi, hi: (bi, i, hi, 0)),
                 pl.BlockSpec((None, None, None), lambda i, bi, hi: (bi, hi, i))]
    dq, dq_visits = pl.pallas_call(
        functools.partial(_dq_kernel, cfg=cfg, bk=bk), grid=(nq, b, h), in_specs=in_specs, out_specs=out_specs,
        out_shape=[out_struct(q.shape, q.dtype, q, k, v), out_struct((b, h, nq), jnp.int32, q, k, v)],
        compiler_params=_compiler_params(cfg), interpret=cfg.interpret, name="merg_attention_dq",
    )(sched, q, k, v, d_out, lse, delta, m.q_segment_ids, m.q_positions, m.q_span_ids, m.kv_segment_ids,
      m.kv_positions, m.kv_span_ids)

    # dk/dv: grid (k block, batch, kv head); loops over the group's query heads and the scheduled query blocks
    bq, bk = bs.block_q_dkv, bs.block_k_dkv
    nk = lkp // bk
    sched = _schedule(jnp.swapaxes(needed_blocks(m, bq, bk), 1, 2))  # [B, NK, NQ + 1]
    qg = q.reshape(b, lqp, hk, groups, d)
    dog = d_out.reshape(b, lqp, hk, groups, dv_dim)
    lse_g = lse.reshape(b, hk, groups, lqp)
    delta_g = delta.reshape(b, hk, groups, lqp)
    in_specs = [
        pl.BlockSpec((None, None, sched.shape[-1]), lambda j, bi, hi: (bi, j, 0)),
        pl.BlockSpec((None, lqp, None, groups, d), lambda j, bi, hi: (bi, 0, hi, 0, 0)),
        pl.BlockSpec((None, bk, None, d), lambda j, bi, hi: (bi, j, hi, 0)),
        pl.BlockSpec((None, bk, None, dv_dim), lambda j, bi, hi: (bi, j, hi, 0)),
        pl.BlockSpec((None, lqp, None, groups, dv_dim), lambda j, bi, hi: (bi, 0, hi, 0, 0)),
        pl.BlockSpec((None, None, groups, lqp), lambda j, bi, hi: (bi, hi, 0, 0)),
        pl.BlockSpec((None, None, groups, lqp), lambda j, bi, hi: (bi, hi, 0, 0)),
        *_id_specs(lqp, bq, False, 1, 0),
        *_id_specs(lkp, bk, True, 1, 0),
    ]
    out_specs = [pl.BlockSpec((None, bk, None, d), lambda j, bi, hi: (bi, j, hi, 0)),
                 pl.BlockSpec((None, bk, None, dv_dim), lambda j, bi, hi: (bi, j, hi, 0)),
                 pl.BlockSpec((None, None, groups, None), lambda j, bi, hi: (bi, hi, 0, j))]
    dk, dv, dkv_visits = pl.pallas_call(
        functools.partial(_dkv_kernel, cfg=cfg, bq=bq, groups=groups), grid=(nk, b, hk), in_specs=in_specs,
        out_specs=out_specs,
        out_shape=[out_struct(k.shape, k.dtype, q, k, v), out_struct(v.shape, v.dtype, q, k, v),
                   out_struct((b, hk, groups, nk), jnp.int32, q, k, v)],
        compiler_params=_compiler_params(cfg), interpret=cfg.interpret, name="merg_attention_dkv",
    )(sched, qg, k, v, dog, lse_g, delta_g, m.q_segment_ids, m.q_positions, m.q_span_ids, m.kv_segment_ids,
      m.kv_positions, m.kv_span_ids)
    return (dq, dk, dv), (dq_visits, dkv_visits.reshape(b, h, nk))


# ------------------------------------------------------------------------------------------------- custom VJP


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attend(q, k, v, ids, cfg: _Config):
    """→ (out, forward visit counts); the counts are an integer output (their cotangent is ignored)."""
    return _attend_fwd(q, k, v, ids, cfg)[0]


def _attend_fwd(q, k, v, ids, cfg: _Config):
    m = PaddedMask(*ids, causal=cfg.causal)
    out, lse, visits = _forward(q, k, v, m, cfg)
    return (out, visits), (q, k, v, ids, out, lse)


def _attend_bwd(cfg: _Config, res, cotangents):
    q, k, v, ids, out, lse = res
    d_out, _ = cotangents
    (dq, dk, dv), _ = _backward(q, k, v, PaddedMask(*ids, causal=cfg.causal), out, lse, d_out, cfg)
    return dq, dk, dv, jax.tree.map(lambda _: None, ids)


_attend.defvjp(_attend_fwd, _attend_bwd)


# --------------------------------------------------------------------------------------------------- public API


def _prepare(q, k, v, info: MaskInfo, scale: float, block_sizes, interpret: bool):
    check_qkv("pallas_gpu_attention", q, k, v, same_dtype=True)
    b, lq, h, d = q.shape
    lk = k.shape[1]
    blocks = _resolve_blocks(block_sizes, lq, lk)
    lqp = _round_up(lq, max(blocks.block_q, blocks.block_q_dq, blocks.block_q_dkv))
    lkp = _round_up(lk, max(blocks.block_k, blocks.block_k_dq, blocks.block_k_dkv))
    dp, dvp = max(_MIN_TILE, _next_pow2(d)), max(_MIN_TILE, _next_pow2(v.shape[-1]))
    m = pad_to_blocks(info, lqp, lkp)
    qp = jnp.pad(q, ((0, 0), (0, lqp - lq), (0, 0), (0, dp - d)))
    kp = jnp.pad(k, ((0, 0), (0, lkp - lk), (0, 0), (0, dp - d)))
    vp = jnp.pad(v, ((0, 0), (0, lkp - lk), (0, 0), (0, dvp - v.shape[-1])))
    cfg = _Config(scale=float(scale), causal=info.causal, use_spans=info.causal and info.q_span_ids is not None,
                  blocks=blocks, interpret=bool(interpret), num_warps=4 if max(dp, dvp) <= 64 else 8, num_stages=2)
    return qp, kp, vp, m, cfg


def pallas_gpu_attention(q: Float[Array, "B Lq H D"], k: Float[Array, "B Lk Hk D"], v: Float[Array, "B Lk Hk Dv"],
                         info: MaskInfo, scale: float, block_sizes=None, *, interpret: bool = False,
                         return_visits: bool = False):
    """Masked multi-head attention with the Pallas Triton kernels; returns `[B, Lq, H, Dv]` in q's dtype.

    block_sizes: None (H100 defaults), an int, `(block_q, block_k)`, or a `BlockSizes`; powers of two, raised
    to 16 and capped at the (power-of-two-rounded) sequence lengths. Differentiable (custom VJP with Pallas
    backward kernels). With `return_visits=True` returns `(out, Visits(forward=...))`: the key blocks the forward
    kernel computed per (batch, head, query block); see `pallas_gpu_attention_vjp` for the backward kernels'.
    """
    lq = q.shape[1]
    qp, kp, vp, m, cfg = _prepare(q, k, v, info, scale, block_sizes, interpret)
    out, visits = _attend(qp, kp, vp, tuple(m[:6]), cfg)
    out = out[:, :lq, :, :v.shape[-1]]
    return (out, Visits(forward=visits)) if return_visits else out


def pallas_gpu_attention_vjp(q, k, v, info: MaskInfo, scale: float, d_out, block_sizes=None, *,
                             interpret: bool = False):
    """Runs the forward kernel and then the backward kernels on cotangent `d_out` — the same code the custom VJP
    runs — and returns `(out, (dq, dk, dv), Visits(forward, dq, dkv))` with every kernel's own block counts."""
    lq, lk, dv_dim = q.shape[1], k.shape[1], v.shape[-1]
    qp, kp, vp, m, cfg = _prepare(q, k, v, info, scale, block_sizes, interpret)
    pm = PaddedMask(*m[:6], causal=cfg.causal)
    out, lse, fwd_visits = _forward(qp, kp, vp, pm, cfg)
    do = jnp.zeros(out.shape, out.dtype).at[:, :lq, :, :dv_dim].set(d_out.astype(out.dtype))
    (dq, dk, dv), (dq_visits, dkv_visits) = _backward(qp, kp, vp, pm, out, lse, do, cfg)
    grads = (dq[:, :lq, :, :q.shape[-1]], dk[:, :lk, :, :k.shape[-1]], dv[:, :lk, :, :dv_dim])
    return out[:, :lq, :, :dv_dim], grads, Visits(forward=fwd_visits, dq=dq_visits, dkv=dkv_visits)
