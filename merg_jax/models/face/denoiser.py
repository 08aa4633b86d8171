"""The motion denoiser: a diffusion transformer that predicts a clean motion window from a noisy one, the audio
content (cross-attention) and a style code (adaptive layer norms).

    net = MotionDenoiser(cfg, rngs=rngs)
    x0 = net(x_t, t, content, style, mask)   # x_t [B, W, 2K], t [B] ints, content [B, W, C], style [B, S] or None
                                             # (None: the unconditional branch of classifier-free guidance)

Each block: adaLN-zero self-attention over the window's frames, cross-attention from every frame to the window's
content frames, an MLP; the timestep and style embeddings drive every adaptive norm (DiT). The content is also
added frame by frame at the input, so the lips have the sound under them from the first block.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from merg_jax.models.face.config import FaceConfig


def timestep_embedding(t: Int[Array, "B"], dim: int) -> Float[Array, "B D"]:
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half) / half)
    x = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.sin(x), jnp.cos(x)], axis=-1)


class Attention(nnx.Module):
    def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
        self.heads = heads
        self.q = nnx.Linear(dim, dim, rngs=rngs)
        self.kv = nnx.Linear(dim, 2 * dim, rngs=rngs)
        self.o = nnx.Linear(dim, dim, rngs=rngs)

    def __call__(self, x: Float[Array, "B T D"], memory: Float[Array, "B S D"], mask: Bool[Array, "B S"]
                 ) -> Float[Array, "B T D"]:
        b, t, d = x.shape
        h = self.heads
        q = self.q(x).reshape(b, t, h, d // h)
        k, v = jnp.split(self.kv(memory).reshape(b, memory.shape[1], h, 2 * d // h), 2, axis=-1)
        logits = jnp.einsum("bthd,bshd->bhts", q, k) / math.sqrt(d // h)
        logits = jnp.where(mask[:, None, None, :], logits, -1e9)
        out = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(logits, axis=-1), v)
        return self.o(out.reshape(b, t, d))


class Block(nnx.Module):
    def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(dim, use_scale=False, use_bias=False, rngs=rngs)
        self.self_attn = Attention(dim, heads, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
        self.cross_attn = Attention(dim, heads, rngs=rngs)
        self.norm3 = nnx.LayerNorm(dim, use_scale=False, use_bias=False, rngs=rngs)
        self.mlp_in = nnx.Linear(dim, 4 * dim, rngs=rngs)
        self.mlp_out = nnx.Linear(4 * dim, dim, rngs=rngs)
        self.modulation = nnx.Linear(dim, 6 * dim, kernel_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, x, cond, content, mask):
        s1, b1, g1, s2, b2, g2 = jnp.split(self.modulation(jax.nn.silu(cond))[:, None], 6, axis=-1)
        h = self.norm1(x) * (1 + s1) + b1
        x = x + g1 * self.self_attn(h, h, mask)
        x = x + self.cross_attn(self.norm2(x), content, mask)
        h = self.norm3(x) * (1 + s2) + b2
        return x + g2 * self.mlp_out(jax.nn.gelu(self.mlp_in(h)))


class MotionDenoiser(nnx.Module):
    def __init__(self, cfg: FaceConfig, *, rngs: nnx.Rngs):
        d = cfg.dim
        self.cfg = cfg
        self.inp = nnx.Linear(cfg.motion_dim, d, rngs=rngs)
        self.content_in = nnx.Linear(cfg.content_dim, d, rngs=rngs)
        self.memory_in = nnx.Linear(cfg.content_dim, d, rngs=rngs)
        self.positions = nnx.Param(jax.random.normal(rngs.params(), (cfg.window, d)) * 0.02)
        self.time = nnx.Linear(d, d, rngs=rngs)
        self.style_in = nnx.Linear(cfg.style_dim, d, rngs=rngs)
        self.null_style = nnx.Param(jnp.zeros((d,)))
        self.blocks = nnx.List([Block(d, cfg.heads, rngs=rngs) for _ in range(cfg.layers)])
        self.norm = nnx.LayerNorm(d, rngs=rngs)
        self.out = nnx.Linear(d, cfg.motion_dim, kernel_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, x_t: Float[Array, "B W D"], t: Int[Array, "B"], content: Float[Array, "B W C"],
                 style: Float[Array, "B S"] | None, mask: Bool[Array, "B W"],
                 use_style: Bool[Array, "B"] | None = None) -> Float[Array, "B W D"]:
        """x0 predicted; `use_style` False rows take the null style (classifier-free guidance's dropout)."""
        b, w, _ = x_t.shape
        pos = self.positions[...][:w]
        x = self.inp(x_t) + self.content_in(content) + pos
        memory = self.memory_in(content) + pos
        cond = self.time(timestep_embedding(t, self.cfg.dim))
        null = jnp.broadcast_to(self.null_style[...], (b, self.cfg.dim))
        if style is None:
            s = null
        else:
            s = self.style_in(style)
            if use_style is not None:
                s = jnp.where(use_style[:, None], s, null)
        cond = cond + s
        for block in self.blocks:
            x = block(x, cond, memory, mask)
        return self.out(self.norm(x))


__all__ = ["MotionDenoiser", "timestep_embedding"]
