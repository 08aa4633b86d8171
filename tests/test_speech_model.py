"""The speech generator's parts against independent references: the JAX features against the numpy/librosa ones,
the length regulator against np.repeat, the encoders' determinism and shapes, a training loop that overfits, the
style table's back-off, and synthesis (pieces joined without clicks, clear errors)."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from merg_jax.data.features import log_mel as np_log_mel
from merg_jax.infer.speech import FADE_S, SpeechError, Synthesizer, join_pieces
from merg_jax.models.speech.audio import istft, log_mel, stft
from merg_jax.models.speech.config import SpeechConfig
from merg_jax.models.speech.generator import SpeechGenerator
from merg_jax.models.speech.length_regulator import expand
from merg_jax.speech_symbols import num_symbols

TINY = SpeechConfig(dim=16, content_dim=8, content_layers=1, style_dim=8, style_layers=2, prosody_layers=1,
                    decoder_layers=1, vocoder_dim=16, vocoder_layers=1, max_tokens=32, max_frames=96,
                    symbols="characters", n_mels=40)


def _wave(seconds=1.0, sr=16000, f0=140.0, seed=0):
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t))
    return (0.2 * x + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def test_log_mel_equals_the_numpy_feature_and_istft_inverts_stft():
    w = _wave()
    ours = np.asarray(log_mel(jnp.asarray(w)[None], TINY))[0]
    ref = np_log_mel(w, 16000, sample_rate=16000, n_fft=TINY.n_fft, hop=TINY.hop, n_mels=TINY.n_mels,
                     fmin=TINY.fmin, fmax=TINY.fmax, power=1.0, log_floor=1e-5)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=2e-3)
    n = (w.size // TINY.hop) * TINY.hop
    back = np.asarray(istft(stft(jnp.asarray(w[:n])[None], TINY.n_fft, TINY.hop), TINY.n_fft, TINY.hop, n))[0]
    np.testing.assert_allclose(back, w[:n], atol=1e-4)


def test_length_regulator_equals_np_repeat():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    d = np.array([[1, 3, 0, 2, 4], [2, 2, 2, 0, 0]], np.int32)
    out, n = expand(jnp.asarray(x), jnp.asarray(d), 12)
    for b in range(2):
        ref = np.repeat(x[b], d[b], axis=0)
        assert int(n[b]) == len(ref)
        np.testing.assert_array_equal(np.asarray(out[b, :len(ref)]), ref)
        assert not np.any(np.asarray(out[b, len(ref):]))


def test_content_and_style_encoders_are_deterministic_shaped_and_ignore_padding():
    gen = SpeechGenerator(TINY, num_symbols(), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    ids = rng.integers(2, num_symbols(), (2, 32)).astype(np.int32)
    lengths = np.array([20, 32], np.int32)
    c1 = np.asarray(gen.content(ids, lengths))
    assert c1.shape == (2, 32, TINY.content_dim)
    assert not np.any(c1[0, 20:]) and np.all(np.abs(c1[0, :20]).sum(-1) > 0)
    ids2 = ids.copy()
    ids2[0, 20:] = 5  # other padding
    np.testing.assert_array_equal(np.asarray(gen.content(ids2, lengths)), c1)
    mel = rng.standard_normal((2, 96, TINY.n_mels)).astype(np.float32) - 4
    mel_len = np.array([50, 96], np.int32)
    s1 = np.asarray(gen.style(mel, mel_len))
    assert s1.shape == (2, TINY.style_dim)
    mel2 = mel.copy()
    mel2[0, 50:] = 7.0
    np.testing.assert_allclose(np.asarray(gen.style(mel2, mel_len)), s1, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(gen.style(mel, mel_len)), s1)


def _batch(cfg: SpeechConfig, seed=0):
    """Two real utterances: harmonic 'speech' at two pitches, symbols of two short texts."""
    from merg_jax.data.speech_corpus import SpeechSpec, mel_and_f0
    from merg_jax.data.speech_text import TextFrontEnd

    spec = SpeechSpec(sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, hop=cfg.hop, n_mels=cfg.n_mels, fmin=cfg.fmin,
                      fmax=cfg.fmax, symbols="characters", max_tokens=cfg.max_tokens, max_frames=cfg.max_frames,
                      segment_frames=cfg.vocoder_segment)
    batch = spec.empty(2)
    front = TextFrontEnd("characters")
    for i, (text, f0) in enumerate([("hello there", 120.0), ("so sad today", 220.0)]):
        w = _wave(1.2, f0=f0, seed=seed + i)
        mel, f = mel_and_f0(w, spec)
        ids = front.encode(text)
        batch["symbols"][i, :len(ids)], batch["symbols_len"][i] = ids, len(ids)
        batch["mel"][i, :len(mel)], batch["mel_len"][i], batch["f0"][i, :len(f)] = mel, len(mel), f
        batch["wave_segment"][i] = w[:spec.segment_samples]
    return {k: v for k, v in batch.items() if k != "sample_index"}


def test_the_speech_loss_trains_every_part():
    gen = SpeechGenerator(TINY, num_symbols(), rngs=nnx.Rngs(0))
    batch = _batch(TINY)
    assert np.mean(batch["f0"][0][batch["f0"][0] > 0]) == pytest.approx(120, rel=0.05)  # WORLD heard the pitch
    graphdef, params, rest = nnx.split(gen, nnx.Param, ...)
    tx = optax.adam(3e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt):
        (loss, m), g = jax.value_and_grad(lambda p: nnx.merge(graphdef, p, rest).losses(batch), has_aux=True)(params)
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), opt, m, g

    first = None
    for i in range(40):
        params, opt, m, g = step(params, opt)
        if first is None:
            first = {k: float(v) for k, v in m.items()}
        if i == 2:  # (at step 0 the style path is closed: the adaptive norms start at the identity, adaLN-zero)
            dead = [p for p, v in nnx.to_flat_state(g) if not np.any(np.asarray(v.get_value()))]
            assert not dead, dead  # every parameter gets a gradient
    last = {k: float(v) for k, v in m.items()}
    for k in ("prior_loss", "mel_loss", "vocoder_stft_loss", "f0_loss", "duration_loss"):
        assert last[k] < first[k], (k, first[k], last[k])


def test_style_table_backs_off_to_what_was_seen():
    gen = SpeechGenerator(TINY, num_symbols(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="no style statistics"):
        gen.style_for(0)
    s = np.eye(TINY.style_dim, dtype=np.float32)[:3]
    gen.add_style_statistics(s, {"emotion7": np.array([1, 1, 2]), "gender": np.array([0, 1, 0]),
                                 "age": np.array([1, 1, 1]), "timbre": np.array([0, 0, -1])})  # row 3: unknown
    np.testing.assert_allclose(gen.style_for(1, 0, 1, 0), s[0])
    np.testing.assert_allclose(gen.style_for(1), (s[0] + s[1]) / 2)
    np.testing.assert_allclose(gen.style_for(1, 1, 3, 2), s[1])  # unseen age/timbre: back off to (happy, female)
    np.testing.assert_allclose(gen.style_for(2), (s[0] + s[1]) / 2)  # emotion 2 only in the skipped row


def test_synthesis_of_long_text_and_clear_errors(tmp_path):
    gen = SpeechGenerator(TINY, num_symbols(), rngs=nnx.Rngs(0))
    synth = Synthesizer(gen)
    style = np.zeros(TINY.style_dim, np.float32)
    text = " ".join(["This is a sentence that goes on."] * 6)
    wave = synth.speak(text, style)
    assert wave.dtype == np.float32 and wave.size > 6 * TINY.hop and np.all(np.isfinite(wave))
    with pytest.raises(SpeechError, match="empty text"):
        synth.speak("   ", style)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a wav")
    with pytest.raises(SpeechError, match="bad.wav"):
        synth.style_from_reference(str(bad))
    with pytest.raises(SpeechError, match="--emotion"):
        synth.style_from_label("elated")
    content = np.asarray(gen.content(np.ones((1, 10), np.int32) * 20, np.array([10], np.int32)))[0]
    assert synth.speak_content(content, style).size > 0


def test_pieces_join_without_clicks():
    sr = 16000
    pieces = [np.full(4000, 0.8, np.float32), np.full(3000, -0.7, np.float32)]
    out = join_pieces(pieces, sr)
    fade = int(FADE_S * sr)
    assert np.max(np.abs(np.diff(out))) <= 0.8 * np.pi / fade + 1e-6  # the steepest step is the fade's
    assert out[0] == 0 and abs(out[3999]) < 0.01 and out.size == 7000 + int(0.12 * sr)


def test_griffin_lim_fallback_rebuilds_a_spectrum():
    """Griffin-Lim from a real utterance's log-mel gives back a waveform whose log-mel is close to it."""
    w = _wave(0.8)
    mel = np.asarray(log_mel(jnp.asarray(w)[None], TINY))[0]
    from merg_jax.infer.speech import griffin_lim

    back = griffin_lim(mel, TINY, n_iter=32)
    assert back.shape == ((mel.shape[0] - 1) * TINY.hop,)
    again = np.asarray(log_mel(jnp.asarray(back)[None], TINY))[0]
    loud = mel > np.percentile(mel, 50)  # where there is energy
    assert np.mean(np.abs(again - mel)[loud]) < 0.5
