"""The attention mask semantics, defined once (../shared/DESIGN.md §4), at element and at block level.

A query sees a key only if their segment ids are equal (packing; 0 is padding and only ever sees padding).
If `causal`, a query sees only keys at positions ≤ its own, **except** that keys in the same non-zero span id
(the tokens of one image, clip or audio) are all visible to each other. Positions default to the index in the
sequence; a KV cache passes the cache slots instead.

The blockwise and Pallas kernels work on padded sequences: `pad_to_blocks` gives padded query and key tokens
segment ids no real token has (so they see nothing and nobody sees them), and `needed_blocks` says which
(query block, key block) pairs hold any visible pair at all — the kernels skip the others.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Int

# Segment ids that padding added by the kernels gets; real ids are ≥ 0.
Q_PAD_SEGMENT = -2
KV_PAD_SEGMENT = -1


class MaskInfo(NamedTuple):
    """Per-token mask inputs, each `[B, L]` int32 (or None when that rule is off)."""

    q_segment_ids: Int[Array, "B Lq"] | None
    kv_segment_ids: Int[Array, "B Lk"] | None
    q_span_ids: Int[Array, "B Lq"] | None
    kv_span_ids: Int[Array, "B Lk"] | None
    q_positions: Int[Array, "B Lq"]
    kv_positions: Int[Array, "B Lk"]
    causal: bool
    # Static: positions are each token's index, no span ids, Lq = Lk — so a causal query sees no later key.
    in_order: bool = False


def _pair(name: str, q, kv, batch: int, lq: int, lk: int):
    if q is None and kv is None:
        return None, None
    if kv is None:
        if lq != lk:
            raise ValueError(f"attention: q_{name} given without kv_{name} for cross-attention (Lq={lq}, Lk={lk})")
        kv = q
    if q is None:
        if lq != lk:
            raise ValueError(f"attention: kv_{name} given without q_{name} for cross-attention (Lq={lq}, Lk={lk})")
        q = kv
    return _batched(f"q_{name}", q, batch, lq), _batched(f"kv_{name}", kv, batch, lk)


def _batched(name: str, x, batch: int, length: int):
    x = jnp.asarray(x, jnp.int32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[-1] != length or x.shape[0] not in (1, batch):
        raise ValueError(f"attention: {name} has shape {x.shape}, expected [{batch}, {length}] or [{length}]")
    return jnp.broadcast_to(x, (batch, length))


def make_mask_info(batch, lq, lk, *, causal, q_segment_ids=None, kv_segment_ids=None, q_span_ids=None,
                   kv_span_ids=None, q_positions=None, kv_positions=None) -> MaskInfo:
    qs, ks = _pair("segment_ids", q_segment_ids, kv_segment_ids, batch, lq, lk)
    qsp, ksp = _pair("span_ids", q_span_ids, kv_span_ids, batch, lq, lk)
    qp = _batched("q_positions", jnp.arange(lq) if q_positions is None else q_positions, batch, lq)
    kp = _batched("kv_positions", jnp.arange(lk) if kv_positions is None else kv_positions, batch, lk)
    in_order = (q_positions is None and kv_positions is None and q_span_ids is None and kv_span_ids is None
                and lq == lk)
    return MaskInfo(qs, ks, qsp, ksp, qp, kp, bool(causal), in_order)


def element_mask(causal: bool, q_seg, kv_seg, q_pos, kv_pos, q_span=None, kv_span=None) -> Bool[Array, "... Lq Lk"]:
    """The rule itself on `[..., Lq]` query and `[..., Lk]` key vectors (segments may be None)."""
    allowed = jnp.ones(q_pos.shape + kv_pos.shape[-1:], bool)
    if q_seg is not None:
        allowed &= q_seg[..., :, None] == kv_seg[..., None, :]
    if causal:
        visible = kv_pos[..., None, :] <= q_pos[..., :, None]
        if q_span is not None:
            visible |= (q_span[..., :, None] == kv_span[..., None, :]) & (q_span[..., :, None] != 0)
        allowed &= visible
    return allowed


def dense_mask(info: MaskInfo, q_slice: slice = slice(None), kv_slice: slice = slice(None)) -> Bool[Array, "B Lq Lk"]:
    """The boolean mask for a block of queries × keys (whole sequences by default)."""
    def cut(x, s):
        return None if x is None else x[:, s]

    return element_mask(info.causal, cut(info.q_segment_ids, q_slice), cut(info.kv_segment_ids, kv_slice),
                        info.q_positions[:, q_slice], info.kv_positions[:, kv_slice],
                        cut(info.q_span_ids, q_slice), cut(info.kv_span_ids, kv_slice))


class PaddedMask(NamedTuple):
    """Mask inputs padded to whole blocks, with segments and spans always present (`[B, L_padded]` int32)."""

    q_segment_ids: Int[Array, "B Lqp"]
    kv_segment_ids: Int[Array, "B Lkp"]
    q_span_ids: Int[Array, "B Lqp"]
    kv_span_ids: Int[Array, "B Lkp"]
    q_positions: Int[Array, "B Lqp"]
    kv_positions: Int[Array, "B Lkp"]
    causal: bool


def _pad(x, length: int, value: int):
    return jnp.pad(x, ((0, 0), (0, length - x.shape[1])), constant_values=value)


def pad_to_blocks(info: MaskInfo, lq_padded: int, lk_padded: int) -> PaddedMask:
    b, lq = info.q_positions.shape
    lk = info.kv_positions.shape[1]
    qs = jnp.zeros((b, lq), jnp.int32) if info.q_segment_ids is None else info.q_segment_ids
    ks = jnp.zeros((b, lk), jnp.int32) if info.kv_segment_ids is None else info.kv_segment_ids
    qsp = jnp.zeros((b, lq), jnp.int32) if info.q_span_ids is None else info.q_span_ids
    ksp = jnp.zeros((b, lk), jnp.int32) if info.kv_span_ids is None else info.kv_span_ids
    return PaddedMask(
        q_segment_ids=_pad(qs, lq_padded, Q_PAD_SEGMENT), kv_segment_ids=_pad(ks, lk_padded, KV_PAD_SEGMENT),
        q_span_ids=_pad(qsp, lq_padded, 0), kv_span_ids=_pad(ksp, lk_padded, 0),
        q_positions=_pad(info.q_positions, lq_padded, 0), kv_positions=_pad(info.kv_positions, lk_padded, 0),
        causal=info.causal)


def needed_blocks(mask: PaddedMask, block_q: int, block_k: int) -> Bool[Array, "B NQ NK"]:
    """Which (query block, key block) pairs hold at least one visible pair — exactly.

    Evaluates the element rule once per pair and reduces it per block, one query block at a time, so it needs
    O(block_q · Lk) memory; its O(Lq · Lk) comparisons are a vanishing fraction of attention's
    O(Lq · Lk · H · D) flops. Exactness matters for skipping: range tests over-count unsorted ids (packed rows
    followed by padding 0s, say).
    """
    b, lqp = mask.q_positions.shape
    lkp = mask.kv_positions.shape[1]
    nq, nk = lqp // block_q, lkp // block_k

    def blocks(x):
        return x.reshape(b, nq, block_q).swapaxes(0, 1)

    def one_q_block(args):
        q_seg, q_pos, q_span = args
        allowed = element_mask(mask.causal, q_seg, mask.kv_segment_ids, q_pos, mask.kv_positions, q_span,
                               mask.kv_span_ids)  # [B, bq, Lkp]
        return allowed.reshape(b, block_q, nk, block_k).any(axis=(1, 3))

    need = jax.lax.map(one_q_block, (blocks(mask.q_segment_ids), blocks(mask.q_positions), blocks(mask.q_span_ids)))
    return need.swapaxes(0, 1)  # [B, NQ, NK]
