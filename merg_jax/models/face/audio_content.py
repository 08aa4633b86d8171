"""The audio content encoder: speech log-mel → one content vector per video frame (C^v's target).

    enc = AudioContentEncoder(cfg, rngs=rngs)
    content = enc(mel, mel_len, frames)   # mel [B, M, n_mels] (the speech generator's log-mel) → [B, frames, C]

A convolution stack over the mel frames (a receptive field of ~0.4 s either side: co-articulation), projected and
squashed to (-1, 1), then read at each video frame's time by linear interpolation (mel frames come at
sample_rate / hop per second, video frames at fps). It is trained with the motion generator (its content is what
the denoiser cross-attends to, plus a direct motion read-out that keeps lip motion in it); it sees no face, so a
reply's speech drives any portrait.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from merg_jax.models.face.config import FaceConfig
from merg_jax.models.speech.blocks import ConvStack
from merg_jax.models.speech.style_encoder import MEL_MEAN, MEL_STD


def video_frames_of(mel_len: Int[Array, "B"], cfg: FaceConfig) -> Int[Array, "B"]:
    """Video frames that `mel_len` mel frames cover (the centred STFT's extra frame removed)."""
    return jnp.maximum(jnp.round((mel_len - 1) * cfg.fps / cfg.mel_fps), 0).astype(jnp.int32)


class AudioContentEncoder(nnx.Module):
    def __init__(self, cfg: FaceConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.inp = nnx.Linear(cfg.n_mels, cfg.content_hidden, rngs=rngs)
        self.convs = ConvStack(cfg.content_hidden, cfg.content_layers, 5, dilations=(1, 2, 4), rngs=rngs)
        self.out = nnx.Linear(cfg.content_hidden, cfg.content_dim, rngs=rngs)

    def __call__(self, mel: Float[Array, "B M N"], mel_len: Int[Array, "B"], frames: int) -> Float[Array, "B F C"]:
        """Content at video frames 0 .. frames-1; zero past each row's `video_frames_of(mel_len)`."""
        m = mel.shape[1]
        mask = jnp.arange(m)[None] < mel_len[:, None]
        x = self.convs(self.inp((mel.astype(jnp.float32) - MEL_MEAN) / MEL_STD), mask)
        x = jnp.tanh(self.out(x))  # [B, M, C]
        pos = jnp.arange(frames) * (self.cfg.mel_fps / self.cfg.fps)
        lo = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, m - 1)
        hi = jnp.clip(lo + 1, 0, m - 1)
        w = (pos - jnp.floor(pos))[None, :, None]
        y = (1.0 - w) * x[:, lo] + w * x[:, hi]
        valid = jnp.arange(frames)[None] < video_frames_of(mel_len, self.cfg)[:, None]
        return jnp.where(valid[..., None], y, 0.0)


__all__ = ["AudioContentEncoder", "video_frames_of"]
