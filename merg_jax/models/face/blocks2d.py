"""2-D convolution blocks of the renderer, channels last: `[B, H, W, C]`.

    Down(c_in, c_out)(x)    # conv 3×3, GroupNorm, ReLU, 2×2 average pool:  [B, H, W, Ci] → [B, H/2, W/2, Co]
    Up(c_in, c_out)(x)      # nearest 2× upsample, conv 3×3, GroupNorm, ReLU: [B, H, W, Ci] → [B, 2H, 2W, Co]
    Res(c)(x)               # x + conv(relu(norm(conv(relu(norm(x))))))
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float


def _norm(c: int, rngs: nnx.Rngs) -> nnx.GroupNorm:
    return nnx.GroupNorm(c, num_groups=min(8, c), rngs=rngs)


def conv(c_in: int, c_out: int, k: int = 3, *, rngs: nnx.Rngs, zero: bool = False) -> nnx.Conv:
    init = nnx.initializers.zeros if zero else nnx.initializers.lecun_normal()
    return nnx.Conv(c_in, c_out, kernel_size=(k, k), padding="SAME", kernel_init=init, rngs=rngs)


def avg_pool2(x: Float[Array, "B H W C"]) -> Float[Array, "B H2 W2 C"]:
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean((2, 4))


def upsample2(x: Float[Array, "B H W C"]) -> Float[Array, "B H2 W2 C"]:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ConvNormAct(nnx.Module):
    def __init__(self, c_in: int, c_out: int, *, rngs: nnx.Rngs):
        self.conv = conv(c_in, c_out, rngs=rngs)
        self.norm = _norm(c_out, rngs)

    def __call__(self, x: Float[Array, "B H W Ci"]) -> Float[Array, "B H W Co"]:
        return jax.nn.relu(self.norm(self.conv(x)))


class Down(ConvNormAct):
    def __call__(self, x: Float[Array, "B H W Ci"]) -> Float[Array, "B H2 W2 Co"]:
        return avg_pool2(super().__call__(x))


class Up(ConvNormAct):
    def __call__(self, x: Float[Array, "B H W Ci"]) -> Float[Array, "B H2 W2 Co"]:
        return super().__call__(upsample2(x))


class Res(nnx.Module):
    def __init__(self, c: int, *, rngs: nnx.Rngs):
        self.norm1, self.conv1 = _norm(c, rngs), conv(c, c, rngs=rngs)
        self.norm2, self.conv2 = _norm(c, rngs), conv(c, c, rngs=rngs, zero=True)

    def __call__(self, x: Float[Array, "B H W C"]) -> Float[Array, "B H W C"]:
        h = self.conv1(jax.nn.relu(self.norm1(x)))
        return x + self.conv2(jax.nn.relu(self.norm2(h)))


__all__ = ["ConvNormAct", "Down", "Res", "Up", "avg_pool2", "conv", "upsample2"]
