"""The face style encoder: a reference clip's motion → a style code (emotion, its intensity, personal manner), and
the label route that needs no reference clip.

    enc = MotionStyleEncoder(cfg, rngs=rngs)
    style = enc(motion, lengths)          # normalised motion [B, T, 2K] → [B, style_dim] in (-1, 1)
    table = LabelStyle(cfg, rngs=rngs)
    style = table(emotion7, intensity, neutral)   # [B] ints, [B] floats, the code of a still face [style_dim]

The encoder pools a convolution stack over time by masked mean and standard deviation: the mean carries the
expression held through the clip, the spread how much the face moves. S^v is trained to match it on the gold reply
video (stage c, L_sal). The label route holds one code per emotion, learnt to regress the encoder's codes of clips
with that label; intensity x moves from the still neutral face (x = 0) to that code (x = 1) and beyond.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from merg_jax.labels import EMOTIONS_7
from merg_jax.models.face.config import FaceConfig
from merg_jax.models.speech.blocks import ConvStack


class MotionStyleEncoder(nnx.Module):
    def __init__(self, cfg: FaceConfig, *, rngs: nnx.Rngs):
        self.inp = nnx.Linear(cfg.motion_dim, cfg.style_hidden, rngs=rngs)
        self.convs = ConvStack(cfg.style_hidden, cfg.style_layers, 5, dilations=(1, 2, 4), rngs=rngs)
        self.out = nnx.Linear(2 * cfg.style_hidden, cfg.style_dim, rngs=rngs)

    def __call__(self, motion: Float[Array, "B T D"], lengths: Int[Array, "B"]) -> Float[Array, "B S"]:
        mask = jnp.arange(motion.shape[1])[None] < jnp.maximum(lengths, 1)[:, None]
        x = self.convs(self.inp(motion), mask)
        w = mask[..., None].astype(jnp.float32)
        n = jnp.maximum(jnp.sum(w, axis=1), 1.0)
        mean = jnp.sum(x * w, axis=1) / n
        std = jnp.sqrt(jnp.sum(jnp.square(x - mean[:, None]) * w, axis=1) / n + 1e-5)
        return jnp.tanh(self.out(jnp.concatenate([mean, std], axis=-1)))


class LabelStyle(nnx.Module):
    """One style code per emotion (the 7 multimodal emotions), with intensity."""

    def __init__(self, cfg: FaceConfig, *, rngs: nnx.Rngs):
        self.codes = nnx.Embed(len(EMOTIONS_7), cfg.style_dim, embedding_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, emotion7: Int[Array, "B"], intensity: Float[Array, "B"],
                 neutral: Float[Array, "S"]) -> Float[Array, "B S"]:
        code = self.codes(jnp.clip(emotion7, 0, len(EMOTIONS_7) - 1))
        return neutral + intensity[:, None] * (code - neutral)


__all__ = ["LabelStyle", "MotionStyleEncoder"]
