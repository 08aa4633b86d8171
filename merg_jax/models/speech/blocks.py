"""Convolution blocks of the speech generator, channels last, with padding masked out between layers.

    AdaLayerNorm(dim, style_dim)(x, style)    # LayerNorm whose scale and shift come from the style vector
    ConvBlock(dim, kernel, style_dim)(x, mask, style)   # x + conv(gelu(norm(x)));  [B, T, D] -> [B, T, D]

Every module here is deterministic (no dropout) and replicated across the mesh: the whole generator has a few
million parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float


def masked(x: Float[Array, "B T D"], mask: Bool[Array, "B T"]) -> Float[Array, "B T D"]:
    return jnp.where(mask[..., None], x, 0.0)


class AdaLayerNorm(nnx.Module):
    """LayerNorm without its own affine; y = (1 + γ(s))·norm(x) + β(s). Without a style, a plain learned affine."""

    def __init__(self, dim: int, style_dim: int, *, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(dim, use_scale=style_dim == 0, use_bias=style_dim == 0, rngs=rngs)
        self.affine = (nnx.Linear(style_dim, 2 * dim, kernel_init=nnx.initializers.zeros, rngs=rngs)
                       if style_dim else None)

    def __call__(self, x: Float[Array, "B T D"], style: Float[Array, "B S"] | None = None) -> Float[Array, "B T D"]:
        y = self.norm(x)
        if self.affine is None:
            return y
        gamma, beta = jnp.split(self.affine(style)[:, None, :], 2, axis=-1)
        return (1.0 + gamma) * y + beta


class ConvBlock(nnx.Module):
    """Pre-norm residual 1-D convolution: x + W2·gelu(conv_k(norm(x, s))), padding positions kept at zero."""

    def __init__(self, dim: int, kernel_size: int, style_dim: int = 0, *, dilation: int = 1, rngs: nnx.Rngs):
        self.norm = AdaLayerNorm(dim, style_dim, rngs=rngs)
        self.conv = nnx.Conv(dim, dim, kernel_size=(kernel_size,), padding="SAME", kernel_dilation=(dilation,),
                             rngs=rngs)
        self.out = nnx.Linear(dim, dim, rngs=rngs)

    def __call__(self, x: Float[Array, "B T D"], mask: Bool[Array, "B T"],
                 style: Float[Array, "B S"] | None = None) -> Float[Array, "B T D"]:
        h = self.conv(masked(self.norm(x, style), mask))
        return masked(x + self.out(jax.nn.gelu(h)), mask)


class ConvStack(nnx.Module):
    """`layers` ConvBlocks (dilations cycle through `dilations`), then a final norm."""

    def __init__(self, dim: int, layers: int, kernel_size: int, style_dim: int = 0, *,
                 dilations: tuple[int, ...] = (1,), rngs: nnx.Rngs):
        self.blocks = nnx.List([ConvBlock(dim, kernel_size, style_dim, dilation=dilations[i % len(dilations)],
                                          rngs=rngs) for i in range(layers)])
        self.norm = AdaLayerNorm(dim, style_dim, rngs=rngs)

    def __call__(self, x: Float[Array, "B T D"], mask: Bool[Array, "B T"],
                 style: Float[Array, "B S"] | None = None) -> Float[Array, "B T D"]:
        for block in self.blocks:
            x = block(x, mask, style)
        return masked(self.norm(x, style), mask)
