"""The parts of an avatar that never move relative to the head, drawn once per (identity, size) and cached.

Layers, back to front: `back` (long hair behind the head, shoulders, neck, ears, face, nose, wrinkles, beard) then
the per-frame features (eyes, brows, mouth; `avatar_render`) then `front` (hair over the forehead, glasses). Both
are premultiplied RGBA: the head moves (head drift) over the fixed `background`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import threading

import numpy as np

from merg_jax.data.mini.avatar_identity import Identity, identity
from merg_jax.data.mini.avatar_shapes import (band, box_distance, circle_distance, coverage, ellipse_distance,
                                              gaussian, paint, paint_alpha, planar, segment_distance)

# Largest feature excursions the renderer allows (normalised units), used to size the per-frame crops and to keep
# beards and hair clear of the moving parts.
BROW_UP, BROW_DOWN, BROW_TILT = 0.034, 0.022, 0.028
MOUTH_OPEN, MOUTH_CORNER, MOUTH_ASYM = 0.095, 0.03, 0.034


@dataclasses.dataclass(frozen=True)
class StaticLayers:
    """What does not depend on the head position: the identity, the background [3, S, S] float32, and the
    (row0, row1, col0, col1) crops that hold everything that moves."""

    ident: Identity
    size: int
    background: np.ndarray
    upper: tuple[int, int, int, int]
    mouth: tuple[int, int, int, int]


@dataclasses.dataclass(frozen=True)
class HeadLayers:
    """The head's static parts at one sub-pixel offset, float32: premultiplied rgb [3, S, S] behind (`back`) and
    in front of (`front`) the moving features, the front's alpha and the whole head's alpha [S, S]."""

    back_rgb: np.ndarray
    front_rgb: np.ndarray
    front_alpha: np.ndarray
    alpha: np.ndarray

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.back_rgb, self.front_rgb, self.front_alpha, self.alpha))


def _crop(size: int, y0: float, y1: float, x0: float, x1: float) -> tuple[int, int, int, int]:
    clamp = lambda v: int(min(max(v, 0), size))  # noqa: E731
    return clamp(np.floor(y0 * size) - 1), clamp(np.ceil(y1 * size) + 1), clamp(np.floor(x0 * size) - 1), \
        clamp(np.ceil(x1 * size) + 1)


def face_distance(ident: Identity, x, y) -> np.ndarray:
    """Signed distance to the face outline: an ellipse whose lower half narrows towards the chin by `jaw`."""
    s = 1.0 - ident.jaw * np.clip((y - ident.cy) / ident.face_b, 0.0, 1.0) ** 2
    return ellipse_distance(x, y, ident.cx, ident.cy, ident.face_a * s, ident.face_b)


def _hair_shading(ident: Identity, x, y) -> np.ndarray:
    """Hair colour with soft strands, [3, S, S]."""
    strands = 0.5 + 0.5 * np.sin(90.0 * (x - ident.cx) + 8.0 * np.sin(14.0 * y + ident.hair_phase))
    shade = 0.92 + 0.08 * strands - 0.15 * np.clip((y - ident.cy) / ident.face_b, 0, 1)
    return planar(ident.hair_colour, shade)


def _draw_back(ident: Identity, x, y, px: float, rgb, alpha) -> None:
    i = ident
    hair = _hair_shading(i, x, y)
    # Hair that hangs behind the head and shoulders.
    if i.hair_style in ("long", "curly_long", "fringe", "bob"):
        bottom = i.cy + (i.face_b * 0.45 if i.hair_style == "bob" else i.face_b + 0.14)
        top = i.cy - i.face_b - 0.03
        wave = 0.012 * np.sin(45.0 * y + i.hair_phase) if i.hair_style == "curly_long" else 0.0
        half_w = i.face_a + 0.045 + 0.02 * i.hair_volume + wave
        d = box_distance(x, y, i.cx, (top + bottom) / 2, half_w, (bottom - top) / 2, radius=0.06)
        paint_alpha(rgb, alpha, coverage(d, px), hair * 0.85)
    if i.hair_style == "ponytail":
        d = ellipse_distance(x, y, i.cx + i.face_a * 0.95, i.cy + 0.02, 0.05, 0.16)
        paint_alpha(rgb, alpha, coverage(d, px), hair * 0.85)
    # Shoulders and neck.
    shirt_shade = planar(i.shirt, 1.0 - 0.25 * np.clip(y - 0.85, 0, 1))
    paint_alpha(rgb, alpha, coverage(ellipse_distance(x, y, i.cx, 1.13, 0.44, 0.25), px), shirt_shade)
    neck_w = 0.06 * i.face_a / 0.25
    neck = np.minimum(box_distance(x, y, i.cx, i.cy + i.face_b * 0.6 + 0.13, neck_w, 0.13 + i.face_b * 0.1),
                      ellipse_distance(x, y, i.cx, 0.885, neck_w + 0.03, 0.045))
    neck_colour = np.asarray(i.skin, np.float32) * 0.86
    paint_alpha(rgb, alpha, coverage(neck, px), neck_colour)
    # Shadow of the chin on the neck.
    chin_shadow = gaussian(((x - i.cx) / (neck_w * 1.2)) ** 2 + ((y - (i.cy + i.face_b)) / 0.035) ** 2)
    paint(rgb, chin_shadow * (neck < 0), neck_colour * 0.75, 0.5)
    # Ears (the face covers their inner half).
    skin = np.asarray(i.skin, np.float32)
    for side in (-1.0, 1.0):
        ex, ey = i.cx + side * i.face_a * 0.97, i.eye_y + 0.035
        paint_alpha(rgb, alpha, coverage(ellipse_distance(x, y, ex, ey, 0.028, 0.05), px), skin * 0.93)
        paint(rgb, coverage(ellipse_distance(x, y, ex + side * 0.004, ey, 0.013, 0.03), px), skin * 0.72, 0.6)
        if i.earrings:
            paint_alpha(rgb, alpha, coverage(circle_distance(x, y, ex + side * 0.004, ey + 0.058, 0.009), px),
                        (0.86, 0.72, 0.3))
    # Face, darker towards the outline and lit from the upper left.
    d_face = face_distance(i, x, y)
    r = np.sqrt(((x - i.cx) / i.face_a) ** 2 + ((y - i.cy) / i.face_b) ** 2)
    shade = 1.0 - 0.13 * np.clip((r - 0.65) / 0.35, 0, 1) ** 2 - 0.04 * (x - i.cx) / i.face_a
    paint_alpha(rgb, alpha, coverage(d_face, px), planar(skin, shade))
    inside = coverage(d_face, px)
    dark = skin * 0.62
    # Eye sockets and lid creases.
    for side in (-1.0, 1.0):
        ex = i.cx + side * i.eye_dx
        soft = gaussian(2.0 * (((x - ex) / (i.eye_w * 1.5)) ** 2 + ((y - i.eye_y + 0.004) / (i.eye_hu * 2.4)) ** 2))
        paint(rgb, soft * inside, dark, 0.14)
        xm = (x - ex) * side / (i.eye_w * 1.05)
        crease = i.eye_y - i.eye_hu * 1.75 * np.clip(1.0 - xm**2, 0, 1) ** 0.7 - 0.004
        paint(rgb, band(y, crease - 0.0025, crease + 0.0025, px) * (np.abs(xm) < 0.9), dark, 0.28)
    # Nose: bridge shadow, tip highlight, nostrils and the curve under the tip.
    paint(rgb, coverage(segment_distance(x, y, i.cx + 0.013, i.eye_y + 0.01, i.cx + 0.02, i.nose_y - 0.015, 0.004),
                        px * 3), dark, 0.18)
    paint(rgb, gaussian(((x - i.cx + 0.004) / 0.012) ** 2 + ((y - i.nose_y + 0.012) / 0.012) ** 2), (1, 1, 1), 0.12)
    for side in (-1.0, 1.0):
        d = ellipse_distance(x, y, i.cx + side * i.nose_w * 0.5, i.nose_y + 0.002, i.nose_w * 0.3, i.nose_w * 0.17)
        paint(rgb, coverage(d, px), skin * 0.42, 0.75)
    xn = (x - i.cx) / i.nose_w
    under = i.nose_y + 0.01 - 0.01 * xn**2
    paint(rgb, band(y, under - 0.002, under + 0.0025, px) * (np.abs(xn) < 0.8), dark, 0.35)
    # Wrinkles: forehead lines, nasolabial folds, bags under the eyes.
    if i.wrinkles > 0:
        for k in range(2):
            yl = i.eye_y - i.brow_gap - 0.05 - 0.022 * k + 0.012 * ((x - i.cx) / 0.09) ** 2
            paint(rgb, band(y, yl - 0.002, yl + 0.002, px) * (np.abs(x - i.cx) < 0.085), dark, 0.3 * i.wrinkles)
        for side in (-1.0, 1.0):
            fold = segment_distance(x, y, i.cx + side * i.nose_w * 1.15, i.nose_y - 0.003,
                                    i.cx + side * i.mouth_w * 1.3, i.mouth_y + 0.025, 0.0025)
            paint(rgb, coverage(fold, px), dark, 0.35 * i.wrinkles)
            xm = (x - i.cx - side * i.eye_dx) / i.eye_w
            bag = i.eye_y + i.eye_hl + 0.012 + 0.004 * xm**2
            paint(rgb, band(y, bag - 0.0018, bag + 0.0018, px) * (np.abs(xm) < 0.8), dark, 0.25 * i.wrinkles)
    if i.beard is not None:
        _draw_beard(i, x, y, px, rgb, d_face)


def _draw_beard(i: Identity, x, y, px: float, rgb, d_face) -> None:
    # The beard keeps clear of everything the lips can reach, so opening the mouth only ever replaces lip or skin.
    hole = ellipse_distance(x, y, i.cx, i.mouth_y + 0.02, i.mouth_w * 1.28, 0.066)
    colour = planar(i.hair_colour, 0.92 + 0.08 * np.sin(110.0 * x + 70.0 * y))
    moustache = np.maximum(box_distance(x, y, i.cx, i.nose_y + 0.027 + 0.012 * np.abs(x - i.cx) / i.mouth_w,
                                        i.mouth_w * 1.1, 0.011, radius=0.008), -hole - 0.004)
    if i.beard == "moustache":
        paint(rgb, coverage(moustache, px), colour, 0.95)
        return
    if i.beard == "goatee":
        chin = ellipse_distance(x, y, i.cx, i.mouth_y + 0.085, i.mouth_w * 0.8, 0.05)
        paint(rgb, coverage(np.maximum(chin, -hole), px) * coverage(d_face - 0.006, px), colour, 0.95)
        paint(rgb, coverage(moustache, px), colour, 0.95)
        return
    # Stubble and full beards cover the face below a line from under the nose down to the jaw.
    line = i.nose_y + 0.018 + 0.55 * np.abs(x - i.cx) - 0.02
    region = np.maximum(np.maximum(d_face - (0.008 if i.beard == "full" else 0.0), line - y), -hole)
    cov = coverage(region, px)
    paint(rgb, cov, colour, 0.92 if i.beard == "full" else 0.38)


def _draw_front(i: Identity, x, y, px: float, rgb, alpha) -> None:
    hair = _hair_shading(i, x, y)
    vol = i.hair_volume
    style = i.hair_style
    d_face = face_distance(i, x, y)
    # Hairline: high at the middle of the forehead, down to the temples at the sides; far enough above the brows
    # that raised brows stay visible.
    brow_top = i.eye_y - i.brow_gap - BROW_UP - i.brow_arch - i.brow_t - 0.012
    centre = {"fringe": brow_top - 0.004, "bob": brow_top - 0.025}.get(style, i.cy - i.face_b * 0.62)
    centre = min(centre, brow_top - 0.004)
    tilt = 0.035 * (x - i.cx) / i.face_a if style in ("side_part", "bob") else 0.0
    temple = i.eye_y - 0.04
    hairline = centre + tilt + (temple - centre) * np.clip(np.abs(x - i.cx) / i.face_a, 0, 1) ** 2.2
    hx, hy = i.cx, i.cy - 0.02
    ha, hb = i.face_a + 0.012 + 0.022 * vol, i.face_b + 0.012 + 0.028 * vol
    if style in ("crew", "bald"):
        ha, hb = i.face_a + 0.008, i.face_b + 0.01
    theta = np.arctan2(y - hy, x - hx)
    if style in ("curly_short", "curly_long"):
        mod = 1.0 + 0.05 * np.sin(16.0 * theta + i.hair_phase)
        d_hair = ellipse_distance(x, y, hx, hy, ha * mod, hb * mod)
    elif style == "spiky":
        saw = np.abs(((9.0 * theta / np.pi + i.hair_phase) % 2.0) - 1.0)
        mod = 1.0 + 0.09 * saw * np.clip(-np.sin(theta), 0, 1)
        d_hair = ellipse_distance(x, y, hx, hy, ha * mod, hb * mod)
    else:
        d_hair = ellipse_distance(x, y, hx, hy, ha, hb)
    cut = i.eye_y + 0.01 if style not in ("long", "curly_long", "fringe", "bob") else i.eye_y + 0.05
    cap = np.maximum(np.maximum(d_hair, np.minimum(y - hairline, -d_face)), y - cut)
    if style == "bald":
        # A fringe of hair around the sides only.
        cap = np.maximum(cap, np.maximum(i.face_a * 0.62 - np.abs(x - i.cx), (i.eye_y - 0.11) - y))
    if style == "bun":
        cap = np.minimum(cap, circle_distance(x, y, i.cx, i.cy - i.face_b - 0.035, 0.055))
    paint_alpha(rgb, alpha, coverage(cap, px), hair)
    if i.glasses is not None:
        _draw_glasses(i, x, y, px, rgb, alpha)


def _draw_glasses(i: Identity, x, y, px: float, rgb, alpha) -> None:
    t = 0.0045
    ly = i.eye_y + 0.004
    lens = np.full_like(x, np.inf)
    for side in (-1.0, 1.0):
        lx = i.cx + side * i.eye_dx
        if i.glasses == "round":
            d = circle_distance(x, y, lx, ly, i.eye_w * 1.45)
        else:
            d = box_distance(x, y, lx, ly, i.eye_w * 1.55, i.eye_w * 1.05, radius=0.012)
        lens = np.minimum(lens, d)
    paint_alpha(rgb, alpha, coverage(lens, px), (0.82, 0.9, 1.0), 0.12)
    frame = np.abs(lens) - t
    inner_x = i.eye_dx - (i.eye_w * 1.45 if i.glasses == "round" else i.eye_w * 1.55)
    frame = np.minimum(frame, segment_distance(x, y, i.cx - inner_x, ly - 0.006, i.cx + inner_x, ly - 0.006, t))
    outer_x = i.eye_dx + (i.eye_w * 1.45 if i.glasses == "round" else i.eye_w * 1.55)
    for side in (-1.0, 1.0):
        frame = np.minimum(frame, segment_distance(x, y, i.cx + side * outer_x, ly - 0.008,
                                                   i.cx + side * i.face_a * 0.98, ly - 0.012, t * 0.8))
    paint_alpha(rgb, alpha, coverage(frame, px), i.glasses_colour)


@functools.lru_cache(maxsize=256)
def static_layers(avatar_id: int, size: int) -> StaticLayers:
    """Background and feature crops of avatar `avatar_id` at `size` x `size` pixels (cached)."""
    i = identity(avatar_id)
    g = ((np.arange(size) + 0.5) / size).astype(np.float32)
    x, y = np.broadcast_to(g[None, :], (size, size)), np.broadcast_to(g[:, None], (size, size))
    top, bottom = (np.asarray(c, np.float32) for c in i.background)
    vignette = 1.0 - 0.12 * ((x - 0.5) ** 2 + (y - 0.45) ** 2)
    background = (planar(top, vignette) + planar(bottom - top, y * vignette)).astype(np.float32)
    background.setflags(write=False)
    # Crops that contain every position the moving features can take (forehead lines down to the cheeks; the
    # mouth), with a pixel to spare for the sub-pixel head phase.
    span = i.eye_dx + max(i.eye_w * 1.2, i.brow_len * 1.05 + 0.01) + 0.05
    upper = _crop(size, i.eye_y - i.brow_gap - BROW_UP - BROW_TILT - 0.06, i.eye_y + 0.14, i.cx - span, i.cx + span)
    mouth_half = i.mouth_w * 1.25
    mouth = _crop(size, i.mouth_y - MOUTH_CORNER - MOUTH_ASYM - 0.035, i.mouth_y + MOUTH_OPEN + 0.04,
                  i.cx - mouth_half, i.cx + mouth_half)
    return StaticLayers(i, size, background, upper, mouth)


# Head offsets are drawn exactly at multiples of 1 / PHASES pixel: the fractional part ("phase") selects a head
# layer drawn with that sub-pixel offset, the integer part shifts it whole. Resampling a drawn head instead would
# blur it by up to half a pixel on some frames and not others.
PHASES = 4


class _LRU:
    """Thread-safe least-recently-used cache bounded by the bytes of its values (objects with `nbytes`)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: collections.OrderedDict = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key, make):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()  # outside the lock: two threads may both draw it, and one result is kept
        with self._lock:
            if key not in self._items:
                self._items[key] = value
                self._bytes += value.nbytes
                while self._bytes > self.max_bytes and len(self._items) > 1:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= old.nbytes
            return self._items[key]


