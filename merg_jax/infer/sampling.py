"""Choosing the next token from logits: greedy, or sampling after the Hugging Face logits warpers.

The warpers apply in Hugging Face's order — temperature, then top-k, then top-p (nucleus) — and a filtered
token gets logit `-inf`, so `jax.random.categorical` never draws it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen. `temperature == 0` is greedy (top_k and top_p are then ignored);
    `top_k == 0` and `top_p == 1.0` switch those filters off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if not self.temperature >= 0.0:  # also rejects NaN
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 is greedy)")
        if int(self.top_k) != self.top_k or self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be an integer >= 0 (0 switches it off)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1] (1.0 switches it off)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def top_k_filter(logits: Float[Array, "B V"], k: int) -> Float[Array, "B V"]:
    """Keeps the k largest logits per row (and any tied with the k-th), the rest become -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_filter(logits: Float[Array, "B V"], p: float | Float[Array, ""]) -> Float[Array, "B V"]:
    """Nucleus filter as Hugging Face's `TopPLogitsWarper`: sorted ascending, the tokens whose cumulative
    probability is <= 1 - p are dropped; the most likely token is always kept. Ties with the smallest kept
    logit are kept."""
    ascending = jnp.sort(logits, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)
    dropped = jnp.sum(cum <= 1.0 - p, axis=-1, keepdims=True)  # a prefix, as cum only grows
    dropped = jnp.minimum(dropped, logits.shape[-1] - 1)
    threshold = jnp.take_along_axis(ascending, dropped, axis=-1)
    return jnp.where(logits < threshold, -jnp.inf, logits)


def warp_logits(logits: Float[Array, "B V"], cfg: SamplingConfig) -> Float[Array, "B V"]:
    """Temperature, then top-k, then top-p: the logits that sampling draws from (float32)."""
    logits = logits.astype(jnp.float32) / cfg.temperature
    logits = top_k_filter(logits, int(cfg.top_k))
    if cfg.top_p < 1.0:
        logits = top_p_filter(logits, cfg.top_p)
    return logits


def greedy_tokens(logits: Float[Array, "B V"]) -> Int[Array, " B"]:
    """`jnp.argmax(logits, -1)` (the first of equal maxima; a row with NaN: its first NaN), as a max and then a
    min over the indices that reach it: two plain reductions, where XLA:CPU's (value, index) reduction of
    `argmax` is ~3x slower (`[8, 8000]`: 140 vs 50 µs, once per decode step; docs/performance.md)."""
    best = jnp.max(logits, axis=-1, keepdims=True)
    hit = (logits == best) | (jnp.isnan(logits) & jnp.isnan(best))
    index = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    return jnp.min(jnp.where(hit, index, logits.shape[-1]), axis=-1)


def sample_logits(logits: Float[Array, "B V"], cfg: SamplingConfig, key: jax.Array | None) -> Int[Array, " B"]:
    """The next token per row: argmax when greedy, else a draw from `warp_logits`."""
    if cfg.greedy:
        return greedy_tokens(logits)
    return jax.random.categorical(key, warp_logits(logits, cfg), axis=-1).astype(jnp.int32)
