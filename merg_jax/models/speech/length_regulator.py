"""The length regulator: repeats each token's vector for its duration in frames.

    frames, frame_lengths = expand(x, durations, max_frames)   # [B, T, D], [B, T] int → [B, F, D], [B]
    durations = predicted_durations(log_durations, lengths)    # round(exp) with ≥ 1 frame per real token

jit-able with a static `max_frames`: frame f takes the token whose cumulative duration first exceeds f; frames past
a row's total (or past `max_frames`) are zero.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def frame_to_token(durations: Int[Array, "B T"], max_frames: int) -> tuple[Int[Array, "B F"], Int[Array, "B"]]:
    ends = jnp.cumsum(durations, axis=1)  # [B, T]
    frame = jnp.arange(max_frames)
    index = jnp.sum(ends[:, None, :] <= frame[None, :, None], axis=-1)  # tokens finished before frame f
    total = jnp.minimum(ends[:, -1], max_frames)
    return jnp.minimum(index, durations.shape[1] - 1), total


def expand(x: Float[Array, "B T D"], durations: Int[Array, "B T"], max_frames: int
           ) -> tuple[Float[Array, "B F D"], Int[Array, "B"]]:
    index, total = frame_to_token(durations, max_frames)
    out = jnp.take_along_axis(x, index[..., None], axis=1)
    valid = jnp.arange(max_frames)[None] < total[:, None]
    return jnp.where(valid[..., None], out, 0.0), total


def predicted_durations(log_durations: Float[Array, "B T"], lengths: Int[Array, "B"], *,
                        speed: float = 1.0) -> Int[Array, "B T"]:
    """Frames per token from predicted log-durations (divided by `speed`), at least 1 for every real token."""
    d = jnp.maximum(jnp.round(jnp.exp(log_durations) / speed), 1.0).astype(jnp.int32)
    return jnp.where(jnp.arange(d.shape[1])[None] < lengths[:, None], d, 0)