# Per process. A head layer is ~0.3 MB at 96 px and takes ~3 ms to draw, so a modest budget loses little: 64 MB holds
# all 16 phases of ~13 identities.
_heads = _LRU(64 * 2**20)
_bases = _LRU(32 * 2**20)  # ~27 kB per entry at 96 px


def head_layers(avatar_id: int, size: int, phase_x: int, phase_y: int) -> HeadLayers:
    """The back and front layers of avatar `avatar_id` at `size`, drawn with the head moved right by
    phase_x / PHASES and down by phase_y / PHASES pixels (0 <= phase < PHASES). Cached."""
    return _heads.get((int(avatar_id), int(size), int(phase_x), int(phase_y)),
                      lambda: _draw_head(int(avatar_id), int(size), int(phase_x), int(phase_y)))


def _draw_head(avatar_id: int, size: int, phase_x: int, phase_y: int) -> HeadLayers:
    i = identity(avatar_id)
    px = 1.0 / size
    g = ((np.arange(size) + 0.5) / size).astype(np.float32)
    x = np.broadcast_to(g[None, :] - np.float32(phase_x * px / PHASES), (size, size))
    y = np.broadcast_to(g[:, None] - np.float32(phase_y * px / PHASES), (size, size))
    back_rgb = np.zeros((3, size, size), np.float32)
    back_alpha = np.zeros((size, size), np.float32)
    _draw_back(i, x, y, px, back_rgb, back_alpha)
    front_rgb = np.zeros((3, size, size), np.float32)
    front_alpha = np.zeros((size, size), np.float32)
    _draw_front(i, x, y, px, front_rgb, front_alpha)
    # The moving features only ever land where the head is opaque, so they leave its total alpha as it is here.
    alpha = back_alpha * (1 - front_alpha) + front_alpha
    layers = HeadLayers(back_rgb, front_rgb, front_alpha, alpha)
    for arr in (back_rgb, front_rgb, front_alpha, alpha):
        arr.setflags(write=False)
    return layers


