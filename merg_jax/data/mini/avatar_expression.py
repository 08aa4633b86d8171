"""Emotion → facial expression, and the per-frame parameters of one clip (expression, mouth, blinks, head drift).

A clip's parameters are a dict of equal-length per-frame lists (the side-car's content); `avatar_render` draws
frames from exactly these numbers, so a side-car re-renders its clip bit for bit.

Per-frame keys (floats):
  mouth_open    0..1, the `mouth` input itself (lip opening)
  mouth_corner  corner lift, + up (happy) / - down (sad)
  mouth_asym    one-sided corner lift (contempt), + raises the image-right corner
  mouth_width   relative mouth width (1 = the identity's rest width)
  brow          brow height, + raised (surprised) / - lowered (angry)
  brow_tilt     inner-end lift, + inner raised (sad, fear) / - inner lowered (angry)
  eye_open      lid opening before blinks (1 = rest; > 1 wide, < 1 narrowed)
  blink         0 = open .. 1 = shut; the drawn opening is eye_open * (1 - blink)
  nose_wrinkle  0..1 (disgust)
  head_dx, head_dy  head offset in pixels of this clip's size (+ right, + down), multiples of 1/4
"""

from __future__ import annotations

import math

import numpy as np

from merg_jax.data import labels
from merg_jax.data.mini.avatar_identity import check_avatar_id

NEUTRAL = "neutral"
EMOTIONS: tuple[str, ...] = labels.EMOTIONS_7 + (NEUTRAL,)

# Expression targets (FACS-flavoured): brow, brow_tilt, eye_open, mouth_corner, mouth_asym, mouth_width, wrinkle.
_EXPRESSION_KEYS = ("brow", "brow_tilt", "eye_open", "mouth_corner", "mouth_asym", "mouth_width", "nose_wrinkle")
EXPRESSIONS: dict[str, dict[str, float]] = {
    name: dict(zip(_EXPRESSION_KEYS, values)) for name, values in {
        NEUTRAL: (0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0),
        "happy": (0.15, 0.0, 0.7, 1.0, 0.0, 1.12, 0.0),        # AU6+12: cheeks up (narrower eyes), corners up
        "sad": (-0.1, 1.0, 0.75, -0.9, 0.0, 0.95, 0.0),        # AU1+4+15: inner brows up, corners down
        "angry": (-1.0, -1.0, 1.08, -0.3, 0.0, 0.85, 0.0),     # AU4+5+23: brows down and in, glaring, lips pressed
        "surprised": (1.0, 0.0, 1.5, 0.0, 0.0, 0.8, 0.0),      # AU1+2+5: brows up, eyes wide, rounded lips
        "fear": (0.3, 1.25, 1.3, -0.8, 0.0, 1.18, 0.0),        # AU1+2+4+5+20: inner brows up, lips stretched
        "contempt": (0.1, 0.0, 0.8, 0.0, 1.0, 1.0, 0.0),       # AU14 one side
        "disgusted": (-0.35, 0.0, 0.5, -0.7, 0.0, 0.92, 1.0),  # AU9+10: nose wrinkle, narrowed eyes
    }.items()
}

# The 32 EmpatheticDialogues labels → the nearest multimodal emotion (the labels module's MULTIMODAL_TO_ED pairs
# first, so "joyful" → happy, "afraid" → fear, "annoyed" → contempt).
ED_TO_EXPRESSION: dict[str, str] = {
    "surprised": "surprised", "excited": "happy", "annoyed": "contempt", "proud": "happy", "angry": "angry",
    "sad": "sad", "grateful": "happy", "lonely": "sad", "impressed": "surprised", "afraid": "fear",
    "disgusted": "disgusted", "confident": "happy", "terrified": "fear", "hopeful": "happy", "anxious": "fear",
    "disappointed": "sad", "joyful": "happy", "prepared": "happy", "guilty": "sad", "furious": "angry",
    "nostalgic": "sad", "jealous": "contempt", "anticipating": "happy", "embarrassed": "sad", "content": "happy",
    "devastated": "sad", "sentimental": "sad", "caring": "happy", "trusting": "happy", "ashamed": "sad",
    "apprehensive": "fear", "faithful": "happy",
}
_ALIASES = {"disgust": "disgusted", "surprise": "surprised", "afraid": "fear", "fearful": "fear", "anger": "angry",
            "joy": "happy", "sadness": "sad"}

PER_FRAME_KEYS: tuple[str, ...] = ("mouth_open",) + _EXPRESSION_KEYS + ("blink", "head_dx", "head_dy")


def canonical_emotion(emotion: str) -> str:
    """One of `EMOTIONS` for a 7-way, neutral, EmpatheticDialogues (32) or common alias label (any case)."""
    if not isinstance(emotion, str):
        raise ValueError(f"emotion: {emotion!r} is not a string")
    key = emotion.strip().lower()
    if key in EXPRESSIONS:
        return key
    if key in ED_TO_EXPRESSION:
        return ED_TO_EXPRESSION[key]
    if key in _ALIASES:
        return _ALIASES[key]
    raise ValueError(f"emotion: {emotion!r} is not one of {list(EMOTIONS)} nor an EmpatheticDialogues label")


def _smooth_noise(rng: np.random.Generator, t: np.ndarray, freqs: tuple[float, float]) -> np.ndarray:
    """Sum of 3 sinusoids with random frequencies in `freqs` (Hz) and phases, scaled to peak |1|; [T]."""
    out = np.zeros_like(t)
    for _ in range(3):
        f = freqs[0] + (freqs[1] - freqs[0]) * rng.random()
        out += (0.5 + rng.random()) * np.sin(2 * math.pi * f * t + 2 * math.pi * rng.random())
    return out / 3.0


