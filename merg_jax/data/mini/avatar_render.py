"""Draws avatar frames from per-frame parameters.

A frame starts as the cached static image of the head at the frame's quarter-pixel offset over the background;
only the two crops that can change (brows down to the cheeks, and the mouth) are drawn per frame — on the
cached head layers of the offset's sub-pixel phase, all frames of a chunk at once (parameters broadcast as
[n, 1, 1]) — and pasted at the offset's whole-pixel shift.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from merg_jax.data.mini.avatar_expression import PER_FRAME_KEYS
from merg_jax.data.mini.avatar_identity import Identity, check_avatar_id
from merg_jax.data.mini.avatar_shapes import band, circle_distance, coverage, gaussian, paint, planar
from merg_jax.data.mini.avatar_static import (BROW_DOWN, BROW_TILT, BROW_UP, MOUTH_ASYM, MOUTH_CORNER, MOUTH_OPEN,
                                              PHASES, StaticLayers, base_image, head_layers, static_layers,
                                              to_uint8)

_SCLERA = np.array([0.96, 0.95, 0.93], np.float32)
_PUPIL = np.array([0.05, 0.04, 0.04], np.float32)
_LASH = np.array([0.10, 0.07, 0.07], np.float32)
_MOUTH_INSIDE = np.array([0.16, 0.04, 0.06], np.float32)
_TEETH = np.array([0.93, 0.91, 0.86], np.float32)
_BLUSH = np.array([0.92, 0.42, 0.42], np.float32)
# Frames per chunk: bounds memory at large sizes (about 30 MB of float32 per working array).
_CHUNK_PIXELS = 2_500_000


def _grid(size: int, box: tuple[int, int, int, int], p: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Head coordinates of a crop's pixel centres, x [n, 1, w] and y [n, h, 1], for heads drawn at the frames'
    sub-pixel phases p["phase_x"], p["phase_y"] (pixels, [n, 1, 1])."""
    r0, r1, c0, c1 = box
    y = ((np.arange(r0, r1) + 0.5) / size).astype(np.float32)[None, :, None] - p["phase_y"] / size
    x = ((np.arange(c0, c1) + 0.5) / size).astype(np.float32)[None, None, :] - p["phase_x"] / size
    return x, y