def base_image(avatar_id: int, size: int, qx: int, qy: int) -> np.ndarray:
    """uint8 [S, S, 3]: the static head moved by (qx, qy) / PHASES pixels (right, down) over the background,
    edges replicated (the shoulders never come loose from the bottom of the image). Cached; read-only."""
    def make() -> np.ndarray:
        layers = static_layers(int(avatar_id), int(size))
        head = head_layers(avatar_id, size, qx % PHASES, qy % PHASES)
        rgb = head.back_rgb * (1 - head.front_alpha) + head.front_rgb
        rows = np.clip(np.arange(size) - qy // PHASES, 0, size - 1)
        cols = np.clip(np.arange(size) - qx // PHASES, 0, size - 1)
        rgb, alpha = rgb[:, rows][:, :, cols], head.alpha[rows][:, cols]
        img = to_uint8(layers.background * (1 - alpha) + rgb)
        img.setflags(write=False)
        return img
    return _bases.get((int(avatar_id), int(size), int(qx), int(qy)), make)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Channel-first float [3, H, W] in [0, 1] -> channel-last uint8 [H, W, 3]."""
    return np.ascontiguousarray(np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0))


__all__ = ["BROW_DOWN", "BROW_TILT", "BROW_UP", "HeadLayers", "MOUTH_ASYM", "MOUTH_CORNER", "MOUTH_OPEN", "PHASES",
           "StaticLayers", "base_image", "face_distance", "head_layers", "static_layers", "to_uint8"]
