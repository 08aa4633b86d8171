"""Monotonic alignment search (MAS), as Glow-TTS defines it: the hard text→mel alignment that maximises the summed
log-likelihood, used to get duration targets while the acoustic model trains.

    alignment = monotonic_alignment_search(log_p, text_lengths, mel_lengths)  # [B, Tt, Tm] 0/1 float32
    durations = durations_from_alignment(alignment)                           # [B, Tt] int32 frames per token

A path assigns every mel frame j < T_mel to exactly one token i < T_text; it starts at (0, 0), ends at
(T_text - 1, T_mel - 1) (each row's own lengths), and from frame j to j + 1 either stays on token i or moves to
i + 1, so every token gets at least one frame. Dynamic programming over the frames:

    Q[i, j] = max(Q[i, j - 1], Q[i - 1, j - 1]) + log_p[i, j]     Q[0, 0] = log_p[0, 0], Q[i > 0, 0] = -inf

then a backtrack from (T_text - 1, T_mel - 1). Both passes are `lax.scan`s over the frames with a [B, T_text]
carry, so shapes are static and lengths dynamic: one compilation serves every batch of a given padded shape.
Requires 1 <= T_text <= T_mel per row (otherwise no path exists and the result is not a valid alignment).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def _forward(log_p: Float[Array, "B Tt Tm"]) -> Int[Array, "Tm B Tt"]:
    """choice[j, b, i]: True where the best path into (i, j) comes from token i - 1 (a move), False for a stay.

    Only cells inside a row's lengths matter: Q[i, j] depends on cells (<= i, < j) alone, so padding (whatever
    its values) never reaches them.
    """
    b, tt, _ = log_p.shape
    token = jnp.arange(tt)
    q0 = jnp.where(token[None, :] == 0, log_p[:, :, 0], -jnp.inf)  # only token 0 may own frame 0

    def step(prev, lp_j):  # prev = Q[:, :, j - 1], lp_j = log_p[:, :, j]
        # Q[i - 1, j - 1] sits at index i: the previous column shifted one token *down* the text axis.
        from_prev_token = jnp.concatenate([jnp.full((b, 1), -jnp.inf, prev.dtype), prev[:, :-1]], axis=1)
        move = prev < from_prev_token  # strict: ties stay on the token, as Glow-TTS's backtrack does
        return jnp.where(move, from_prev_token, prev) + lp_j, move

    _, moves = jax.lax.scan(step, q0, jnp.moveaxis(log_p[:, :, 1:], 2, 0))  # [Tm - 1, B, Tt]
    return jnp.concatenate([jnp.zeros((1, b, tt), bool), moves], axis=0)


def monotonic_alignment_search(log_p: Float[Array, "B Tt Tm"], text_lengths: Int[Array, "B"],
                               mel_lengths: Int[Array, "B"]) -> Float[Array, "B Tt Tm"]:
    """The most likely monotonic alignment: 1.0 where frame j belongs to token i, 0.0 elsewhere (and outside the
    row's `text_lengths` × `mel_lengths`).

    log_p: log-likelihood of mel frame j under token i, e.g. the Gaussian log-density of the frame under the
    token's predicted mean, any float dtype (computed in float32). Padding may hold anything. A hard alignment:
    no gradient flows through it (compute the loss with `log_p` and the returned alignment). jit-able.
    """
    b, tt, tm = log_p.shape
    text_lengths = jnp.asarray(text_lengths, jnp.int32)
    mel_lengths = jnp.asarray(mel_lengths, jnp.int32)
    lp = jax.lax.stop_gradient(log_p).astype(jnp.float32)
    valid = ((jnp.arange(tt)[None, :, None] < text_lengths[:, None, None])
             & (jnp.arange(tm)[None, None, :] < mel_lengths[:, None, None]))
    # Padding cannot change the path (see _forward), but a NaN or inf there would still poison Q's padded cells.
    moves = _forward(jnp.where(valid, lp, 0.0))
    token = jnp.arange(tt)

    def back(index, inputs):  # index[b]: the token that owns frame j
        j, move_j = inputs
        active = j < mel_lengths
        owner = active[:, None] & (token[None, :] == index[:, None])
        chosen = jnp.take_along_axis(move_j, jnp.maximum(index, 0)[:, None], axis=1)[:, 0]
        # index >= j: tokens 0..index cannot fit in frames 0..j-1 while staying, so the path must move (Glow-TTS
        # forces this too: it matters when Q ties at -inf); token 0 never moves.
        step = active & (index > 0) & ((index >= j) | chosen)
        return index - step.astype(jnp.int32), owner

    frames = jnp.arange(tm - 1, -1, -1)
    _, owners = jax.lax.scan(back, text_lengths - 1, (frames, moves[::-1]))  # [Tm, B, Tt], last frame first
    alignment = jnp.moveaxis(owners[::-1], 0, 2).astype(jnp.float32)
    return jax.lax.stop_gradient(alignment)


def durations_from_alignment(alignment: Float[Array, "B Tt Tm"]) -> Int[Array, "B Tt"]:
    """Frames per token (0 for padded tokens): the duration targets for a duration predictor."""
    return jnp.sum(alignment, axis=-1).round().astype(jnp.int32)
