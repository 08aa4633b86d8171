"""Flash attention for TPU in Pallas (Mosaic): forward and backward kernels under one `jax.custom_vjp`.

Same maths and mask as `merg_jax.kernels.reference` / `merg_jax.kernels.mask` (segment ids, causal by position,
non-zero span ids bidirectional), grouped-query heads, Lq ≠ Lk, lengths padded to whole blocks with
`pad_to_blocks` (padding gets segment ids nobody shares).

Layout inside the kernels is head-major, `[B, H, L, D]` (the wrapper transposes), so a block is a lane-dense
`[block, D]` tile. The grid is `(B, H, NQ, NK)` for the forward and the dq sweep, `(B, Hk, NK, G·NQ)` for the
dk/dv sweep (the G query heads that share a key/value head accumulate into one dk/dv block); the last axes,
which accumulate, are "arbitrary", the others "parallel".

Block skipping: `needed_blocks` (computed outside, from per-block id ranges) is turned into one int32 *fetch
map* per sweep and handed to the kernels by scalar prefetch (SMEM). Entry `c` at grid step (b, outer, inner):
`c ≥ 0` — the block pair is needed and block `c` (= inner) is fetched and computed; `c < 0` — skipped, no
compute, and the block fetched is `-c - 1`: the last needed block before this step (so the pipeline sees an
unchanged block index and issues no DMA), or, before the first needed block, that first needed block (so it is
prefetched). Both the compute and the DMA of unneeded blocks are skipped, as in splash attention.

Online softmax (FlashAttention-2): running max `m`, sum `l` (lane-replicated `[bq, 128]`) and the f32
accumulator live in VMEM scratch; the forward also writes the log-sum-exp, which the backward uses to recompute
P block by block: delta = rowsum(dO∘O), dS = P∘(dP − delta), dq = dS·K, dk = dSᵀ·Q, dv = Pᵀ·dO. Scores are
masked with an explicit `where`, so fully masked rows give exactly zero output and zero gradients.

With `return_visits`, the kernels also write, inside the compute branch, how many blocks they actually
computed: forward and dq sweep per (batch, query head, query block), dk/dv sweep per (batch, query head,
key block).

`interpret=True` runs the kernels on any backend (CPU included) with Pallas' interpreter; passing a
`pltpu.InterpretParams()` instead uses the TPU interpret mode, which also simulates VMEM/SMEM and the DMAs,
fills uninitialised scratch with NaN (a missed initialisation shows) and can shuffle the "parallel" grid axes.
Interpret mode accepts blocks that are multiples of 8; the compiled (Mosaic) path needs multiples of 128.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jaxtyping import Array, Bool, Float, Int

from merg_jax.kernels.mask import MaskInfo, needed_blocks, pad_to_blocks
from merg_jax.kernels.shapes import check_qkv
from merg_jax.kernels.vma import out_struct

NUM_LANES = 128
NUM_SUBLANES = 8
DEFAULT_BLOCK_Q = 512
DEFAULT_BLOCK_K = 512
# Score of a masked pair before the explicit zeroing; finite, so no inf - inf anywhere.
MASK_VALUE = -1e30
NT_DIMS = (((1,), (1,)), ((), ()))  # a @ b.T
NN_DIMS = (((1,), (0,)), ((), ()))  # a @ b


@dataclasses.dataclass(frozen=True)
class _Cfg:
    """Static configuration of one attention call."""

    scale: float
    block_q: int
    block_k: int
    causal: bool
    spans: bool  # span ids take part (causal with span ids given)
    interpret: Any  # False, True or a pltpu.InterpretParams


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def _interpret_params(interpret):
    """Our `interpret` flag as pallas_call's: False (Mosaic), True (Pallas' generic interpreter: the kernel
    body, scalar prefetch and VMEM scratch discharged to XLA ops — fast on CPU), or a `pltpu.InterpretParams`
    (the TPU simulator: VMEM/SMEM, DMAs and semaphores simulated, NaN-filled uninitialised scratch, optional
    random order of the "parallel" grid axes — faithful but slower)."""
    if interpret is None:
        return False
    return interpret


def _block_sizes(block_sizes, lq: int, lk: int, align: int) -> tuple[int, int]:
    if block_sizes is None:
        bq, bk = DEFAULT_BLOCK_Q, DEFAULT_BLOCK_K
    elif isinstance(block_sizes, int):
        bq = bk = block_sizes
    else:
        bq, bk = (int(b) for b in block_sizes)
    for name, b in (("block_q", bq), ("block_k", bk)):
        if b <= 0 or b % align:
            raise ValueError(f"pallas_tpu_attention: {name}={b} must be a positive multiple of {align}"
                             f"{' (TPU lane width)' if align == NUM_LANES else ' (interpret mode)'}")
    return min(bq, _round_up(lq, align)), min(bk, _round_up(lk, align))


def fetch_map(need: Bool[Array, "B N_outer N_inner"]) -> Int[Array, "B N_outer N_inner"]:
    """The encoded fetch map of a sweep over the inner axis (see the module docstring).

    `c = j` where needed; elsewhere `c = -f - 1` with `f` the last needed block before j, or the first needed
    block after j if there is none before (0 when the whole row is unneeded).
    """
    n = need.shape[-1]
    idx = jnp.arange(n, dtype=jnp.int32)
    prev = lax.cummax(jnp.where(need, idx, -1), axis=need.ndim - 1)
    nxt = lax.cummin(jnp.where(need, idx, n), axis=need.ndim - 1, reverse=True)
    fetch = jnp.where(prev >= 0, prev, jnp.where(nxt < n, nxt, 0))
    return jnp.where(need, idx, -fetch - 1).astype(jnp.int32)


def _fetched(code):
    """Decode a fetch-map entry into the block index to fetch: `c` if `c ≥ 0`, else `-c - 1`."""
    return jnp.maximum(code, -code - 1)


def _lanes(x, n: int):
    """A lane-replicated `[rows, 128]` array as `[rows, n]` (tile when lane-aligned, else slice/broadcast)."""
    width = x.shape[-1]
    if n == width:
        return x
    if n % width == 0:
        return jnp.tile(x, (1, n // width))
    if n < width:
        return x[:, :n]
    return jnp.broadcast_to(x[:, :1], (x.shape[0], n))


def _mask(q_field, k_field, cfg: _Cfg):
    """The element rule on broadcastable per-token fields (0 segment, 1 position, 2 span)."""
    mask = q_field(0) == k_field(0)
    if cfg.causal:
        visible = k_field(1) <= q_field(1)
        if cfg.spans:
            q_span = q_field(2)
            visible = visible | ((q_span == k_field(2)) & (q_span != 0))
        mask = mask & visible
    return mask


# ----------------------------------------------------------------------------------------------------------------
# forward


def _fwd_kernel(kv_map_ref, q_ref, k_ref, v_ref, q_cols_ref, kv_rows_ref, o_ref, lse_ref, *rest, cfg: _Cfg,
                num_k_blocks: int, count: bool):
    if count:
        visits_ref, m_ref, l_ref, acc_ref = rest
    else:
        visits_ref, (m_ref, l_ref, acc_ref) = None, rest
    b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    bk = k_ref.shape[0]
    dv = acc_ref.shape[-1]

    @pl.when(j == 0)
    def _init():
        m_ref[...] = jnp.full(m_ref.shape, MASK_VALUE, jnp.float32)
        l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)
        if count:
            visits_ref[...] = jnp.zeros(visits_ref.shape, jnp.int32)

    @pl.when(kv_map_ref[b, i, j] >= 0)
    def _compute():
        s = lax.dot_general(q_ref[...], k_ref[...], NT_DIMS, preferred_element_type=jnp.float32) * cfg.scale
        mask = _mask(lambda f: _lanes(q_cols_ref[f], bk), lambda f: kv_rows_ref[f, :1, :], cfg)  # [bq, bk]
        s = jnp.where(mask, s, MASK_VALUE)
        m_prev = m_ref[...]
        m_next = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))  # [bq, 128]
        p = jnp.where(mask, jnp.exp(s - _lanes(m_next, bk)), 0.0)
        alpha = jnp.exp(m_prev - m_next)
        l_ref[...] = alpha * l_ref[...] + jnp.sum(p, axis=1, keepdims=True)
        m_ref[...] = m_next
        v = v_ref[...]
        pv = lax.dot_general(p.astype(v.dtype), v, NN_DIMS, preferred_element_type=jnp.float32)
        acc_ref[...] = _lanes(alpha, dv) * acc_ref[...] + pv
        if count:
            visits_ref[...] += 1

    @pl.when(j == num_k_blocks - 1)
    def _finish():
        l = l_ref[...]
        empty = l == 0.0
        safe_l = jnp.where(empty, 1.0, l)
        o_ref[...] = (acc_ref[...] * _lanes(1.0 / safe_l, dv)).astype(o_ref.dtype)
        lse_ref[...] = jnp.where(empty, 0.0, m_ref[...] + jnp.log(safe_l))


def _forward(q, k, v, q_cols, kv_rows, kv_map, cfg: _Cfg, count: bool):
    """q [B, H, Lqp, D], k/v [B, Hk, Lkp, D|Dv]. Returns out [B, H, Lqp, Dv], lse [B, H, Lqp] f32, visits."""
    b, h, lqp, d = q.shape
    hk, lkp, dv = k.shape[1], k.shape[2], v.shape[-1]
    g = h // hk
    bq, bk = cfg.block_q, cfg.block_k
    nq, nk = lqp // bq, lkp // bk
    nf = q_cols.shape[1]

    def q_map(bi, hi, i, j, kv_map_ref):
        return bi, hi, i, 0

    def kv_map_fn(bi, hi, i, j, kv_map_ref):
        return bi, lax.div(hi, g), _fetched(kv_map_ref[bi, i, j]), 0

    def q_cols_map(bi, hi, i, j, kv_map_ref):
        return bi, 0, i, 0

    def kv_rows_map(bi, hi, i, j, kv_map_ref):
        return bi, 0, 0, _fetched(kv_map_ref[bi, i, j])

    def visits_map(bi, hi, i, j, kv_map_ref):
        return bi, hi, i, 0, 0

    in_specs = [
        pl.BlockSpec((None, None, bq, d), q_map),
        pl.BlockSpec((None, None, bk, d), kv_map_fn),
        pl.BlockSpec((None, None, bk, dv), kv_map_fn),
        pl.BlockSpec((None, nf, bq, NUM_LANES), q_cols_map),
        pl.BlockSpec((None, nf, NUM_SUBLANES, bk), kv_rows_map),
    ]
    out_shape = [out_struct((b, h, lqp, dv), q.dtype, q, k, v),
                 out_struct((b, h, lqp, NUM_LANES), jnp.float32, q, k, v)]
    out_specs = [pl.BlockSpec((None, None, bq, dv), q_map), pl.BlockSpec((None, None, bq, NUM_LANES), q_map)]
    if count:
        out_shape.append(out_struct((b, h, nq, NUM_SUBLANES, NUM_LANES), jnp.int32, q, k, v))
        out_specs.append(pl.BlockSpec((None, None, None, NUM_SUBLANES, NUM_LANES), visits_map))
    scratch = [pltpu.VMEM((bq, NUM_LANES), jnp.float32), pltpu.VMEM((bq, NUM_LANES), jnp.float32),
               pltpu.VMEM((bq, dv), jnp.float32)]
    outs = pl.pallas_call(
        functools.partial(_fwd_kernel, cfg=cfg, num_k_blocks=nk, count=count),
        grid_spec=pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=1, grid=(b, h, nq, nk), in_specs=in_specs,
                                               out_specs=out_specs, scratch_shapes=scratch),
        out_shape=out_shape,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
        interpret=cfg.interpret,
        name="merg_flash_fwd",
    )(kv_map, q, k, v, q_cols, kv_rows)
    out, lse = outs[0], outs[1][..., 0]
    visits = outs[2][..., 0, 0] if count else None
    return out, lse, visits


# ----------------------------------------------------------------------------------------------------------------
# backward: dq sweep over key blocks, dk/dv sweep over query blocks


def _dq_kernel(kv_map_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, q_cols_ref, kv_rows_ref, dq_ref, *rest,
               cfg: _Cfg, num_k_blocks: int, count: bool):
    if count:
        visits_ref, acc_ref = rest
    else:
        visits_ref, (acc_ref,) = None, rest
    b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    bk = k_ref.shape[0]

    @pl.when(j == 0)
    def _init():
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)
        if count:
            visits_ref[...] = jnp.zeros(visits_ref.shape, jnp.int32)

    @pl.when(kv_map_ref[b, i, j] >= 0)
    def _compute():
        k, v = k_ref[...], v_ref[...]
        s = lax.dot_general(q_ref[...], k, NT_DIMS, preferred_element_type=jnp.float32) * cfg.scale
        mask = _mask(lambda f: _lanes(q_cols_ref[f], bk), lambda f: kv_rows_ref[f, :1, :], cfg)  # [bq, bk]
        lse = jnp.expand_dims(lse_ref[0], -1)  # [bq, 1]
        delta = jnp.expand_dims(delta_ref[0], -1)
        p = jnp.where(mask, jnp.exp(s - lse), 0.0)
        dp = lax.dot_general(do_ref[...], v, NT_DIMS, preferred_element_type=jnp.float32)
        ds = p * (dp - delta)
        acc_ref[...] += lax.dot_general(ds.astype(k.dtype), k, NN_DIMS, preferred_element_type=jnp.float32)
        if count:
            visits_ref[...] += 1

    @pl.when(j == num_k_blocks - 1)
    def _finish():
        dq_ref[...] = (acc_ref[...] * cfg.scale).astype(dq_ref.dtype)


def _dkv_kernel(q_map_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, q_rows_ref, kv_cols_ref, dk_ref, dv_ref,
                *rest, cfg: _Cfg, num_q_blocks: int, group: int, count: bool):
    if count:
        visits_ref, dk_acc_ref, dv_acc_ref = rest
    else:
        visits_ref, (dk_acc_ref, dv_acc_ref) = None, rest
    b, j, t = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    gi, i = lax.div(t, num_q_blocks), lax.rem(t, num_q_blocks)  # query head in the group, query block
    bq = q_ref.shape[0]

    @pl.when((gi == 0) & (i == 0))
    def _init():
        dk_acc_ref[...] = jnp.zeros(dk_acc_ref.shape, jnp.float32)
        dv_acc_ref[...] = jnp.zeros(dv_acc_ref.shape, jnp.float32)

    if count:
        @pl.when(i == 0)
        def _init_visits():
            visits_ref[...] = jnp.zeros(visits_ref.shape, jnp.int32)

    @pl.when(q_map_ref[b, j, i] >= 0)
    def _compute():
        q, do = q_ref[...], do_ref[...]
        # transposed scores: keys on sublanes, queries on lanes
        st = lax.dot_general(k_ref[...], q, NT_DIMS, preferred_element_type=jnp.float32) * cfg.scale  # [bk, bq]
        mask = _mask(lambda f: q_rows_ref[f, :1, :], lambda f: _lanes(kv_cols_ref[f], bq), cfg)
        pt = jnp.where(mask, jnp.exp(st - lse_ref[...]), 0.0)  # lse row [1, bq]
        dv_acc_ref[...] += lax.dot_general(pt.astype(do.dtype), do, NN_DIMS, preferred_element_type=jnp.float32)
        dpt = lax.dot_general(v_ref[...], do, NT_DIMS, preferred_element_type=jnp.float32)  # [bk, bq]
        dst = pt * (dpt - delta_ref[...])
        dk_acc_ref[...] += lax.dot_general(dst.astype(q.dtype), q, NN_DIMS, preferred_element_type=jnp.float32)
        if count:
            visits_ref[...] += 1

    @pl.when((gi == group - 1) & (i == num_q_blocks - 1))
    def _finish():
        dk_ref[...] = (dk_acc_ref[...] * cfg.scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_acc_ref[...].astype(dv_ref.dtype)


def _backward(q, k, v, out, lse, d_out, q_cols, kv_rows, q_rows, kv_cols, kv_map, q_map, cfg: _Cfg, count: bool):
    b, h, lqp, d = q.shape
    hk, lkp, dv = k.shape[1], k.shape[2], v.shape[-1]
    g = h // hk
    bq, bk = cfg.block_q, cfg.block_k
    nq, nk = lqp // bq, lkp // bk
    nf = q_cols.shape[1]
    d_out = d_out.astype(q.dtype)
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)[:, :, None, :]  # [B, H, 1, Lqp]
    lse = lse[:, :, None, :]

    # dq: grid (B, H, NQ, NK)
    def q_idx(bi, hi, i, j, m):
        return bi, hi, i, 0

    def kv_idx(bi, hi, i, j, m):
        return bi, lax.div(hi, g), _fetched(m[bi, i, j]), 0

    def row_idx(bi, hi, i, j, m):
        return bi, hi, 0, i

    def visits_idx(bi, hi, i, j, m):
        return bi, hi, i, 0, 0

    dq_in_specs = [
        pl.BlockSpec((None, None, bq, d), q_idx),
        pl.BlockSpec((None, None, bk, d), kv_idx),
        pl.BlockSpec((None, None, bk, dv), kv_idx),
        pl.BlockSpec((None, None, bq, dv), q_idx),
        pl.BlockSpec((None, None, 1, bq), row_idx),
        pl.BlockSpec((None, None, 1, bq), row_idx),
        pl.BlockSpec((None, nf, bq, NUM_LANES), lambda bi, hi, i, j, m: (bi, 0, i, 0)),
        pl.BlockSpec((None, nf, NUM_SUBLANES, bk), lambda bi, hi, i, j, m: (bi, 0, 0, _fetched(m[bi, i, j]))),
    ]
    dq_shape = [out_struct(q.shape, q.dtype, q, k, v)]
    dq_specs = [pl.BlockSpec((None, None, bq, d), q_idx)]
    if count:
        dq_shape.append(out_struct((b, h, nq, NUM_SUBLANES, NUM_LANES), jnp.int32, q, k, v))
        dq_specs.append(pl.BlockSpec((None, None, None, NUM_SUBLANES, NUM_LANES), visits_idx))
    dq_outs = pl.pallas_call(
        functools.partial(_dq_kernel, cfg=cfg, num_k_blocks=nk, count=count),
        grid_spec=pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=1, grid=(b, h, nq, nk), in_specs=dq_in_specs,
                                               out_specs=dq_specs,
                                               scratch_shapes=[pltpu.VMEM((bq, d), jnp.float32)]),
        out_shape=dq_shape,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
        interpret=cfg.interpret,
        name="merg_flash_bwd_dq",
    )(kv_map, q, k, v, d_out, lse, delta, q_cols, kv_rows)

    # dk/dv: grid (B, Hk, NK, G·NQ); step t is query head kh·G + t // NQ, query block t % NQ
    def qh_idx(bi, kh, j, t, m):
        return bi, kh * g + lax.div(t, nq), _fetched(m[bi, j, lax.rem(t, nq)]), 0

    def k_idx(bi, kh, j, t, m):
        return bi, kh, j, 0

    def qrow_idx(bi, kh, j, t, m):
        return bi, kh * g + lax.div(t, nq), 0, _fetched(m[bi, j, lax.rem(t, nq)])

    def q_rows_idx(bi, kh, j, t, m):
        return bi, 0, 0, _fetched(m[bi, j, lax.rem(t, nq)])

    def kv_cols_idx(bi, kh, j, t, m):
        return bi, 0, j, 0

    def dkv_visits_idx(bi, kh, j, t, m):
        return bi, kh * g + lax.div(t, nq), j, 0, 0

    dkv_in_specs = [
        pl.BlockSpec((None, None, bq, d), qh_idx),
        pl.BlockSpec((None, None, bk, d), k_idx),
        pl.BlockSpec((None, None, bk, dv), k_idx),
        pl.BlockSpec((None, None, bq, dv), qh_idx),
        pl.BlockSpec((None, None, 1, bq), qrow_idx),
        pl.BlockSpec((None, None, 1, bq), qrow_idx),
        pl.BlockSpec((None, nf, NUM_SUBLANES, bq), q_rows_idx),
        pl.BlockSpec((None, nf, bk, NUM_LANES), kv_cols_idx),
    ]
    dkv_shape = [out_struct(k.shape, k.dtype, q, k, v), out_struct(v.shape, v.dtype, q, k, v)]
    dkv_specs = [pl.BlockSpec((None, None, bk, d), k_idx), pl.BlockSpec((None, None, bk, dv), k_idx)]
    if count:
        dkv_shape.append(out_struct((b, h, nk, NUM_SUBLANES, NUM_LANES), jnp.int32, q, k, v))
        dkv_specs.append(pl.BlockSpec((None, None, None, NUM_SUBLANES, NUM_LANES), dkv_visits_idx))
    dkv_outs = pl.pallas_call(
        functools.partial(_dkv_kernel, cfg=cfg, num_q_blocks=nq, group=g, count=count),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1, grid=(b, hk, nk, g * nq), in_specs=dkv_in_specs, out_specs=dkv_specs,
            scratch_shapes=[pltpu.VMEM((bk, d), jnp.float32), pltpu.VMEM((bk, dv), jnp.float32)]),
        out_shape=dkv_shape,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
        interpret=cfg.interpret,
        name="merg_flash_bwd_dkv",
    )(q_map, q, k, v, d_out, lse, delta, q_rows, kv_cols)

    visits = None
    if count:
        visits = {"dq": dq_outs[1][..., 0, 0], "dkv": dkv_outs[2][..., 0, 0]}
    return dq_outs[0], dkv_outs[0], dkv_outs[1], visits


# ----------------------------------------------------------------------------------------------------------------
# custom VJP on the head-major, padded layout


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9))
def _attend(q, k, v, q_cols, kv_rows, q_rows, kv_cols, maps, cfg, count):
    out, _, visits = _forward(q, k, v, q_cols, kv_rows, maps[0], cfg, count)
    return out, visits


def _attend_fwd(q, k, v, q_cols, kv_rows, q_rows, kv_cols, maps, cfg, count):
    out, lse, visits = _forward(q, k, v, q_cols, kv_rows, maps[0], cfg, count)
    return (out, visits), (q, k, v, out, lse, q_cols, kv_rows, q_rows, kv_cols, maps)


def _attend_bwd(cfg, count, res, cotangents):
    q, k, v, out, lse, q_cols, kv_rows, q_rows, kv_cols, maps = res
    d_out = cotangents[0]
    dq, dk, dv, _ = _backward(q, k, v, out, lse, d_out, q_cols, kv_rows, q_rows, kv_cols, maps[0], maps[1], cfg,
                              count=False)
    return dq, dk, dv, None, None, None, None, None


_attend.defvjp(_attend_fwd, _attend_bwd)


# ----------------------------------------------------------------------------------------------------------------
# public API


def _prepare(q, k, v, info: MaskInfo, scale: float, block_sizes, interpret):
    check_qkv("pallas_tpu_attention", q, k, v)
    b, lq, h, d = q.shape
    lk = k.shape[1]
    interpret = _interpret_params(interpret)
    align = NUM_LANES if interpret is False else NUM_SUBLANES
    bq, bk = _block_sizes(block_sizes, lq, lk, align)
    lqp, lkp = _round_up(lq, bq), _round_up(lk, bk)
    spans = info.causal and (info.q_span_ids is not None or info.kv_span_ids is not None)
    cfg = _Cfg(scale=float(scale), block_q=bq, block_k=bk, causal=bool(info.causal), spans=spans,
               interpret=interpret)

    m = pad_to_blocks(info, lqp, lkp)
    need = needed_blocks(m, bq, bk)  # [B, NQ, NK]
    maps = (fetch_map(need), fetch_map(jnp.swapaxes(need, 1, 2)))
    q_fields = [m.q_segment_ids]
    kv_fields = [m.kv_segment_ids]
    if cfg.causal:
        q_fields.append(m.q_positions)
        kv_fields.append(m.kv_positions)
        if spans:
            q_fields.append(m.q_span_ids)
            kv_fields.append(m.kv_span_ids)
    qf = jnp.stack(q_fields, axis=1).astype(jnp.int32)  # [B, F, Lqp]
    kf = jnp.stack(kv_fields, axis=1).astype(jnp.int32)
    nf = qf.shape[1]
    q_cols = jnp.broadcast_to(qf[..., None], (b, nf, lqp, NUM_LANES))  # tokens on sublanes
    kv_rows = jnp.broadcast_to(kf[:, :, None, :], (b, nf, NUM_SUBLANES, lkp))  # tokens on lanes
    q_rows = jnp.broadcast_to(qf[:, :, None, :], (b, nf, NUM_SUBLANES, lqp))
    kv_cols = jnp.broadcast_to(kf[..., None], (b, nf, lkp, NUM_LANES))

    def head_major(x, length):
        x = jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0)))
        return jnp.swapaxes(x, 1, 2)

    qt, kt, vt = head_major(q, lqp), head_major(k, lkp), head_major(v, lkp)
    return qt, kt, vt, (q_cols, kv_rows, q_rows, kv_cols), maps, cfg


def pallas_tpu_attention(
    q: Float[Array, "B Lq H D"],
    k: Float[Array, "B Lk Hk D"],
    v: Float[Array, "B Lk Hk Dv"],
    info: MaskInfo,
    scale: float,
    block_sizes=None,
    *,
    interpret=False,
    return_visits: bool = False,
):
    """Masked multi-head attention with the Pallas TPU flash kernels; differentiable (custom VJP).

    block_sizes: None (512, 512), an int, or (block_q, block_k); multiples of 128 (of 8 in interpret mode),
    capped at the aligned lengths. interpret: False (compile with Mosaic), True (Pallas interpreter, any
    backend) or a `pltpu.InterpretParams` (TPU interpret mode). Returns `[B, Lq, H, Dv]` in q's dtype; with
    `return_visits`, `(out, {"fwd": int32 [B, H, NQ]})`, the key blocks the forward kernel computed per query
    block (the backward's counts: `pallas_tpu_attention_vjp`).
    """
    lq = q.shape[1]
    qt, kt, vt, meta, maps, cfg = _prepare(q, k, v, info, scale, block_sizes, interpret)
    out, visits = _attend(qt, kt, vt, *meta, maps, cfg, bool(return_visits))
    out = jnp.swapaxes(out, 1, 2)[:, :lq]
    if return_visits:
        return out, {"fwd": visits}
    return out


def pallas_tpu_attention_vjp(q, k, v, info: MaskInfo, scale: float, d_out, block_sizes=None, *, interpret=False,
                             return_visits: bool = False):
    """Forward and backward kernels run directly: `(out, (dq, dk, dv))`, plus, with `return_visits`, a dict of
    the blocks each kernel computed — "fwd" and "dq": int32 [B, H, NQ] (key blocks per query block), "dkv":
    int32 [B, H, NK] (query blocks per key block, per query head). The gradients equal `jax.vjp` of
    `pallas_tpu_attention` (same kernels); this entry point exists to expose the backward's visit counts."""
    lq = q.shape[1]
    qt, kt, vt, meta, maps, cfg = _prepare(q, k, v, info, scale, block_sizes, interpret)
    q_cols, kv_rows, q_rows, kv_cols = meta
    count = bool(return_visits)
    out, lse, fwd_visits = _forward(qt, kt, vt, q_cols, kv_rows, maps[0], cfg, count)
    lqp = qt.shape[2]
    d_out_t = jnp.swapaxes(jnp.pad(d_out, ((0, 0), (0, lqp - lq), (0, 0), (0, 0))), 1, 2)
    dq, dk, dv, bwd_visits = _backward(qt, kt, vt, out, lse, d_out_t, q_cols, kv_rows, q_rows, kv_cols, maps[0],
                                       maps[1], cfg, count)
    lk = k.shape[1]
    grads = (jnp.swapaxes(dq, 1, 2)[:, :lq], jnp.swapaxes(dk, 1, 2)[:, :lk], jnp.swapaxes(dv, 1, 2)[:, :lk])
    out = jnp.swapaxes(out, 1, 2)[:, :lq]
    if return_visits:
        return out, grads, {"fwd": fwd_visits, **bwd_visits}
    return out, grads
