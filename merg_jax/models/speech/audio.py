"""Spectral features in JAX: the STFT, the log-mel the speech generator reads and writes, and the inverse STFT its
vocoder ends with. They equal `merg_jax.data.features` (numpy, librosa-compatible) frame for frame.

    spec = stft(wave, n_fft, hop)                 # [B, 1 + S // hop, n_fft // 2 + 1] complex64, centred frames
    mel = log_mel(wave, cfg)                      # [B, F, n_mels] float32: log(max(|S|·M, 1e-5))
    wave = istft(spec, n_fft, hop, length)        # [B, length]: overlap-add, Hann window, 'centre' trimmed
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import librosa
import numpy as np
from jaxtyping import Array, Complex, Float

LOG_FLOOR = 1e-5


@functools.lru_cache(maxsize=16)
def hann(n: int) -> np.ndarray:
    """Periodic Hann window (scipy.signal.get_window('hann', n), as librosa and torch.stft use)."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)


@functools.lru_cache(maxsize=16)
def mel_basis(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Slaney mel filters `[n_fft // 2 + 1, n_mels]` (librosa's, transposed for `spec @ basis`)."""
    return librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax).T.astype(np.float32)


def stft(wave: Float[Array, "B S"], n_fft: int, hop: int) -> Complex[Array, "B F K"]:
    """Centred STFT (zero padding of n_fft // 2 each side), F = 1 + S // hop frames, K = n_fft // 2 + 1 bins."""
    pad = n_fft // 2
    x = jnp.pad(wave.astype(jnp.float32), ((0, 0), (pad, pad)))
    frames = 1 + wave.shape[1] // hop
    idx = jnp.arange(frames)[:, None] * hop + jnp.arange(n_fft)[None]
    return jnp.fft.rfft(x[:, idx] * hann(n_fft), axis=-1)


def mel_from_magnitude(mag: Float[Array, "B F K"], cfg) -> Float[Array, "B F M"]:
    basis = mel_basis(cfg.sample_rate, cfg.n_fft, cfg.n_mels, float(cfg.fmin), float(cfg.fmax))
    return jnp.log(jnp.maximum(jnp.einsum("bfk,km->bfm", mag, basis), LOG_FLOOR))


def log_mel(wave: Float[Array, "B S"], cfg) -> Float[Array, "B F M"]:
    """The speech generator's feature: log of the magnitude mel spectrogram (`cfg`: a `SpeechConfig`)."""
    return mel_from_magnitude(jnp.abs(stft(wave, cfg.n_fft, cfg.hop)), cfg)


def istft(spec: Complex[Array, "B F K"], n_fft: int, hop: int, length: int) -> Float[Array, "B S"]:
    """Inverse of `stft`: windowed overlap-add of the frames' inverse FFTs, divided by the summed squared window,
    with the centring padding cut off; `length` samples. Needs n_fft to be a multiple of hop."""
    b, f, _ = spec.shape
    r = n_fft // hop
    win = jnp.asarray(hann(n_fft))
    frames = jnp.fft.irfft(spec, n=n_fft, axis=-1).astype(jnp.float32) * win  # [B, F, n_fft]
    # Frame t covers hop-blocks t .. t + r - 1 of the padded signal: add each of its r blocks at its offset.
    blocks = frames.reshape(b, f, r, hop)
    out = jnp.zeros((b, f + r - 1, hop), jnp.float32)
    env = jnp.zeros((f + r - 1, hop), jnp.float32)
    wsq = (win * win).reshape(r, hop)
    for k in range(r):
        out = out.at[:, k:k + f].add(blocks[:, :, k])
        env = env.at[k:k + f].add(wsq[k])
    y = (out / jnp.maximum(env, 1e-8)).reshape(b, (f + r - 1) * hop)
    pad = n_fft // 2
    y = y[:, pad:pad + length]
    return jnp.pad(y, ((0, 0), (0, max(0, length - y.shape[1]))))


def multi_resolution_stft_loss(pred: Float[Array, "B S"], target: Float[Array, "B S"],
                               resolutions=((512, 128), (1024, 256), (256, 64))) -> Float[Array, ""]:
    """Spectral convergence + log-magnitude L1, averaged over STFT resolutions (Parallel WaveGAN's loss)."""
    total = 0.0
    for n_fft, hop in resolutions:
        p = jnp.abs(stft(pred, n_fft, hop)) + 1e-7
        t = jnp.abs(stft(target, n_fft, hop)) + 1e-7
        sc = jnp.linalg.norm(t - p) / jnp.maximum(jnp.linalg.norm(t), 1e-7)
        mag = jnp.mean(jnp.abs(jnp.log(t) - jnp.log(p)))
        total = total + sc + mag
    return total / len(resolutions)
