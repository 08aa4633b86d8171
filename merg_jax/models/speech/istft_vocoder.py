"""An iSTFT vocoder (Vocos-style): log-mel → ConvNeXt blocks at the frame rate → STFT magnitude and phase →
inverse STFT. No upsampling layers, so it runs and trains fast on a CPU.

    voc = IstftVocoder(cfg, rngs=rngs)
    wave = voc(mel)          # [B, F, n_mels] → [B, (F − 1) · hop] samples (the STFT of that wave has F frames)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from merg_jax.models.speech.audio import istft
from merg_jax.models.speech.config import SpeechConfig
from merg_jax.models.speech.style_encoder import MEL_MEAN, MEL_STD


class ConvNeXtBlock(nnx.Module):
    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.dw = nnx.Conv(dim, dim, kernel_size=(7,), padding="SAME", feature_group_count=dim, rngs=rngs)
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.up = nnx.Linear(dim, 3 * dim, rngs=rngs)
        self.down = nnx.Linear(3 * dim, dim, rngs=rngs)
        self.gamma = nnx.Param(jnp.full((dim,), 0.1, jnp.float32))

    def __call__(self, x: Float[Array, "B F D"]) -> Float[Array, "B F D"]:
        return x + self.gamma[...] * self.down(jax.nn.gelu(self.up(self.norm(self.dw(x)))))


class IstftVocoder(nnx.Module):
    def __init__(self, cfg: SpeechConfig, *, rngs: nnx.Rngs):
        self.n_fft, self.hop = cfg.n_fft, cfg.hop
        dim = cfg.vocoder_dim
        self.inp = nnx.Conv(cfg.n_mels, dim, kernel_size=(7,), padding="SAME", rngs=rngs)
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.blocks = nnx.List([ConvNeXtBlock(dim, rngs=rngs) for _ in range(cfg.vocoder_layers)])
        self.final = nnx.LayerNorm(dim, rngs=rngs)
        self.head = nnx.Linear(dim, cfg.n_fft + 2, rngs=rngs)

    def __call__(self, mel: Float[Array, "B F M"]) -> Float[Array, "B S"]:
        x = self.norm(self.inp((mel - MEL_MEAN) / MEL_STD))
        for block in self.blocks:
            x = block(x)
        h = self.head(self.final(x))
        bins = self.n_fft // 2 + 1
        magnitude = jnp.exp(jnp.clip(h[..., :bins], -12.0, 7.0))
        phase = h[..., bins:]
        spec = jax.lax.complex(magnitude * jnp.cos(phase), magnitude * jnp.sin(phase))
        return istft(spec, self.n_fft, self.hop, (mel.shape[1] - 1) * self.hop)
