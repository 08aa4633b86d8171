"""Audio and video features: waveform -> log-mel spectrogram, frames -> fixed-rate square RGB clips.

    log_mel(wave [T] or [T, C], sr)   -> float32 [frames, n_mels]; frames = 1 + T' // hop, T' the length at
                                         `sample_rate` (centred STFT, like librosa)
    video_frames(frames [T, H, W, 3], fps) -> uint8 [T', size, size, 3], T' = ceil(T * target_fps / fps)

`log_mel` equals `log(max(librosa.feature.melspectrogram(y=resample(wave), sr, n_fft, hop_length=hop,
n_mels, fmin, fmax, power), log_floor))` transposed — librosa's defaults: periodic Hann window, centred frames with
zero padding, Slaney mel scale and area normalisation, `soxr_hq` resampling — but is computed with numpy and soxr
only. librosa's STFT compiles numba caches on first use (~15 s per fresh environment) and importing its filters
pulls in scipy.signal and numba (~1 s per process, i.e. per grain worker); the tests hold both implementations
equal on real speech.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Feature settings shared by the data pipelines and the models that consume the features.

    Audio: `sample_rate` Hz, STFT window `n_fft` samples, `hop` samples between frames (sample_rate / hop
    frames per second; 100 by default), `n_mels` mel bands over [fmin, fmax] (fmax None: Nyquist), spectrum
    power `power` (2: power, 1: magnitude), natural log of max(mel, log_floor).
    Video: `target_fps` frames per second, `size` x `size` pixels, of the central square whose side is `crop` of
    the frame's shorter side (1: the whole square; less zooms in on a centred face).
    """

    sample_rate: int = 16000
    n_fft: int = 400
    hop: int = 160
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float | None = None
    power: float = 2.0
    log_floor: float = 1e-5
    target_fps: float = 25.0
    size: int = 96
    crop: float = 1.0

    def log_mel(self, wave: np.ndarray, sr: int) -> np.ndarray:
        """`log_mel` with this config's settings: float32 [frames, n_mels]."""
        return log_mel(wave, sr, sample_rate=self.sample_rate, n_fft=self.n_fft, hop=self.hop, n_mels=self.n_mels,
                       fmin=self.fmin, fmax=self.fmax, power=self.power, log_floor=self.log_floor)

    def video_frames(self, frames: np.ndarray, fps: float) -> np.ndarray:
        """`video_frames` with this config's settings: uint8 [T', size, size, 3]."""
        return video_frames(frames, fps, target_fps=self.target_fps, size=self.size, crop=self.crop)

    @property
    def mel_frames_per_second(self) -> float:
        return self.sample_rate / self.hop


# ----------------------------------------------------------------------------------------------------- audio


def to_float_mono(wave: np.ndarray) -> np.ndarray:
    """[T] or channels-last [T, C] samples of any dtype -> float32 mono [T] in [-1, 1].

    Integer PCM is scaled the way soundfile/libsndfile scale it: unsigned 8-bit is offset by 128, signed widths
    divided by 2**(bits-1). Channels are averaged.
    """
    wave = np.asarray(wave)
    if wave.ndim == 2:
        if wave.shape[1] > 16:
            raise ValueError(f"waveform of shape {wave.shape}: expected [T] or channels-last [T, C] (C <= 16)")
    elif wave.ndim != 1:
        raise ValueError(f"waveform of shape {wave.shape}: expected [T] or channels-last [T, C]")
    if wave.dtype == np.uint8:
        x = (wave.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(wave.dtype, np.signedinteger):
        x = wave.astype(np.float32) / float(2 ** (8 * wave.dtype.itemsize - 1))
    elif np.issubdtype(wave.dtype, np.floating):
        x = wave.astype(np.float32, copy=False)
    else:
        raise ValueError(f"waveform dtype {wave.dtype} is not audio (expected float, int or uint8 samples)")
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError("waveform contains NaN or infinite samples")
    return x


def resample(wave: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """float32 mono [T] at `sr` -> [ceil(T * target_sr / sr)] at `target_sr`, soxr "HQ" (librosa's default)."""
    if int(sr) == int(target_sr):
        return wave
    if sr <= 0:
        raise ValueError(f"sample rate must be positive, got {sr}")
    import soxr

    n_out = int(math.ceil(wave.shape[0] * float(target_sr) / sr))
    y = soxr.resample(wave, sr, target_sr, quality="soxr_hq").astype(np.float32, copy=False)
    # soxr rounds the output length; librosa pads/trims to ceil — do the same so frame counts agree.
    if y.shape[0] < n_out:
        y = np.pad(y, (0, n_out - y.shape[0]))
    return y[:n_out]


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa `htk=False`): linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, np.float64)
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0
    mel = hz / f_sp
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep, mel)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


