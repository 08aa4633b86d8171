"""The style encoder: a reference log-mel → a style vector with an acoustic half and a prosodic half.

    enc = StyleEncoder(cfg, rngs=rngs)
    style = enc(mel, mel_lengths)     # [B, T, n_mels] → [B, cfg.style_dim] = [acoustic (S/2) | prosodic (S/2)]

Two towers of strided convolutions (each halving time) over the mel, pooled by masked mean and standard deviation
over time: the acoustic half conditions the mel decoder (timbre, spectral colour), the prosodic half the duration,
pitch and energy predictor (rate, pitch level and range), as StyleTTS2's two encoders. S^s is trained to match this
vector of the gold reply audio (stage c, L_sal). It is deterministic.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from merg_jax.models.speech.config import SpeechConfig

MEL_MEAN, MEL_STD = -4.0, 2.5  # a fixed affine that puts log-mels near zero mean, unit spread


class StyleTower(nnx.Module):
    def __init__(self, cfg: SpeechConfig, out_dim: int, *, rngs: nnx.Rngs):
        self.inp = nnx.Linear(cfg.n_mels, cfg.dim, rngs=rngs)
        self.convs = nnx.List([nnx.Conv(cfg.dim, cfg.dim, kernel_size=(5,), strides=(2,), padding="SAME", rngs=rngs)
                               for _ in range(cfg.style_layers)])
        self.norms = nnx.List([nnx.LayerNorm(cfg.dim, rngs=rngs) for _ in range(cfg.style_layers)])
        self.out = nnx.Linear(2 * cfg.dim, out_dim, rngs=rngs)

    def __call__(self, mel: Float[Array, "B T M"], lengths: Int[Array, "B"]) -> Float[Array, "B S"]:
        x = self.inp((mel - MEL_MEAN) / MEL_STD)
        n = lengths
        for conv, norm in zip(self.convs, self.norms):
            mask = jnp.arange(x.shape[1])[None] < n[:, None]
            x = jax.nn.gelu(norm(conv(jnp.where(mask[..., None], x, 0.0))))
            n = (n + 1) // 2
        mask = (jnp.arange(x.shape[1])[None] < jnp.maximum(n, 1)[:, None])[..., None]
        count = jnp.maximum(jnp.sum(mask, axis=1), 1)
        mean = jnp.sum(jnp.where(mask, x, 0.0), axis=1) / count
        std = jnp.sqrt(jnp.sum(jnp.where(mask, jnp.square(x - mean[:, None]), 0.0), axis=1) / count + 1e-5)
        return self.out(jnp.concatenate([mean, std], axis=-1))


class StyleEncoder(nnx.Module):
    def __init__(self, cfg: SpeechConfig, *, rngs: nnx.Rngs):
        self.acoustic = StyleTower(cfg, cfg.style_dim // 2, rngs=rngs)
        self.prosodic = StyleTower(cfg, cfg.style_dim // 2, rngs=rngs)

    def __call__(self, mel: Float[Array, "B T M"], lengths: Int[Array, "B"]) -> Float[Array, "B S"]:
        return jnp.concatenate([self.acoustic(mel, lengths), self.prosodic(mel, lengths)], axis=-1)


def split_style(style: Float[Array, "B S"]) -> tuple[Float[Array, "B H"], Float[Array, "B H"]]:
    """(acoustic half, prosodic half) of a style vector."""
    half = style.shape[-1] // 2
    return style[:, :half], style[:, half:]
