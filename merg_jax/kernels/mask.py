"""The attention mask semantics, defined once (../shared/DESIGN.md §4).

A query sees a key only if their segment ids are equal (packing; 0 is padding and only ever sees padding).
If `causal`, a query sees only keys at positions ≤ its own, **except** that keys in the same non-zero span id
(the tokens of one image, clip or audio) are all visible to each other. Positions default to the index in the
sequence; a KV cache passes the cache slots instead.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Bool, Int


class MaskInfo(NamedTuple):
    """Per-token mask inputs, each `[B, L]` int32 (or None when that rule is off)."""

    q_segment_ids: Int[Array, "B Lq"] | None
    kv_segment_ids: Int[Array, "B Lk"] | None
    q_span_ids: Int[Array, "B Lq"] | None
    kv_span_ids: Int[Array, "B Lk"] | None
    q_positions: Int[Array, "B Lq"]
    kv_positions: Int[Array, "B Lk"]
    causal: bool


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
    if x.shape[-1] != length or x.shape[0] not in (1, batch):
        raise ValueError(f"attention: {name} has shape {x.shape}, expected [{batch}, {length}] or [{length}]")
    return jnp.broadcast_to(x, (batch, length))


def make_mask_info(batch, lq, lk, *, causal, q_segment_ids=None, kv_segment_ids=None, q_span_ids=None,
                   kv_span_ids=None, q_positions=None, kv_positions=None) -> MaskInfo:
    qs, ks = _pair("segment_ids", q_segment_ids, kv_segment_ids, batch, lq, lk)
    qsp, ksp = _pair("span_ids", q_span_ids, kv_span_ids, batch, lq, lk)
    qp = _batched("q_positions", jnp.arange(lq) if q_positions is None else q_positions, batch, lq)
    kp = _batched("kv_positions", jnp.arange(lk) if kv_positions is None else kv_positions, batch, lk)
    return MaskInfo(qs, ks, qsp, ksp, qp, kp, bool(causal))


def dense_mask(info: MaskInfo, q_slice: slice = slice(None), kv_slice: slice = slice(None)) -> Bool[Array, "B Lq Lk"]:
    """The boolean mask for a block of queries × keys (whole sequences by default)."""
    qp, kp = info.q_positions[:, q_slice], info.kv_positions[:, kv_slice]
    allowed = jnp.ones((qp.shape[0], qp.shape[1], kp.shape[1]), bool)
    if info.q_segment_ids is not None:
        allowed &= info.q_segment_ids[:, q_slice, None] == info.kv_segment_ids[:, None, kv_slice]
    if info.causal:
        visible = kp[:, None, :] <= qp[:, :, None]
        if info.q_span_ids is not None:
            qsp, ksp = info.q_span_ids[:, q_slice, None], info.kv_span_ids[:, None, kv_slice]
            visible |= (qsp == ksp) & (qsp != 0)
        allowed &= visible
    return allowed
