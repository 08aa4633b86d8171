"""The prosody predictor: how long each symbol lasts, and the pitch and energy of every frame, conditioned on the
prosodic half of the style through adaptive layer norms.

    pred = ProsodyPredictor(cfg, rngs=rngs)
    log_dur = pred.durations(content, lengths, prosodic_style)          # [B, T]: log frames per symbol
    f0, voiced_logit, energy = pred.frames(frame_content, frame_mask, prosodic_style)   # [B, F] each

Pitch is `lf0 = (log F0 − LOG_F0_CENTRE) / LOG_F0_SCALE` on voiced frames (0 elsewhere) with a voiced/unvoiced
logit; energy is the frame's mean log-mel, normalised like the mel (`style_encoder.MEL_MEAN/MEL_STD`).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from merg_jax.models.speech.blocks import ConvStack
from merg_jax.models.speech.config import SpeechConfig
from merg_jax.models.speech.style_encoder import MEL_MEAN, MEL_STD

LOG_F0_CENTRE, LOG_F0_SCALE = math.log(150.0), 0.5


def normalise_f0(f0_hz: Float[Array, "... F"]) -> tuple[Float[Array, "... F"], Bool[Array, "... F"]]:
    voiced = f0_hz > 0
    return jnp.where(voiced, (jnp.log(jnp.maximum(f0_hz, 1.0)) - LOG_F0_CENTRE) / LOG_F0_SCALE, 0.0), voiced


def f0_hz(lf0: Float[Array, "... F"], voiced: Bool[Array, "... F"]) -> Float[Array, "... F"]:
    return jnp.where(voiced, jnp.exp(lf0 * LOG_F0_SCALE + LOG_F0_CENTRE), 0.0)


def frame_energy(mel: Float[Array, "B F M"]) -> Float[Array, "B F"]:
    return (jnp.mean(mel, axis=-1) - MEL_MEAN) / MEL_STD


class ProsodyPredictor(nnx.Module):
    def __init__(self, cfg: SpeechConfig, *, rngs: nnx.Rngs):
        half = cfg.style_dim // 2
        self.dur_in = nnx.Linear(cfg.content_dim, cfg.dim, rngs=rngs)
        self.dur_convs = ConvStack(cfg.dim, cfg.prosody_layers, cfg.kernel_size, half, rngs=rngs)
        self.dur_out = nnx.Linear(cfg.dim, 1, rngs=rngs)
        self.frame_in = nnx.Linear(cfg.content_dim, cfg.dim, rngs=rngs)
        self.frame_convs = ConvStack(cfg.dim, cfg.prosody_layers, cfg.kernel_size, half, dilations=(1, 2, 4),
                                     rngs=rngs)
        self.frame_out = nnx.Linear(cfg.dim, 3, rngs=rngs)  # lf0, voiced logit, energy

    def durations(self, content: Float[Array, "B T C"], lengths: Int[Array, "B"],
                  style: Float[Array, "B H"]) -> Float[Array, "B T"]:
        mask = jnp.arange(content.shape[1])[None] < lengths[:, None]
        h = self.dur_convs(self.dur_in(content), mask, style)
        return jnp.where(mask, self.dur_out(h)[..., 0], 0.0)

    def frames(self, frame_content: Float[Array, "B F C"], mask: Bool[Array, "B F"], style: Float[Array, "B H"]
               ) -> tuple[Float[Array, "B F"], Float[Array, "B F"], Float[Array, "B F"]]:
        h = self.frame_out(self.frame_convs(self.frame_in(frame_content), mask, style))
        return h[..., 0], h[..., 1], h[..., 2]