def _draw_upper(i: Identity, layers: StaticLayers, crop: np.ndarray, p: dict[str, np.ndarray]) -> None:
    """Cheek blush, nose wrinkles, frown lines, eyes and brows on the upper-face crop [3, n, h, w]."""
    size = layers.size
    px = 1.0 / size
    x, y = _grid(size, layers.upper, p)
    skin = np.asarray(i.skin, np.float32)
    dark = skin * 0.55
    side = np.where(x >= i.cx, 1.0, -1.0).astype(np.float32)
    # Happy cheeks.
    for s in (-1.0, 1.0):
        r2 = ((x - i.cx - s * i.eye_dx * 1.05) / 0.04) ** 2 + ((y - i.eye_y - 0.075) / 0.025) ** 2
        paint(crop, gaussian(1.5 * r2), _BLUSH, 0.22 * np.clip(p["mouth_corner"], 0, 1))
    # Disgust: wrinkles across the nose bridge.
    for k in range(3):
        yl = i.eye_y + 0.004 + 0.011 * k - 0.008 * ((x - i.cx) / 0.02) ** 2
        paint(crop, band(y, yl - 0.0022, yl + 0.0022, px) * band(x, i.cx - 0.022, i.cx + 0.022, px), dark,
              0.7 * np.clip(p["nose_wrinkle"], 0, 1))
    # Raised brows fold the forehead.
    for k in range(2):
        yl = i.eye_y - i.brow_gap - BROW_UP - 0.016 - 0.014 * k + 0.01 * ((x - i.cx) / 0.08) ** 2
        paint(crop, band(y, yl - 0.0018, yl + 0.0018, px) * band(x, i.cx - 0.075, i.cx + 0.075, px), dark,
              0.6 * np.clip((p["brow"] - 0.3) / 0.7, 0, 1))
    # Anger: vertical frown lines between the brows.
    frown = np.clip(-p["brow_tilt"], 0, 1) * np.clip(0.2 - p["brow"], 0, 1)
    for s in (-1.0, 1.0):
        xl = i.cx + s * 0.009
        cov = band(x, xl - 0.0018, xl + 0.0018, px) * band(y, i.eye_y - i.brow_gap + 0.005, i.eye_y - 0.012, px)
        paint(crop, cov, dark, 0.6 * frown)
    # Eyes: mirrored coordinates, xm > 0 towards the outer corner.
    xm = np.abs(x - i.cx) - i.eye_dx
    big_x = xm / i.eye_w
    q = np.clip(1.0 - big_x**2, 0.0, 1.0) ** 0.8
    openness = p["eye_open"] * (1.0 - p["blink"])
    lower = i.eye_hl * (1.0 - p["blink"]) * np.clip(p["eye_open"], 0.55, 1.25) ** 0.6
    centre = i.eye_y - i.eye_slant * i.eye_hu * big_x
    y_up = centre - i.eye_hu * openness * q
    y_lo = centre + lower * q
    eye = band(y, y_up, y_lo, px)
    lid_shadow = gaussian(np.maximum(y - y_up, 0) / (0.3 * i.eye_hu))
    paint(crop, eye, planar(_SCLERA, 1 - 0.35 * lid_shadow) + planar(skin * 0.6 * 0.35, lid_shadow))
    iris_r = i.eye_w * i.iris_frac
    iris_y = i.eye_y + 0.1 * i.eye_hu
    ex = i.cx + side * i.eye_dx
    d_iris = circle_distance(x, y, ex, iris_y, iris_r)
    limbus = np.clip(1.0 + d_iris / iris_r, 0, 1)  # 0 at the centre, 1 at the rim
    iris_colour = planar(i.eye_colour, 1.1 - 0.5 * limbus**3)
    paint(crop, coverage(d_iris, px) * eye, iris_colour)
    paint(crop, coverage(circle_distance(x, y, ex, iris_y, iris_r * 0.42), px) * eye, _PUPIL)
    paint(crop, coverage(circle_distance(x, y, ex - 0.35 * iris_r, iris_y - 0.35 * iris_r, iris_r * 0.22), px) * eye,
          (1.0, 1.0, 1.0), 0.85)
    lash_t = 0.0085 if i.gender == "female" else 0.0065
    in_eye_x = band(xm, -i.eye_w, i.eye_w * 1.08, px)
    paint(crop, band(y, y_up - lash_t, y_up + 0.25 * lash_t, px) * in_eye_x, _LASH, 0.95)
    paint(crop, band(y, y_lo - 0.0015, y_lo + 0.0025, px) * band(xm, -i.eye_w, i.eye_w, px), dark, 0.3)
    # Brows: s runs from -1 (inner end) to 1 (outer end); contempt lifts the brow on the raised-corner side.
    s = (np.abs(x - i.cx) - i.eye_dx - 0.005) / i.brow_len
    raise_ = p["brow"] + 0.3 * p["mouth_asym"] * side
    lift = np.where(raise_ >= 0, BROW_UP, BROW_DOWN) * raise_
    yb = i.eye_y - i.brow_gap - lift - i.brow_arch * (1 - s**2) - BROW_TILT * p["brow_tilt"] * (1 - s) / 2
    thick = i.brow_t * (1.15 - 0.35 * (s + 1) / 2) * np.sqrt(np.clip(1 - s**6, 0, 1))
    paint(crop, band(y, yb - thick / 2, yb + thick / 2, px) * band(s * i.brow_len, -i.brow_len, i.brow_len, px),
          np.asarray(i.brow_colour, np.float32), 0.95)


def _draw_mouth(i: Identity, layers: StaticLayers, crop: np.ndarray, p: dict[str, np.ndarray]) -> None:
    """Lips, the dark mouth opening and the upper teeth on the mouth crop [3, n, h, w]."""
    size = layers.size
    px = 1.0 / size
    x, y = _grid(size, layers.mouth, p)
    w = i.mouth_w * p["mouth_width"]
    big_x = (x - i.cx) / w
    q = np.clip(1.0 - big_x**2, 0.0, 1.0)
    line = i.mouth_y - MOUTH_CORNER * p["mouth_corner"] * big_x**2 \
        - MOUTH_ASYM * p["mouth_asym"] * np.maximum(big_x, 0) ** 2
    # Narrow (rounded) mouths open a little taller.
    opening = p["mouth_open"] * MOUTH_OPEN * (1.0 + 0.6 * np.clip(1.0 - p["mouth_width"], 0, 1)) * q**0.7
    y_in_top = line - 0.32 * opening
    y_in_bot = line + 0.68 * opening
    lip_q = np.sqrt(q)
    cupid = 1.0 - 0.25 * gaussian((big_x / 0.18) ** 2)
    y_out_top = y_in_top - i.lip_u * lip_q * cupid
    y_out_bot = y_in_bot + i.lip_l * lip_q
    lip = np.asarray(i.lip_colour, np.float32)
    in_x = band(x, i.cx - w, i.cx + w, px)
    paint(crop, band(y, y_out_top, y_in_top, px) * in_x, lip * 0.92)
    paint(crop, band(y, y_in_top, y_out_bot, px) * in_x, lip * 1.05)
    # The seam between the lips: a line when shut, the shadow under the upper lip when open.
    paint(crop, band(y, y_in_top - 0.0035, y_in_top + 0.0015, px) * in_x, lip * 0.6, 0.9)
    inner_x = band(x, i.cx - 0.97 * w, i.cx + 0.97 * w, px)
    paint(crop, band(y, y_in_top, y_in_bot, px) * inner_x, _MOUTH_INSIDE)
    teeth_x = band(x, i.cx - 0.75 * w, i.cx + 0.75 * w, px)
    paint(crop, band(y, y_in_top, y_in_top + 0.3 * (y_in_bot - y_in_top), px) * teeth_x, _TEETH)


