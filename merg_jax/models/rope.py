"""Rotary position embeddings, Hugging Face LLaMA layout (rotate-half, not interleaved)."""

from __future__ import annotations

import math

import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def inverse_frequencies(head_dim: int, theta: float, llama3_scaling=None) -> Float[Array, "K/2"]:
    """Per-pair rotation frequencies; `llama3_scaling = (factor, low_freq_factor, high_freq_factor,
    original_max_position_embeddings)` applies LLaMA 3.1's long-context rule (low frequencies divided by
    `factor`, high ones kept, a smooth blend between)."""
    inv = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if llama3_scaling is None:
        return inv
    factor, low_ff, high_ff, old_len = llama3_scaling
    low_wavelen, high_wavelen = old_len / low_ff, old_len / high_ff
    wavelen = 2 * math.pi / inv
    scaled = jnp.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_len / wavelen - low_ff) / (high_ff - low_ff)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(medium, blended, scaled)


def apply_rope(x: Float[Array, "B L H K"], positions: Int[Array, "B L"],
               inv_freq: Float[Array, "K/2"]) -> Float[Array, "B L H K"]:
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, L, K/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin
