"""Image losses of the renderer, in JAX: SSIM (Gaussian 11×11, σ 1.5 — the same as `merg_jax.eval.video.ssim`),
a multi-scale L1 pyramid, and the keypoints' equivariance under random affine warps.

    ssim_map(a, b)                       # [B, H, W, C] in [0, 1] → [B, H-10, W-10] (valid windows, channel mean)
    pyramid_l1(pred, target, weight)     # mean |pred - target| at full, 1/2 and 1/4 resolution
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from merg_jax.models.face.blocks2d import avg_pool2
from merg_jax.models.face.warp import coordinate_grid, grid_sample


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return (g / g.sum()).astype(np.float32)


def _blur(x: Float[Array, "N H W"]) -> Float[Array, "N h w"]:
    """Valid separable Gaussian filtering (11 taps each way)."""
    g = jnp.asarray(_gaussian_1d())
    x = x[:, None]  # [N, 1, H, W]
    dn = ("NCHW", "OIHW", "NCHW")
    x = jax.lax.conv_general_dilated(x, g.reshape(1, 1, 11, 1), (1, 1), "VALID", dimension_numbers=dn)
    x = jax.lax.conv_general_dilated(x, g.reshape(1, 1, 1, 11), (1, 1), "VALID", dimension_numbers=dn)
    return x[:, 0]


def ssim_map(a: Float[Array, "B H W C"], b: Float[Array, "B H W C"], data_range: float = 1.0
             ) -> Float[Array, "B h w"]:
    """Per-window SSIM (skimage's `gaussian_weights=True, sigma=1.5, use_sample_covariance=False`), averaged over
    channels; only windows wholly inside the image (skimage crops the same 5-pixel border for its mean)."""
    bsz, h, w, c = a.shape
    x = a.transpose(0, 3, 1, 2).reshape(bsz * c, h, w).astype(jnp.float32)
    y = b.transpose(0, 3, 1, 2).reshape(bsz * c, h, w).astype(jnp.float32)
    mx, my = _blur(x), _blur(y)
    vx = _blur(x * x) - mx * mx
    vy = _blur(y * y) - my * my
    cxy = _blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.reshape(bsz, c, *s.shape[1:]).mean(1)


def pyramid_l1(pred: Float[Array, "B H W C"], target: Float[Array, "B H W C"],
               weight: Float[Array, "B H W 1"] | None = None, levels: int = 3) -> Float[Array, ""]:
    """Mean over levels of the (weighted) mean absolute error at 1, 1/2, 1/4 … resolution."""
    total = 0.0
    for i in range(levels):
        err = jnp.abs(pred - target)
        total = total + (jnp.mean(err * weight) / jnp.mean(weight) if weight is not None else jnp.mean(err))
        if i + 1 < levels:
            pred, target = avg_pool2(pred), avg_pool2(target)
            weight = avg_pool2(weight) if weight is not None else None
    return total / levels


def random_affine(key: jax.Array, n: int, *, rotate: float = 0.1, scale: float = 0.1, shift: float = 0.1
                  ) -> Float[Array, "n 2 3"]:
    """Small random affine maps z ↦ A z + t of the [-1, 1] square (radians, relative scale, coordinates)."""
    k1, k2, k3 = jax.random.split(key, 3)
    angle = jax.random.uniform(k1, (n,), minval=-rotate, maxval=rotate)
    s = 1.0 + jax.random.uniform(k2, (n,), minval=-scale, maxval=scale)
    t = jax.random.uniform(k3, (n, 2), minval=-shift, maxval=shift)
    cos, sin = jnp.cos(angle) * s, jnp.sin(angle) * s
    a = jnp.stack([jnp.stack([cos, -sin], -1), jnp.stack([sin, cos], -1)], 1)
    return jnp.concatenate([a, t[:, :, None]], axis=-1)


def apply_affine(affine: Float[Array, "n 2 3"], points: Float[Array, "n ... 2"]) -> Float[Array, "n ... 2"]:
    shape = points.shape
    p = points.reshape(shape[0], -1, 2)
    out = jnp.einsum("nij,npj->npi", affine[:, :, :2], p) + affine[:, None, :, 2]
    return out.reshape(shape)


def affine_warp_images(images: Float[Array, "n H W C"], affine: Float[Array, "n 2 3"]) -> Float[Array, "n H W C"]:
    """T(x)(z) = x(A z + t): the image a keypoint at p moves to A⁻¹(p − t) in."""
    grid = coordinate_grid(images.shape[1], images.shape[2])
    grid = jnp.broadcast_to(grid, (images.shape[0], *grid.shape))
    return grid_sample(images, apply_affine(affine, grid))


__all__ = ["affine_warp_images", "apply_affine", "pyramid_l1", "random_affine", "ssim_map"]
