"""Procedural talking avatars for AvaMERG-mini: 65 identities, 7 emotions + neutral, lips driven by speech.

Public API (what `generate.py` calls):
  render_portrait(avatar_id, size=96) -> uint8 [size, size, 3]   neutral, mouth shut, eyes open, head centred
  render_clip(avatar_id, emotion, mouth, *, fps=25, size=96, seed) -> (uint8 [T, size, size, 3], side-car dict)
  mouth_envelope(wave, sr, fps, num_frames) -> float32 [num_frames] in [0, 1]
  write_mp4(path, frames, fps)                                    atomic, reproducible H.264 yuv420p
Also: `render_frames(avatar_id, params, size)` redraws a clip from its side-car (`clip_params` makes a side-car
without drawing); `identity(avatar_id)` describes
a face; `EMOTIONS`, `canonical_emotion` (the 32 EmpatheticDialogues labels map to the nearest of the 7).

Everything is numpy: shapes are signed-distance / exact-band coverage (anti-aliased at any size >= 32), each
identity's static layers are drawn once per size and cached, and only the eye/brow and mouth crops are redrawn
per frame.
"""

from __future__ import annotations

import numpy as np

from merg_jax.data.mini.avatar_envelope import mouth_envelope
from merg_jax.data.mini.avatar_expression import (EMOTIONS, PER_FRAME_KEYS, canonical_emotion, clip_params,
                                                  neutral_params)
from merg_jax.data.mini.avatar_identity import Identity, identity
from merg_jax.data.mp4_writer import write_mp4
from merg_jax.data.mini.avatar_render import render_frames


def render_portrait(avatar_id: int, size: int = 96) -> np.ndarray:
    """The neutral portrait of `avatar_id` (0..64): uint8 [size, size, 3]."""
    return render_frames(avatar_id, neutral_params(1), size)[0]


def render_clip(avatar_id: int, emotion: str, mouth: np.ndarray, *, fps: int = 25, size: int = 96,
                seed: int) -> tuple[np.ndarray, dict]:
    """A talking clip: frames uint8 [T, size, size, 3] with T = len(mouth), and its side-car.

    emotion: one of `EMOTIONS` (7 + "neutral") or an EmpatheticDialogues label; mouth: float [T] in [0, 1], the
    lip opening per frame (e.g. `mouth_envelope` of the speech). Blinks, head drift and the slow expression drift
    are seeded by (seed, avatar_id, emotion): same arguments, same pixels.

    The side-car holds per-frame lists (`PER_FRAME_KEYS`: mouth_open, brow, brow_tilt, eye_open, mouth_corner,
    mouth_asym, mouth_width, nose_wrinkle, blink, head_dx, head_dy) of exactly the numbers drawn, and avatar_id,
    emotion (canonical), fps, size, seed, num_frames.
    """
    sidecar = clip_params(avatar_id, emotion, mouth, fps=fps, size=size, seed=seed)
    return render_frames(avatar_id, sidecar, size), sidecar


__all__ = ["EMOTIONS", "PER_FRAME_KEYS", "Identity", "canonical_emotion", "clip_params", "identity", "mouth_envelope",
           "render_clip", "render_frames", "render_portrait", "write_mp4"]