def _validate(params: Mapping[str, Sequence[float]]) -> tuple[dict[str, np.ndarray], int]:
    missing = [k for k in PER_FRAME_KEYS if k not in params]
    if missing:
        raise ValueError(f"avatar params: missing per-frame keys {missing}")
    arrays = {k: np.asarray(params[k], np.float64).reshape(-1) for k in PER_FRAME_KEYS}
    lengths = {k: v.shape[0] for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"avatar params: per-frame lists differ in length: {lengths}")
    for k, v in arrays.items():
        if not np.all(np.isfinite(v)):
            raise ValueError(f"avatar params: {k} has non-finite values")
    return arrays, lengths["mouth_open"]


def _paste(out: np.ndarray, layers: StaticLayers, box: tuple[int, int, int, int], crop: np.ndarray,
           alpha: np.ndarray, shift_x: np.ndarray, shift_y: np.ndarray) -> None:
    """Composites each frame's drawn crop (premultiplied [3, n, h, w], head alpha [n, h, w]) over the background
    at its box moved by the frame's whole-pixel head shift, into uint8 frames `out` [n, S, S, 3]."""
    size = layers.size
    r0, r1, c0, c1 = box
    for t in range(out.shape[0]):
        dy, dx = int(shift_y[t]), int(shift_x[t])
        # Clip to the image (only a huge side-car offset could push a crop out of it).
        top, bottom = max(r0 + dy, 0), min(r1 + dy, size)
        left, right = max(c0 + dx, 0), min(c1 + dx, size)
        if top >= bottom or left >= right:
            continue
        src = (slice(top - r0 - dy, bottom - r0 - dy), slice(left - c0 - dx, right - c0 - dx))
        img = layers.background[:, top:bottom, left:right] * (1 - alpha[t][src]) + crop[:, t][(slice(None),) + src]
        out[t, top:bottom, left:right] = to_uint8(img)


def render_frames(avatar_id: int, params: Mapping[str, Sequence[float]], size: int = 96) -> np.ndarray:
    """Frames of avatar `avatar_id` with per-frame `params` (`PER_FRAME_KEYS`, e.g. a clip's side-car);
    uint8 [T, size, size, 3]. Deterministic: the same params always give the same pixels. Head offsets are drawn
    at the nearest 1/4 pixel (`render_clip` only produces such offsets)."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"size: {size!r} is not an integer >= 32")
    avatar_id, size = check_avatar_id(avatar_id), int(size)
    arrays, num_frames = _validate(params)
    layers = static_layers(avatar_id, size)
    out = np.empty((num_frames, size, size, 3), np.uint8)
    # Head offset in quarter pixels -> the static image at that offset (cached), plus the moving features drawn
    # at its sub-pixel phase and pasted at its whole-pixel shift.
    qx = np.round(arrays["head_dx"] * PHASES).astype(np.int64)
    qy = np.round(arrays["head_dy"] * PHASES).astype(np.int64)
    chunk = max(1, _CHUNK_PIXELS // (size * size))
    for start in range(0, num_frames, chunk):
        stop = min(start + chunk, num_frames)
        sl = slice(start, stop)
        for t in range(start, stop):
            out[t] = base_image(avatar_id, size, int(qx[t]), int(qy[t]))
        p = {k: v[sl, None, None].astype(np.float32) for k, v in arrays.items()}
        p["phase_x"] = ((qx[sl] % PHASES) / PHASES).astype(np.float32)[:, None, None]
        p["phase_y"] = ((qy[sl] % PHASES) / PHASES).astype(np.float32)[:, None, None]
        heads = [head_layers(avatar_id, size, int(a), int(b)) for a, b in zip(qx[sl] % PHASES, qy[sl] % PHASES)]
        for box, draw in ((layers.upper, _draw_upper), (layers.mouth, _draw_mouth)):
            r0, r1, c0, c1 = box
            crop = np.stack([h.back_rgb[:, r0:r1, c0:c1] for h in heads], axis=1)
            draw(layers.ident, layers, crop, p)
            crop *= 1 - np.stack([h.front_alpha[r0:r1, c0:c1] for h in heads])
            crop += np.stack([h.front_rgb[:, r0:r1, c0:c1] for h in heads], axis=1)
            alpha = np.stack([h.alpha[r0:r1, c0:c1] for h in heads])
            _paste(out[sl], layers, box, crop, alpha, qx[sl] // PHASES, qy[sl] // PHASES)
    return out


__all__ = ["render_frames"]
