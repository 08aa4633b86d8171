"""Dense motion from keypoints: where each pixel of the driving frame comes from in the source, and what the source
cannot show (occlusion).

    flow, occlusion = DenseMotion(cfg, rngs=rngs)(source, kp_source, kp_driving, code_change)
    # source [B, S, S, 3]; kp_* [B, K, 2]; code_change [B, E] (driving − source expression code, optional)
    # → flow [B, m, m, 2] (a backward flow: source coordinates per driving pixel, x then y in [-1, 1]),
    #   occlusion [B, m, m, 1] in (0, 1) (1: the source shows it), m = motion_size

FOMM without jacobians: each keypoint k proposes a translation z ↦ z − kp_driving_k + kp_source_k, the background
proposes the identity; a small U-Net reads the source deformed by every proposal and the keypoints' Gaussian
heatmap differences, and mixes the K + 1 proposals per pixel with a softmax.

The expression code moves pixels too: a brow that rises or tilts, an eye that widens, a mouth corner that drops is
a displacement of a few pixels that no keypoint follows (the keypoints sit where the head moves). Each code number
e has a displacement field D_e (read by the same U-Net from the source, plus a learned map per number: where a
brow is depends on the face), and the flow adds code_flow · tanh(Σ_e Δcode_e · D_e), linear in the code change
for small changes. Warping the source's own brow is sharp even when the code is only roughly right; painting it
(the generator's rgb) under an L1 loss regresses to the median, which is the unmoved brow. With no code change the
flow is the keypoints' alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from merg_jax.models.face.blocks2d import ConvNormAct, Down, Up, conv
from merg_jax.models.face.config import FaceConfig
from merg_jax.models.face.warp import coordinate_grid, gaussian_heatmaps, grid_sample, resize


def sparse_motions(kp_source: Float[Array, "B K 2"], kp_driving: Float[Array, "B K 2"], m: int
                   ) -> Float[Array, "B K1 m m 2"]:
    """The K + 1 proposals: identity (background), then z − kp_driving_k + kp_source_k."""
    grid = coordinate_grid(m, m)[None, None]
    shift = (kp_source - kp_driving)[:, :, None, None, :]
    b = kp_source.shape[0]
    return jnp.concatenate([jnp.broadcast_to(grid, (b, 1, m, m, 2)), grid + shift], axis=1)


class DenseMotion(nnx.Module):
    def __init__(self, cfg: FaceConfig, *, hidden: int = 32, rngs: nnx.Rngs):
        self.cfg = cfg
        k1 = cfg.num_keypoints + 1
        self.stem = ConvNormAct(k1 * 4, hidden, rngs=rngs)
        self.down1 = Down(hidden, 2 * hidden, rngs=rngs)
        self.down2 = Down(2 * hidden, 2 * hidden, rngs=rngs)
        self.up2 = Up(2 * hidden, 2 * hidden, rngs=rngs)
        self.up1 = Up(4 * hidden, hidden, rngs=rngs)
        self.mask = conv(2 * hidden, k1, 3, rngs=rngs)
        self.occlusion = conv(2 * hidden, 1, 3, rngs=rngs)
        e = cfg.expression_dim if cfg.code_flow > 0 else 0
        self.code_fields = conv(2 * hidden, 2 * e, 3, rngs=rngs, zero=True) if e else None
        m = cfg.motion_size
        self.code_maps = nnx.Param(jnp.zeros((m, m, e, 2), jnp.float32)) if e else None

    def __call__(self, source: Float[Array, "B S S 3"], kp_source: Float[Array, "B K 2"],
                 kp_driving: Float[Array, "B K 2"], code_change: Float[Array, "B E"] | None = None
                 ) -> tuple[Float[Array, "B m m 2"], Float[Array, "B m m 1"]]:
        cfg = self.cfg
        m, k1 = cfg.motion_size, cfg.num_keypoints + 1
        b = source.shape[0]
        small = resize(source, m, m)
        motions = sparse_motions(kp_source, kp_driving, m)  # [B, K1, m, m, 2]
        deformed = grid_sample(jnp.repeat(small, k1, axis=0), motions.reshape(b * k1, m, m, 2))
        deformed = deformed.reshape(b, k1, m, m, 3).transpose(0, 2, 3, 1, 4).reshape(b, m, m, k1 * 3)
        heat = (gaussian_heatmaps(kp_driving, m, m, cfg.kp_variance)
                - gaussian_heatmaps(kp_source, m, m, cfg.kp_variance))
        heat = jnp.concatenate([jnp.zeros_like(heat[..., :1]), heat], axis=-1)  # [B, m, m, K1]
        x0 = self.stem(jnp.concatenate([heat, deformed - 0.5], axis=-1))
        x1 = self.down1(x0)
        x = self.up2(self.down2(x1))
        x = self.up1(jnp.concatenate([x, x1], axis=-1))
        x = jnp.concatenate([x, x0], axis=-1)
        mask = jax.nn.softmax(self.mask(x).astype(jnp.float32), axis=-1)  # [B, m, m, K1]
        flow = jnp.einsum("bhwk,bkhwc->bhwc", mask, motions)
        if self.code_fields is not None and code_change is not None:
            fields = self.code_fields(x).astype(jnp.float32).reshape(b, m, m, -1, 2) + self.code_maps[...]
            shift = jnp.einsum("be,bhwec->bhwc", code_change.astype(jnp.float32), fields)
            flow = flow + cfg.code_flow * jnp.tanh(shift)
        return flow, jax.nn.sigmoid(self.occlusion(x).astype(jnp.float32))


__all__ = ["DenseMotion", "sparse_motions"]