@functools.lru_cache(maxsize=16)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """Triangular mel filters [n_mels, n_fft // 2 + 1] (float32), Slaney scale with area normalisation —
    `librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)`. Read-only array."""
    fmax = sample_rate / 2.0 if fmax is None else float(fmax)
    if not 0 <= fmin < fmax <= sample_rate / 2.0:
        raise ValueError(f"mel range must satisfy 0 <= fmin < fmax <= sample_rate/2, got [{fmin}, {fmax}]")
    fft_freqs = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]  # equal area per filter
    out = weights.astype(np.float32)
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=16)
def _hann(n: int) -> np.ndarray:
    """Periodic Hann window (scipy `get_window("hann", n, fftbins=True)`), the STFT window librosa uses."""
    w = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)
    w.setflags(write=False)
    return w


def power_spectrogram(wave: np.ndarray, n_fft: int, hop: int, power: float = 2.0) -> np.ndarray:
    """|STFT|**power of float32 mono [T]: [1 + T // hop, n_fft // 2 + 1]; centred frames, zero padding."""
    pad = n_fft // 2
    y = np.pad(wave, (pad, pad))
    frames = np.lib.stride_tricks.sliding_window_view(y, n_fft)[::hop]  # [F, n_fft], a view
    spec = np.abs(np.fft.rfft(frames * _hann(n_fft), axis=-1))
    return spec**2 if power == 2.0 else spec**power


def log_mel(wave: np.ndarray, sr: int, *, sample_rate: int = 16000, n_fft: int = 400, hop: int = 160,
            n_mels: int = 80, fmin: float = 0.0, fmax: float | None = None, power: float = 2.0,
            log_floor: float = 1e-5) -> np.ndarray:
    """Log-mel spectrogram float32 [frames, n_mels] of a waveform [T] or [T, C] (any dtype) sampled at `sr`.

    The waveform is downmixed to mono, resampled to `sample_rate`, framed every `hop` samples with a centred
    `n_fft` Hann window; frames = 1 + T' // hop where T' is the resampled length.
    """
    x = resample(to_float_mono(wave), int(sr), int(sample_rate))
    spec = power_spectrogram(x, n_fft, hop, power)  # [F, n_fft//2+1] float64
    mel = spec @ mel_filterbank(int(sample_rate), int(n_fft), int(n_mels), float(fmin),
                                None if fmax is None else float(fmax)).T.astype(np.float64)
    return np.log(np.maximum(mel, log_floor)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------- video


def frame_indices(num_frames: int, fps: float, target_fps: float) -> np.ndarray:
    """Source frame index for each output frame when resampling `num_frames` frames from `fps` to `target_fps`.

    Output frame k shows time k / target_fps; it takes the source frame whose timestamp i / fps is nearest
    (ties to the later frame). There are ceil(num_frames * target_fps / fps) output frames, i.e. every output
    time falls inside the source clip's duration. int64 [T'].
    """
    if fps <= 0 or target_fps <= 0:
        raise ValueError(f"frame rates must be positive, got fps={fps}, target_fps={target_fps}")
    if num_frames <= 0:
        return np.zeros((0,), np.int64)
    # The 1e-9 slack keeps exact ratios exact: 30 frames at 30 fps -> 25 frames at 25 fps, not 26.
    n_out = max(1, int(math.ceil(num_frames * target_fps / fps - 1e-9)))
    idx = np.floor(np.arange(n_out) * (fps / target_fps) + 0.5 + 1e-9).astype(np.int64)
    return np.minimum(idx, num_frames - 1)


def center_crop_resize(frame: np.ndarray, size: int, crop: float = 1.0) -> np.ndarray:
    """uint8 [H, W, 3] -> [size, size, 3]: the central square of side crop·min(H, W), resized with an antialiased
    bilinear (triangle) filter — no ringing/overshoot on sharp edges, unlike bicubic."""
    from PIL import Image

    if not 0.0 < crop <= 1.0:
        raise ValueError(f"crop={crop}: expected a fraction in (0, 1]")
    h, w = frame.shape[:2]
    side = max(1, int(round(min(h, w) * crop)))
    top, left = (h - side) // 2, (w - side) // 2
    square = frame[top:top + side, left:left + side]
    if side == size:
        return np.ascontiguousarray(square)
    img = Image.fromarray(np.ascontiguousarray(square))
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))


def video_frames(frames: np.ndarray, fps: float, *, target_fps: float = 25.0, size: int = 96,
                 crop: float = 1.0) -> np.ndarray:
    """uint8 RGB frames [T, H, W, 3] at `fps` -> uint8 [T', size, size, 3] at `target_fps`.

    Time: nearest-neighbour by timestamp (`frame_indices`). Space: centre square crop (`crop` of the shorter
    side), then resize to `size`.
    Grayscale [T, H, W] or RGBA [T, H, W, 4] input is converted to RGB.
    """
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=-1)
    if frames.ndim != 4 or frames.shape[-1] not in (3, 4):
        raise ValueError(f"frames of shape {frames.shape}: expected [T, H, W, 3]")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames of dtype {frames.dtype}: expected uint8")
    idx = frame_indices(frames.shape[0], float(fps), float(target_fps))
    out = np.empty((idx.shape[0], size, size, 3), np.uint8)
    for k, i in enumerate(idx):
        out[k] = center_crop_resize(frames[i, ..., :3], size, crop)
    return out
