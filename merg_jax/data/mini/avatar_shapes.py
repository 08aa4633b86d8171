"""Anti-aliased 2-D shape coverage in numpy, for the procedural avatar.

All coordinates are normalised (the image spans [0, 1]); `px` is one pixel (1 / size). Two kinds of primitive:
- blobs by a signed distance d (negative inside): coverage = clip(0.5 - d / px, 0, 1), a one-pixel ramp;
  ellipses use the first-order distance f / |∇f| of their implicit function, exact enough for a ramp.
- bands between two curves y_top(x) <= y <= y_bot(x) (lips, lids, brows): the exact overlap of the interval with
  the pixel's vertical extent, so a band thinner than a pixel gets proportionally faint instead of a half-covered
  line, and a zero-height band (a shut mouth) draws nothing.
Everything broadcasts, so one call draws a shape on a stack of frames with per-frame parameters.
"""

from __future__ import annotations

import numpy as np


def coverage(d: np.ndarray, px: float) -> np.ndarray:
    """Pixel coverage in [0, 1] of the region d < 0, d a signed distance in normalised units."""
    return np.clip(0.5 - d / px, 0.0, 1.0)


def ellipse_distance(x, y, cx, cy, a, b) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse (centre cx, cy; half axes a, b)."""
    dx, dy = x - cx, y - cy
    r = np.sqrt((dx / a) ** 2 + (dy / b) ** 2)
    grad = np.sqrt((dx / (a * a)) ** 2 + (dy / (b * b)) ** 2) / np.maximum(r, 1e-9)
    return (r - 1.0) / np.maximum(grad, 1e-9)


def circle_distance(x, y, cx, cy, r) -> np.ndarray:
    return np.sqrt((x - cx) ** 2 + (y - cy) ** 2) - r


def box_distance(x, y, cx, cy, hx, hy, radius: float = 0.0) -> np.ndarray:
    """Exact signed distance to a box (half sizes hx, hy) with corners rounded by `radius`."""
    qx = np.abs(x - cx) - (hx - radius)
    qy = np.abs(y - cy) - (hy - radius)
    outside = np.sqrt(np.maximum(qx, 0.0) ** 2 + np.maximum(qy, 0.0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0.0) - radius


def segment_distance(x, y, x0, y0, x1, y1, r) -> np.ndarray:
    """Signed distance to the capsule around segment (x0, y0)-(x1, y1) of radius r."""
    vx, vy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * vx + (y - y0) * vy) / (vx * vx + vy * vy), 0.0, 1.0)
    return np.sqrt((x - x0 - t * vx) ** 2 + (y - y0 - t * vy) ** 2) - r


def band(v, lo, hi, px: float) -> np.ndarray:
    """Fraction of the pixel [v - px/2, v + px/2] inside [lo, hi] (0 where hi <= lo)."""
    return np.clip(np.minimum(v + 0.5 * px, hi) - np.maximum(v - 0.5 * px, lo), 0.0, px) / px


def gaussian(r2: np.ndarray) -> np.ndarray:
    """exp(-r2), cut at exp(-30): float32 exp underflows into subnormal numbers, and arithmetic on subnormals
    runs many times slower on x86."""
    return np.exp(-np.minimum(r2, 30.0))


def planar(colour, shade=1.0) -> np.ndarray:
    """Colour [3] times a per-pixel shade [...] as a channel-first image [3, ...] (float32)."""
    shade = np.asarray(shade, np.float32)
    return np.asarray(colour, np.float32).reshape((3,) + (1,) * shade.ndim) * shade


def paint(rgb: np.ndarray, cov: np.ndarray, colour, opacity: float | np.ndarray = 1.0) -> None:
    """In place: rgb = rgb * (1 - c) + colour * c with c = cov * opacity. Channel-first: rgb [3, ...], cov
    broadcastable to rgb[0], colour 3 numbers or [3, ...]. (Channel-last [..., 3] would make numpy's innermost
    loop 3 elements long, several times slower.)"""
    c = np.asarray(cov * opacity, np.float32)
    keep = 1.0 - c
    colour = np.asarray(colour, np.float32)
    for k in range(3):
        rgb[k] *= keep
        rgb[k] += c * colour[k]


def paint_alpha(rgb: np.ndarray, alpha: np.ndarray, cov: np.ndarray, colour, opacity: float = 1.0) -> None:
    """`paint` on a premultiplied RGBA layer (rgb [3, ...] premultiplied, alpha [...]), updating alpha too."""
    c = cov * opacity
    paint(rgb, c, colour)
    alpha *= 1.0 - c
    alpha += c


__all__ = ["band", "box_distance", "circle_distance", "coverage", "ellipse_distance", "gaussian", "paint", "paint_alpha",
           "planar", "segment_distance"]