def _moving_average(x: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average over `width` frames, shrinking at the ends; same length as `x`."""
    c = np.concatenate([[0.0], np.cumsum(x)])
    i = np.arange(x.shape[0])
    lo = np.clip(i - width // 2, 0, x.shape[0])
    hi = np.clip(i - width // 2 + width, 0, x.shape[0])
    return (c[hi] - c[lo]) / np.maximum(hi - lo, 1)


def blink_track(rng: np.random.Generator, num_frames: int, fps: int) -> np.ndarray:
    """Blink closure per frame [T] in [0, 1]: a blink every 2.5-5 s (the first within 0.3-3 s), 0.12-0.16 s long
    (3-4 frames at 25 fps), closing to 1 at its middle frame(s)."""
    out = np.zeros(num_frames)
    t = 0.3 + 2.7 * rng.random()
    while True:
        start = int(round(t * fps))
        n = max(2, int(round((0.12 + 0.04 * rng.random()) * fps)))
        if start >= num_frames:
            return out
        k = np.arange(n)
        shape = np.sin(math.pi * (k + 1) / (n + 1)) ** 0.5
        shape = shape / shape.max()
        end = min(start + n, num_frames)
        out[start:end] = shape[: end - start]
        t += (n / fps) + 2.5 + 2.5 * rng.random()


def clip_params(avatar_id: int, emotion: str, mouth: np.ndarray, *, fps: int, size: int, seed: int) -> dict:
    """Per-frame parameters of a clip (the side-car): `PER_FRAME_KEYS` lists of T floats, plus avatar_id, emotion
    (canonical), fps, size, seed, num_frames.

    Expression intensity drifts slowly (80-100 %, seeded by seed, avatar_id and emotion) and the brows lift a
    little while speaking; blinks and the head's low-frequency drift (up to ~2 px at 96 px, scaled with size) are
    seeded by (seed, avatar_id) alone, so one avatar's clips with one seed differ only in expression and mouth.
    """
    avatar_id = check_avatar_id(avatar_id)
    name = canonical_emotion(emotion)
    if isinstance(fps, bool) or not isinstance(fps, (int, np.integer)) or fps <= 0:
        raise ValueError(f"fps: {fps!r} is not a positive integer")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"size: {size!r} is not an integer >= 32")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed: {seed!r} is not an integer")
    m = np.asarray(mouth, dtype=np.float64)
    if m.ndim != 1:
        raise ValueError(f"mouth: expected a 1-D per-frame array, got shape {m.shape}")
    if not np.all(np.isfinite(m)) or (m.size and (m.min() < -1e-6 or m.max() > 1 + 1e-6)):
        raise ValueError("mouth: values must be finite and in [0, 1]")
    m = np.clip(m, 0.0, 1.0)
    num_frames = m.shape[0]
    # Independent streams: blinks and head drift depend on (seed, avatar_id) only, so clips of one avatar with one
    # seed differ only in expression and mouth; and each stream's draws do not depend on the clip length.
    def stream(*tags: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([int(seed) % 2**64, int(avatar_id), *tags]))

    t = np.arange(num_frames) / fps
    target = EXPRESSIONS[name]
    intensity = np.clip(0.925 + 0.075 * _smooth_noise(stream(0xE, EMOTIONS.index(name)), t, (0.05, 0.25)), 0.8, 1.0)
    # Speakers lift their brows on stressed stretches: a ~0.3 s moving average of the mouth opening.
    width = max(1, int(round(0.3 * fps)))
    speaking = _moving_average(m, width)
    params: dict[str, np.ndarray] = {"mouth_open": m}
    for key in _EXPRESSION_KEYS:
        rest = EXPRESSIONS[NEUTRAL][key]
        params[key] = rest + (target[key] - rest) * intensity
    params["brow"] = params["brow"] + 0.15 * speaking
    params["blink"] = blink_track(stream(0xB), num_frames, fps)
    # Head drift in pixels, on the renderer's quarter-pixel grid so the side-car holds the offsets drawn.
    scale = size / 96.0
    head = stream(0xD)
    params["head_dx"] = np.round(4 * 1.2 * scale * _smooth_noise(head, t, (0.1, 0.45))) / 4
    params["head_dy"] = np.round(4 * 0.8 * scale * _smooth_noise(head, t, (0.1, 0.45))) / 4
    # Round once so the side-car's decimal numbers are exactly what is drawn.
    out: dict = {k: [round(float(v), 5) for v in params[k]] for k in PER_FRAME_KEYS}
    out.update(avatar_id=int(avatar_id), emotion=name, fps=int(fps), size=int(size), seed=int(seed),
               num_frames=int(num_frames))
    return out


def neutral_params(num_frames: int = 1) -> dict[str, list[float]]:
    """Rest pose: neutral expression, mouth closed, eyes open, no head offset."""
    rest = {"mouth_open": 0.0, **EXPRESSIONS[NEUTRAL], "blink": 0.0, "head_dx": 0.0, "head_dy": 0.0}
    return {k: [float(rest[k])] * num_frames for k in PER_FRAME_KEYS}


__all__ = ["ED_TO_EXPRESSION", "EMOTIONS", "EXPRESSIONS", "NEUTRAL", "PER_FRAME_KEYS", "blink_track",
           "canonical_emotion", "clip_params", "neutral_params"]
