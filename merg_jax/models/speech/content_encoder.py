"""The content (text) encoder: symbol ids → the content sequence, one vector per symbol.

    enc = ContentEncoder(vocab_size, cfg, rngs=rngs)
    content = enc(ids, lengths)       # [B, T] int32 → [B, T, cfg.content_dim], zero beyond each row's length

This is what the Content Synchronizer's C^s is trained to match (stage b, L_ccl), and what the prosody predictor and
the mel decoder read. It is deterministic.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from merg_jax.models.speech.blocks import ConvStack, masked
from merg_jax.models.speech.config import SpeechConfig


class ContentEncoder(nnx.Module):
    def __init__(self, vocab_size: int, cfg: SpeechConfig, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab_size, cfg.dim, rngs=rngs)
        self.convs = ConvStack(cfg.dim, cfg.content_layers, cfg.kernel_size, rngs=rngs)
        self.out = nnx.Linear(cfg.dim, cfg.content_dim, rngs=rngs)

    def __call__(self, ids: Int[Array, "B T"], lengths: Int[Array, "B"]) -> Float[Array, "B T C"]:
        mask = jnp.arange(ids.shape[1])[None] < lengths[:, None]
        x = masked(self.embed(ids), mask)
        return masked(self.out(self.convs(x, mask)), mask)
