"""Random attention problems for property tests: shapes, GQA ratios, masks in every combination."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from merg_jax.kernels.mask import MaskInfo, make_mask_info


@dataclasses.dataclass
class Case:
    q: jax.Array
    k: jax.Array
    v: jax.Array
    info: MaskInfo
    scale: float
    kwargs: dict  # the same mask as keyword arguments of `attention`

    def __repr__(self):
        return (f"Case(q{tuple(self.q.shape)}, k{tuple(self.k.shape)}, {self.q.dtype}, causal={self.info.causal}, "
                f"segments={self.info.q_segment_ids is not None}, spans={self.info.q_span_ids is not None})")


def sorted_segments(rng: np.random.Generator, batch: int, length: int, max_segments: int = 3) -> np.ndarray:
    out = np.zeros((batch, length), np.int32)
    for b in range(batch):
        cuts = np.sort(rng.integers(0, length + 1, size=rng.integers(0, max_segments)))
        out[b] = np.searchsorted(cuts, np.arange(length), side="right") + int(rng.integers(0, 2))
    return out


def contiguous_spans(rng: np.random.Generator, batch: int, length: int, max_spans: int = 2,
                     max_span_length: int = 5) -> np.ndarray:
    out = np.zeros((batch, length), np.int32)
    for b in range(batch):
        for sid in range(1, int(rng.integers(0, max_spans + 1)) + 1):
            lo = int(rng.integers(0, length))
            out[b, lo:lo + int(rng.integers(1, max_span_length + 1))] = sid
    return out


def random_case(seed: int, *, dtype=jnp.float32, max_len: int = 40, head_dim: int | None = None) -> Case:
    rng = np.random.default_rng(seed)
    batch = int(rng.integers(1, 3))
    hk = int(rng.choice([1, 2]))
    h = hk * int(rng.choice([1, 2, 4]))
    d = head_dim or int(rng.choice([8, 16]))
    lq = int(rng.integers(1, max_len + 1))
    cross = bool(rng.integers(0, 3) == 0)
    lk = int(rng.integers(1, max_len + 1)) if cross else lq
    causal = bool(rng.integers(0, 2))
    kwargs = {"causal": causal}
    if rng.integers(0, 2):
        if cross:
            kwargs["q_segment_ids"] = sorted_segments(rng, batch, lq)
            kwargs["kv_segment_ids"] = sorted_segments(rng, batch, lk)
        else:
            kwargs["q_segment_ids"] = sorted_segments(rng, batch, lq)
    if causal and not cross and rng.integers(0, 2):
        kwargs["q_span_ids"] = contiguous_spans(rng, batch, lq)
    if causal and cross:  # e.g. a chunk of queries at the end of a longer key sequence (a KV cache)
        kwargs["q_positions"] = np.broadcast_to(np.arange(lq) + max(lk - lq, 0), (batch, lq)).copy()
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (batch, lq, h, d), jnp.float32).astype(dtype)
    k = jax.random.normal(keys[1], (batch, lk, hk, d), jnp.float32).astype(dtype)
    v = jax.random.normal(keys[2], (batch, lk, hk, d), jnp.float32).astype(dtype)
    info = make_mask_info(batch, lq, lk, **kwargs)
    scale = float(rng.choice([1.0 / np.sqrt(d), 0.3]))
    return Case(q, k, v, info, scale, kwargs)


def relative_error(a, b, floor: float = 1e-2) -> float:
    """max |a − b| over max |b|, the denominator at least `floor`: an exact-zero reference (the key gradient of a
    single key: softmax over one key is 1 whatever the key) meets rounding noise of the problem's own scale."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), floor))
