"""Speech → mouth opening: the per-video-frame loudness envelope that drives the avatar's lips."""

from __future__ import annotations

import numpy as np

# Below this RMS (about -80 dBFS) a clip counts as silent.
_SILENT_RMS = 1e-4
# Envelope values under this fraction of the reference loudness are breath / room noise: the mouth stays shut.
_GATE = 0.1


def mouth_envelope(wave: np.ndarray, sr: int, fps: int, num_frames: int) -> np.ndarray:
    """Mouth opening per video frame, float32 [num_frames] in [0, 1].

    Frame k covers [k / fps, (k + 1) / fps) s; its value is the RMS of `wave` over a window 1.5 frames wide
    centred there, smoothed over 3 frames, divided by the 90th percentile of the clearly voiced frames (those
    above a tenth of the loudest, so a short utterance in a long silence still reaches ~1), noise-gated at 10 %
    and slightly compressed (power 0.7) so quiet syllables still move the lips. Frames past the audio are 0.

    wave: float [T] mono samples (any scale); sr: its sample rate; fps: video frame rate.
    """
    w = np.asarray(wave, np.float64)
    if w.ndim != 1:
        raise ValueError(f"wave: expected a mono 1-D waveform, got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("wave: contains non-finite samples")
    for name, value in (("sr", sr), ("fps", fps)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name}: {value!r} is not a positive integer")
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 0:
        raise ValueError(f"num_frames: {num_frames!r} is not a non-negative integer")
    if num_frames == 0:
        return np.zeros(0, np.float32)
    energy = np.concatenate([[0.0], np.cumsum(w * w)])
    centre = (np.arange(num_frames) + 0.5) * sr / fps
    half = 0.75 * sr / fps
    lo = np.clip(np.round(centre - half).astype(np.int64), 0, w.shape[0])
    hi = np.clip(np.round(centre + half).astype(np.int64), 0, w.shape[0])
    rms = np.sqrt(np.maximum(energy[hi] - energy[lo], 0.0) / np.maximum(hi - lo, 1))
    rms = np.where(hi > lo, rms, 0.0)
    padded = np.pad(rms, 1, mode="edge")
    rms = 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]
    loudest = rms.max()
    if loudest < _SILENT_RMS:
        return np.zeros(num_frames, np.float32)
    reference = np.percentile(rms[rms >= 0.1 * loudest], 90)
    env = np.clip(rms / reference, 0.0, 1.0)
    env = np.clip((env - _GATE) / (1.0 - _GATE), 0.0, 1.0) ** 0.7
    return env.astype(np.float32)


__all__ = ["mouth_envelope"]
