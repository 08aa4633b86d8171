"""Media decoding and features against independent references: librosa (mel filters, melspectrogram), analytic
answers (a tone's mel band, a ramp's crop, nearest timestamps by brute force), Python's `wave` module for raw PCM,
and ffmpeg's own frame counter for durations."""

from __future__ import annotations

import math
import wave as wave_module

import imageio_ffmpeg
import numpy as np
import pytest

from avamerg_fixtures import decode_frame_index, espeak_wav, tone, write_mp4, write_wav
from merg_jax.data import media
from merg_jax.data.features import (FeatureConfig, frame_indices, log_mel, mel_filterbank, to_float_mono,
                                    video_frames)

# ----------------------------------------------------------------------------------------------- log-mel


@pytest.mark.parametrize("sr,n_fft,n_mels,fmin,fmax", [(16000, 400, 80, 0.0, None), (22050, 1024, 128, 0.0, None),
                                                       (24000, 2048, 80, 50.0, 8000.0)])
def test_mel_filterbank_equals_librosa(sr, n_fft, n_mels, fmin, fmax):
    import librosa

    ours = mel_filterbank(sr, n_fft, n_mels, fmin, fmax)
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    assert ours.shape == ref.shape == (n_mels, n_fft // 2 + 1)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-8)


@pytest.mark.slow  # the first librosa.stft in a fresh environment compiles numba caches (~15-20 s)
def test_log_mel_equals_librosa_on_real_speech(tmp_path):
    path = espeak_wav(tmp_path / "speech.wav", "I failed my driving test today, and I feel terrible about it.")
    if path is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng): no real speech to test on")
    import librosa

    wave, sr = media.read_wav(path)
    assert sr == 22050  # espeak-ng's rate: log_mel must resample

    ours = log_mel(wave, sr)
    y16 = librosa.resample(wave, orig_sr=sr, target_sr=16000)
    ref = librosa.feature.melspectrogram(y=y16, sr=16000, n_fft=400, hop_length=160, n_mels=80)
    ref = np.log(np.maximum(ref, 1e-5)).T
    assert ours.shape == ref.shape == (1 + len(y16) // 160, 80) and ours.dtype == np.float32
    assert ref.max() - ref.min() > 10  # real speech: a wide dynamic range, not a trivial signal
    np.testing.assert_allclose(ours, ref, atol=2e-3)

    # Another configuration, no resampling, magnitude spectrum, band-limited mels.
    cfg = FeatureConfig(sample_rate=22050, n_fft=1024, hop=256, n_mels=128, fmin=50.0, fmax=8000.0, power=1.0)
    ours = cfg.log_mel(wave, sr)
    ref = librosa.feature.melspectrogram(y=wave, sr=22050, n_fft=1024, hop_length=256, n_mels=128, fmin=50.0,
                                         fmax=8000.0, power=1.0)
    np.testing.assert_allclose(ours, np.log(np.maximum(ref, 1e-5)).T, atol=2e-3)


def _slaney_centre_hz(k: int, n_mels: int, fmax: float) -> float:
    """Centre of mel band k (0-based) on Slaney's scale: mel = 3f/200 below 1 kHz, 15 + 27 ln(f/1000)/ln 6.4 above."""
    mel_max = 15.0 + 27.0 * math.log(fmax / 1000.0) / math.log(6.4)
    m = mel_max * (k + 1) / (n_mels + 1)
    return 200.0 * m / 3.0 if m < 15.0 else 1000.0 * math.exp((m - 15.0) * math.log(6.4) / 27.0)


@pytest.mark.parametrize("k", [40, 55, 70])
def test_tone_lands_in_its_mel_band(k):
    f0 = _slaney_centre_hz(k, 80, 8000.0)
    feats = log_mel(tone(1.0, 16000, f0), 16000)
    assert feats.shape == (101, 80)
    inner = feats[3:-3]  # away from the zero-padded edges
    assert np.all(inner.argmax(axis=1) == k), (f0, np.bincount(inner.argmax(axis=1)))
    # Far bands hold only window leakage: at least 60 dB (ln 1e6) below the tone's band.
    far = np.r_[0:k - 8, k + 9:80]
    assert inner[:, k].min() - inner[:, far].max() > math.log(1e6)


def test_silence_and_lengths():
    cfg = FeatureConfig()
    assert cfg.mel_frames_per_second == 100
    for n in (0, 1, 159, 160, 16000, 16001):
        feats = log_mel(np.zeros(n, np.float32), 16000)
        assert feats.shape == (1 + n // 160, 80)
        np.testing.assert_array_equal(feats, np.float32(math.log(1e-5)))
    with pytest.raises(ValueError, match="channels-last"):
        log_mel(np.zeros((2, 16000), np.float32), 16000)
    with pytest.raises(ValueError, match="NaN"):
        log_mel(np.full(100, np.nan, np.float32), 16000)


def _test_signal(sr: int, seconds: float = 1.0) -> np.ndarray:
    """Four partials under a Hann envelope, defined in continuous time so any sample rate samples the same sound."""
    t = np.arange(int(round(seconds * sr))) / sr
    env = 0.5 * (1 - np.cos(2 * np.pi * t / seconds))
    parts = [(0.2, 300.0, 0.0), (0.15, 1250.0, 1.0), (0.1, 3100.0, 2.0), (0.05, 5600.0, 0.5)]
    return (env * sum(a * np.sin(2 * np.pi * f * t + p) for a, f, p in parts)).astype(np.float32)


@pytest.mark.parametrize("sr,subtype,stereo,max_err,mean_err", [
    (16000, "PCM_16", False, 0.01, 1e-3),
    (16000, "PCM_24", False, 1e-3, 1e-4),
    (16000, "PCM_32", False, 1e-3, 1e-4),
    (16000, "FLOAT", False, 1e-5, 1e-6),
    (16000, "PCM_U8", False, 0.6, 0.05),  # 8-bit quantisation noise ~-48 dB: loose, but same features
    (44100, "PCM_16", True, 0.01, 1e-3),
    (44100, "PCM_U8", True, 0.6, 0.05),
    (8000, "PCM_16", False, None, None),  # below 16 kHz: bands under 4 kHz only (checked separately)
])
def test_encodings_and_rates_give_the_same_features(tmp_path, sr, subtype, stereo, max_err, mean_err):
    ref = log_mel(_test_signal(16000), 16000)  # the 16 kHz mono float original
    x = _test_signal(sr)
    if stereo:  # channels differ; their mean is the signal
        d = 0.1 * np.sin(2 * np.pi * 700.0 * np.arange(len(x)) / sr).astype(np.float32)
        x = np.stack([x + d, x - d], axis=1)
    path = write_wav(tmp_path / "x.wav", 1.0, sr=sr, subtype=subtype, signal=x)
    wave, got_sr = media.read_wav(path)
    assert got_sr == sr and wave.ndim == 1
    feats = log_mel(wave, got_sr)
    assert feats.shape == ref.shape
    loud = ref > ref.max() - math.log(1e4)  # bins within 40 dB of the peak carry the signal
    if max_err is None:
        low = loud.copy()
        low[:, 55:] = False  # mel band 55 starts ~3.6 kHz; an 8 kHz file holds nothing above 4 kHz
        assert np.abs(feats - ref)[low].max() < 0.05
        return
    err = np.abs(feats - ref)[loud]
    assert err.max() < max_err and err.mean() < mean_err, (err.max(), err.mean())


def test_integer_samples_scale_like_libsndfile(tmp_path):
    """to_float_mono on raw stereo PCM bytes (read with Python's wave module) equals soundfile's float decoding,
    downmixed; log_mel takes the raw integer array directly."""
    left, right = tone(0.1, 16000, 330.0), tone(0.1, 16000, 1000.0) * 0.5
    for subtype, dtype in (("PCM_U8", np.uint8), ("PCM_16", np.int16), ("PCM_32", np.int32)):
        path = write_wav(tmp_path / f"{subtype}.wav", 0.1, subtype=subtype, signal=np.stack([left, right], 1))
        with wave_module.open(str(path)) as w:
            raw = np.frombuffer(w.readframes(w.getnframes()), dtype).reshape(-1, w.getnchannels())
        decoded, _ = media.read_wav(path)
        np.testing.assert_allclose(to_float_mono(raw), decoded, atol=1e-7)
        np.testing.assert_allclose(log_mel(raw, 16000), log_mel(decoded, 16000), atol=1e-4)


# ----------------------------------------------------------------------------------------------- media files


@pytest.mark.parametrize("subtype,atol", [("PCM_U8", 1 / 100), ("PCM_16", 1e-4), ("PCM_24", 1e-6),
                                          ("PCM_32", 1e-7), ("FLOAT", 0), ("DOUBLE", 1e-7)])
def test_read_wav_decodes_every_sample_format(tmp_path, subtype, atol):
    path = write_wav(tmp_path / "t.wav", 0.25, sr=16000, channels=1, subtype=subtype, freq=330.0)
    wave, sr = media.read_wav(path)
    assert sr == 16000 and wave.dtype == np.float32 and wave.shape == (4000,)
    np.testing.assert_allclose(wave, tone(0.25, 16000, 330.0), atol=atol)
    assert media.media_duration(path) == 0.25


def test_media_duration_agrees_with_ffmpeg_frame_count(tmp_path):
    clips = [write_mp4(tmp_path / "a.mp4", 0.2, fps=25), write_mp4(tmp_path / "b.mp4", 1.0, fps=30, size=(320, 240))]
    # moov before mdat ("faststart") and a non-mp4 container (ffmpeg header fallback).
    for name, params in (("c.mp4", ["-movflags", "+faststart"]), ("d.mkv", [])):
        writer = imageio_ffmpeg.write_frames(str(tmp_path / name), (64, 48), fps=25, macro_block_size=2,
                                             output_params=params, ffmpeg_log_level="error")
        writer.send(None)
        for _ in range(12):
            writer.send(np.zeros((48, 64, 3), np.uint8).tobytes())
        writer.close()
        clips.append(tmp_path / name)
    for path in clips:
        nframes, secs = imageio_ffmpeg.count_frames_and_secs(str(path))
        frames, fps = media.read_video(path)
        assert frames.shape[0] == nframes
        assert media.media_duration(path) == pytest.approx(nframes / fps, abs=0.011), path.name


def test_media_errors_name_the_file(tmp_path):
    cases = {"missing.wav": (None, "missing"), "empty.mp4": (b"", "empty"), "empty.wav": (b"", "empty"),
             "junk.wav": (b"RIFF\x00\x00junk" * 10, "unreadable"), "junk.mp4": (b"\x00\x00\x00\x08junk" * 10,
                                                                                  "unreadable")}
    for name, (content, kind) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        readers = [media.media_duration, media.read_wav if name.endswith(".wav") else media.read_video]
        for read in readers:
            with pytest.raises(media.MediaError) as e:
                read(path)
            assert e.value.kind == kind and e.value.path == str(path) and str(path) in str(e.value), (name, read)
    with pytest.raises(media.MediaError, match="not a regular file"):
        media.read_wav(tmp_path)


# ----------------------------------------------------------------------------------------------- video


def _nearest_brute_force(num_frames: int, fps: float, target_fps: float) -> list[int]:
    out, k = [], 0
    while k / target_fps < num_frames / fps - 1e-9:
        t = k / target_fps
        dist = [abs(i / fps - t) for i in range(num_frames)]
        best = min(dist)
        out.append(max(i for i, d in enumerate(dist) if d <= best + 1e-9))  # ties: the later frame
        k += 1
    return out


@pytest.mark.parametrize("num_frames,fps,target", [(30, 30, 25), (31, 30, 25), (25, 25, 25), (10, 10, 25),
                                                   (60, 50, 25), (48, 24, 25), (90, 29.97, 25), (7, 25, 12.5)])
def test_frame_indices_are_nearest_timestamps(num_frames, fps, target):
    assert frame_indices(num_frames, fps, target).tolist() == _nearest_brute_force(num_frames, fps, target)


def test_video_frames_on_a_30fps_320x240_clip(tmp_path):
    path = write_mp4(tmp_path / "clip.mp4", 1.0, fps=30, size=(320, 240))  # frame i painted frame_colour(i)
    frames, fps = media.read_video(path)
    assert (frames.shape, fps) == ((30, 240, 320, 3), 30.0)
    out = video_frames(frames, fps, target_fps=25, size=96)
    assert out.shape == (25, 96, 96, 3) and out.dtype == np.uint8
    picked = [decode_frame_index(f) for f in out]
    # Output frame k shows t = k/25 s; the nearest 30 fps frame is round(1.2 k): every sixth source frame is skipped.
    assert picked == [0, 1, 2, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19, 20, 22, 23, 24, 25, 26, 28, 29]
    np.testing.assert_array_equal(out, FeatureConfig().video_frames(frames, fps))


@pytest.mark.parametrize("height,width", [(240, 320), (320, 240)])
def test_video_frames_crop_centre_square(height, width):
    """Bars outside the central square vanish; the ramps inside map linearly onto the output pixels."""
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    y, x = np.mgrid[0:height, 0:width]
    frame = np.zeros((height, width, 3), np.uint8)
    frame[..., 0] = np.clip(x - left, 0, 255)  # red: column within the square
    frame[..., 1] = np.clip(y - top, 0, 255)  # green: row within the square
    inside = (x >= left) & (x < left + side) & (y >= top) & (y < top + side)
    frame[..., 2] = np.where(inside, 0, 255)  # blue bars outside the square
    out = video_frames(frame[None], 30.0, size=96)[0].astype(np.float64)
    assert out.shape == (96, 96, 3)
    assert out[..., 2].max() == 0
    centres = (np.arange(96) + 0.5) * side / 96 - 0.5  # source coordinate of each output pixel centre
    inner = slice(2, 94)  # the filter support is clipped at the borders
    np.testing.assert_allclose(out[inner, inner, 0], np.broadcast_to(centres[inner], (92, 92)), atol=0.51)
    np.testing.assert_allclose(out[inner, inner, 1], np.broadcast_to(centres[inner, None], (92, 92)), atol=0.51)


def test_video_frames_other_inputs():
    square = np.random.default_rng(0).integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    np.testing.assert_array_equal(video_frames(square, 25), square)  # same rate and size: untouched
    gray = np.full((5, 48, 64), 200, np.uint8)
    out = video_frames(gray, 25, size=96)  # upscaling, grayscale -> RGB
    assert out.shape == (5, 96, 96, 3) and np.all(out == 200)
    assert video_frames(np.zeros((0, 8, 8, 3), np.uint8), 25).shape == (0, 96, 96, 3)
    with pytest.raises(ValueError, match="uint8"):
        video_frames(np.zeros((1, 8, 8, 3), np.float32), 25)
