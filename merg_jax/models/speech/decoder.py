"""The mel decoder: frame-rate content, pitch and energy → log-mel, conditioned on the acoustic half of the style.

    dec = MelDecoder(cfg, rngs=rngs)
    mel = dec(frame_content, lf0, voiced, energy, mask, acoustic_style)   # [B, F, C], [B, F] ×3 → [B, F, n_mels]
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float

from merg_jax.models.speech.blocks import ConvStack, masked
from merg_jax.models.speech.config import SpeechConfig
from merg_jax.models.speech.style_encoder import MEL_MEAN, MEL_STD


class MelDecoder(nnx.Module):
    def __init__(self, cfg: SpeechConfig, *, rngs: nnx.Rngs):
        self.inp = nnx.Linear(cfg.content_dim + 3, cfg.dim, rngs=rngs)
        self.convs = ConvStack(cfg.dim, cfg.decoder_layers, cfg.kernel_size, cfg.style_dim // 2,
                               dilations=(1, 2, 4), rngs=rngs)
        self.out = nnx.Linear(cfg.dim, cfg.n_mels, rngs=rngs)

    def __call__(self, frame_content: Float[Array, "B F C"], lf0: Float[Array, "B F"], voiced: Float[Array, "B F"],
                 energy: Float[Array, "B F"], mask: Bool[Array, "B F"], style: Float[Array, "B H"]
                 ) -> Float[Array, "B F M"]:
        x = jnp.concatenate([frame_content, (lf0 * voiced)[..., None], voiced[..., None], energy[..., None]], -1)
        h = self.convs(masked(self.inp(x), mask), mask, style)
        mel = self.out(h) * MEL_STD + MEL_MEAN
        return jnp.where(mask[..., None], mel, MEL_MEAN - 3 * MEL_STD)  # padding reads as near-silence
