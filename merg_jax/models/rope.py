"""Rotary position embeddings, Hugging Face LLaMA layout (rotate-half, not interleaved).

`rope_tables` makes the cos/sin tables once per forward pass; every layer's `apply_rope` reads them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

LOOP_MIN_LENGTH = 16  # chunks this long or longer get their tables from a loop (see `rope_tables`)


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


def rope_tables(positions: Int[Array, "B L"], inv_freq: Float[Array, "K/2"],
                dtype) -> tuple[Float[Array, "B L 1 K"], Float[Array, "B L 1 K"]]:
    """cos and sin of `positions × inv_freq`, each half repeated (rotate-half layout), ready to broadcast
    over heads. Made once per forward pass; every layer's `apply_rope` reads them.

    For chunks of `LOOP_MIN_LENGTH` tokens or more the tables are written by a loop over the K/2 frequencies,
    whose results are buffers XLA cannot fuse into their consumers (and already in their final layout). Written as one elementwise expression, the
    tables are fused back into every layer's rotate-and-transpose of q and k (forward and backward) at some sizes
    (the tiny config's) and cos/sin evaluated per element of every head, in every layer (docs/performance.md).
    The loop runs over frequencies, not batch rows, and starts from buffers derived from `positions`, so a
    batch-sharded `positions` gives batch-sharded tables. Short chunks
    (decoding, L = 1) keep the fused form: K/2 loop iterations per token would cost more than they save.
    """
    pos = positions.astype(jnp.float32)
    half = inv_freq.shape[0]
    if positions.shape[1] < LOOP_MIN_LENGTH:
        angles = pos[..., None] * inv_freq  # [B, L, K/2]
        angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
        return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)

    def write_frequency(i, tables):  # columns i and i + K/2 of both tables: [B, L, 1, 2, K/2] at [..., :, i]
        angle = jnp.broadcast_to((pos * inv_freq[i])[:, :, None, None, None], (*pos.shape, 1, 2, 1))
        return tuple(jax.lax.dynamic_update_slice(t, fn(angle).astype(dtype), (0, 0, 0, 0, i))
                     for t, fn in zip(tables, (jnp.cos, jnp.sin)))

    empty = jnp.zeros((*positions.shape, 1, 2, half), dtype) + (pos * 0)[:, :, None, None, None].astype(dtype)
    cos, sin = jax.lax.fori_loop(0, half, write_frequency, (empty, empty))
    return cos.reshape(*positions.shape, 1, 2 * half), sin.reshape(*positions.shape, 1, 2 * half)


def apply_rope(x: Float[Array, "B L H K"], cos: Float[Array, "B L 1 K"],
               sin: Float[Array, "B L 1 K"]) -> Float[Array, "B L H K"]:
    """Rotates each (i, i + K/2) pair of `x`'s head dimension by the angle the tables hold."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin
