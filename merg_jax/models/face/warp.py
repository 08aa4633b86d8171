"""Image-space geometry for the renderer: coordinate grids, bilinear sampling, keypoint heatmaps, resizing.

Coordinates are (x, y) in [-1, 1] with -1 the centre of the first pixel and 1 the centre of the last
(`align_corners=True` in PyTorch's terms), so the same keypoint means the same place at every resolution.
Images are channels last: `[B, H, W, C]`.

    grid = coordinate_grid(h, w)                      # [H, W, 2]
    out = grid_sample(image, grid_b)                  # image [B, H, W, C], grid_b [B, Ho, Wo, 2] → [B, Ho, Wo, C]
    heat = gaussian_heatmaps(kp, h, w, variance)      # kp [B, K, 2] → [B, H, W, K]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def coordinate_grid(h: int, w: int) -> Float[Array, "H W 2"]:
    """The (x, y) coordinates of every pixel centre of an h×w image."""
    x = jnp.linspace(-1.0, 1.0, w) if w > 1 else jnp.zeros(1)
    y = jnp.linspace(-1.0, 1.0, h) if h > 1 else jnp.zeros(1)
    return jnp.stack(jnp.meshgrid(x, y, indexing="xy"), axis=-1)


def grid_sample(image: Float[Array, "B H W C"], grid: Float[Array, "B Ho Wo 2"]) -> Float[Array, "B Ho Wo C"]:
    """Bilinear sampling of `image` at `grid` (x, y in [-1, 1]); points outside the image read zeros, as
    PyTorch's `grid_sample(..., padding_mode="zeros", align_corners=True)`. Differentiable in both arguments."""
    b, h, w, c = image.shape
    x = (grid[..., 0] + 1.0) * 0.5 * (w - 1)
    y = (grid[..., 1] + 1.0) * 0.5 * (h - 1)
    x0, y0 = jnp.floor(x), jnp.floor(y)
    flat = image.reshape(b, h * w, c)
    out = 0.0
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            wgt = (1.0 - jnp.abs(x - xi)) * (1.0 - jnp.abs(y - yi))
            inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
            idx = (jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)).astype(jnp.int32)
            vals = jnp.take_along_axis(flat, idx.reshape(b, -1, 1), axis=1).reshape(*idx.shape, c)
            out = out + vals * jnp.where(inside, wgt, 0.0)[..., None]
    return out


def gaussian_heatmaps(kp: Float[Array, "B K 2"], h: int, w: int, variance: float) -> Float[Array, "B H W K"]:
    """exp(-|z - kp_k|² / (2·variance)) at every pixel z of an h×w grid."""
    grid = coordinate_grid(h, w)
    d2 = jnp.sum(jnp.square(grid[None, :, :, None, :] - kp[:, None, None, :, :]), axis=-1)
    return jnp.exp(-0.5 * d2 / variance)


def resize(x: Float[Array, "B H W C"], h: int, w: int) -> Float[Array, "B h w C"]:
    """Bilinear resize of an image (antialiased when shrinking: jax.image.resize)."""
    if x.shape[1:3] == (h, w):
        return x
    return jax.image.resize(x, (x.shape[0], h, w, x.shape[-1]), method="linear")


def resize_field(x: Float[Array, "B H W C"], h: int, w: int) -> Float[Array, "B h w C"]:
    """Bilinear resize of a field on the pixel grid (a flow of coordinates, a mask) with the corners kept in place
    (the coordinate convention above): the identity flow stays the identity at every size."""
    if x.shape[1:3] == (h, w):
        return x
    grid = jnp.broadcast_to(coordinate_grid(h, w), (x.shape[0], h, w, 2))
    return grid_sample(x, grid)


def warp(image: Float[Array, "B H W C"], flow: Float[Array, "B h w 2"]) -> Float[Array, "B H W C"]:
    """`image` sampled at a backward flow (for each output pixel, where in `image` to read), the flow given at any
    resolution and resized to the image's (`resize_field`)."""
    return grid_sample(image, resize_field(flow, image.shape[1], image.shape[2]))


__all__ = ["coordinate_grid", "gaussian_heatmaps", "grid_sample", "resize", "resize_field", "warp"]
