"""merg_jax.eval.speech: MCD and DTW against naive references written here, F0 and durations on synthetic
signals with known answers, WER on real espeak-ng speech through pocketsphinx, and score_pairs' skipping."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from avamerg_fixtures import espeak_wav
from merg_jax.eval import speech
from merg_jax.eval.speech import (Recognizer, SilentAudioError, dtw_path, duration_ratio, f0_contour, f0_metrics,
                                  mcd_dtw, mel_cepstrum, normalize_text, real_time_factor, score_pairs,
                                  word_error_rate)

SR = 16000


def harmonic(f0: float, seconds: float = 1.0, sr: int = SR, n_harmonics: int = 12) -> np.ndarray:
    """Sum of the first harmonics of f0 with 1/k amplitudes (a buzzy vowel), peak 0.5."""
    t = np.arange(int(seconds * sr)) / sr
    x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, n_harmonics + 1) if k * f0 < sr / 2)
    return 0.5 * x / np.abs(x).max()


def syllables(scale: float = 1.0, sr: int = SR) -> np.ndarray:
    """Three voiced 'syllables' (Hann-windowed 140 Hz harmonic bursts with gaps between), every time x scale:
    an exact time stretch of the envelope with the pitch unchanged. 0.9 s of sound at scale 1."""
    bursts = [(0.0, 0.25), (0.35, 0.6), (0.7, 0.9)]
    x = np.zeros(int(0.9 * scale * sr))
    for start, end in bursts:
        a, b = int(start * scale * sr), int(end * scale * sr)
        x[a:b] = harmonic(140.0, (b - a) / sr, sr)[: b - a] * np.hanning(b - a)
    return x


# ------------------------------------------------------------------------------------------------- MCD, DTW


def naive_dtw(a: np.ndarray, b: np.ndarray) -> tuple[list[tuple[int, int]], float]:
    """Textbook DTW: full accumulated-cost table by two Python loops, backtrack preferring diag, up, left."""
    n, m = len(a), len(b)
    acc = [[math.inf] * m for _ in range(n)]
    for i in range(n):
        for j in range(m):
            d = math.sqrt(sum((float(a[i, k]) - float(b[j, k])) ** 2 for k in range(a.shape[1])))
            if i == 0 and j == 0:
                acc[i][j] = d
            else:
                prev = min(acc[i - 1][j - 1] if i and j else math.inf, acc[i - 1][j] if i else math.inf,
                           acc[i][j - 1] if j else math.inf)
                acc[i][j] = d + prev
    i, j, path = n - 1, m - 1, [(n - 1, m - 1)]
    while (i, j) != (0, 0):
        options = [(acc[i - 1][j - 1] if i and j else math.inf, (i - 1, j - 1)),
                   (acc[i - 1][j] if i else math.inf, (i - 1, j)), (acc[i][j - 1] if j else math.inf, (i, j - 1))]
        best = min(v for v, _ in options)
        i, j = next(step for v, step in options if v == best)
        path.append((i, j))
    return path[::-1], acc[n - 1][m - 1]


@pytest.mark.parametrize("n,m", [(6, 9), (9, 4), (1, 5), (5, 1), (7, 7)])
def test_dtw_matches_naive_dp(n, m):
    rng = np.random.default_rng(n * 10 + m)
    a, b = rng.normal(size=(n, 3)), rng.normal(size=(m, 3))
    path, cost = dtw_path(a, b)
    ref_path, ref_cost = naive_dtw(a, b)
    assert [tuple(p) for p in path.tolist()] == ref_path
    assert cost == pytest.approx(ref_cost, rel=1e-10)


def naive_mcd(ref: np.ndarray, gen: np.ndarray, start: int = 1) -> float:
    """Per-frame MCD on frames paired one to one (t with t), averaged: the formula written out longhand."""
    total = 0.0
    for t in range(len(ref)):
        sq = sum((ref[t, d] - gen[t, d]) ** 2 for d in range(start, ref.shape[1]))
        total += 10.0 / math.log(10.0) * math.sqrt(2.0 * sq)
    return total / len(ref)


def test_mcd_formula_against_per_frame_reference():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(40, 24))  # frames ~7 apart: a 0.01 perturbation cannot pull DTW off the diagonal
    gen = ref + 0.01 * rng.normal(size=ref.shape)
    path, _ = dtw_path(ref[:, 1:], gen[:, 1:])
    np.testing.assert_array_equal(path, np.stack([np.arange(40)] * 2, axis=1))
    assert mcd_dtw(ref, gen) == pytest.approx(naive_mcd(ref, gen), rel=1e-12)
    assert mcd_dtw(ref, gen, keep_c0=True) == pytest.approx(naive_mcd(ref, gen, start=0), rel=1e-12)


def test_keep_c0_counts_an_energy_only_difference():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(30, 24))
    gen = ref.copy()
    gen[:, 0] += 0.5  # louder by 0.5 neper in c0, same spectral shape
    assert mcd_dtw(ref, gen) == 0.0
    assert mcd_dtw(ref, gen, keep_c0=True) == pytest.approx(10 / math.log(10) * math.sqrt(2) * 0.5, rel=1e-12)


def test_mcd_of_speech_with_itself_is_zero_and_shapes():
    x = syllables()
    mc = mel_cepstrum(x, SR)
    assert mc.shape == (int(len(x) / SR * 1000 / 5.0) + 1, 24)
    assert np.isfinite(mc).all()
    assert mcd_dtw(mc, mc) == 0.0
    assert speech.default_alpha(16000) == 0.42 and speech.default_alpha(22050) == 0.455
    assert speech.default_alpha(24000) == 0.466


def test_silence_cannot_be_analysed():
    with pytest.raises(SilentAudioError):
        mel_cepstrum(np.zeros(SR), SR)
    with pytest.raises(SilentAudioError):
        duration_ratio(np.zeros(SR), syllables(), SR)


# ------------------------------------------------------------------------------------------------ F0, duration


def test_f0_of_a_150_hz_harmonic_signal():
    f0 = f0_contour(harmonic(150.0), SR)
    voiced = f0[f0 > 0]
    assert len(voiced) > 0.8 * len(f0)
    assert np.median(voiced) == pytest.approx(150.0, abs=1.5)


def test_f0_rmse_of_150_against_165_hz_is_15():
    m = f0_metrics(harmonic(150.0), harmonic(165.0), SR)
    assert m["voiced_frames"] > 150
    assert m["f0_rmse_hz"] == pytest.approx(15.0, abs=1.5)
    assert math.isnan(m["f0_corr"]) or abs(m["f0_corr"]) <= 1.0  # flat contours: corr is undefined (NaN)


def test_duration_ratio_ignores_padding_and_sees_a_stretch():
    x = syllables()
    padded = np.concatenate([np.zeros(int(0.3 * SR)), x, np.zeros(int(0.5 * SR))])
    assert duration_ratio(padded, x, SR) == pytest.approx(1.0, abs=0.03)
    assert duration_ratio(syllables(1.5), x, SR) == pytest.approx(1.5, abs=0.05)
    assert duration_ratio(x, syllables(1.5), SR) == pytest.approx(1 / 1.5, abs=0.03)


def test_score_pairs_skips_a_silent_pair():
    x = syllables()
    scores = score_pairs([(x, syllables(1.2)), (np.zeros(SR), np.zeros(SR))], SR)
    assert (scores["pairs"], scores["scored"], scores["skipped"]) == (2, 1, 1)
    assert np.isfinite(scores["mcd_db"]) and scores["mcd_db"] > 0
    assert scores["duration_ratio"] == pytest.approx(1.2, abs=0.05)
    assert scores["wer_generated"] is None and scores["voiced_frames"] > 0
    empty = score_pairs([(np.zeros(SR), np.zeros(SR))], SR)
    assert empty["skipped"] == 1 and math.isnan(empty["mcd_db"]) and math.isnan(empty["duration_ratio"])


# ---------------------------------------------------------------------------------------------------- WER, RTF


def test_wer_normalisation_and_counts():
    assert normalize_text("Don't WORRY, it's well-known!  3 cats") == "dont worry its well known 3 cats"
    assert word_error_rate(["Hello, World!"], ["hello world"]) == 0.0
    assert word_error_rate(["a b c d"], ["a x c"]) == 0.5  # one substitution, one deletion, 4 words
    assert word_error_rate(["three cats", "go"], ["3 cats", ""]) == pytest.approx(2 / 3)  # numbers kept as is
    with pytest.raises(ValueError):
        word_error_rate(["a"], [])


def test_real_time_factor():
    assert real_time_factor(0.5, 2.0) == 0.25
    with pytest.raises(ValueError):
        real_time_factor(1.0, 0.0)


# Sentences pocketsphinx gets at least partly right in espeak-ng's default voice (on most espeak-ng sentences it
# gets almost nothing: corpus WER ~0.85). The test checks the plumbing (rate conversion, PCM, decoding), not ASR.
SENTENCES = ["how are you doing", "thank you very much", "that sounds wonderful"]


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    return Recognizer()


@pytest.fixture(scope="module")
def spoken(tmp_path_factory) -> list[tuple[np.ndarray, int]]:
    """SENTENCES spoken by espeak-ng, as (22.05 kHz waveform, rate): transcribe must resample them."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    import soundfile as sf

    root = tmp_path_factory.mktemp("espeak")
    out = []
    for i, text in enumerate(SENTENCES):
        x, sr = sf.read(str(espeak_wav(root / f"{i}.wav", text)), dtype="float32")
        out.append((x, sr))
    return out


def test_recognizer_transcribes_espeak_speech(recognizer, spoken):
    hyps = [recognizer.transcribe(x, sr) for x, sr in spoken]
    wer = word_error_rate(SENTENCES, hyps)
    print(f"pocketsphinx on espeak-ng: WER {wer:.3f}", list(zip(SENTENCES, hyps)))
    assert wer < 1.0
    assert len(recognizer.transcribe(np.zeros(SR), SR).split()) <= 1
    assert recognizer.transcribe(np.zeros(0), SR) == ""


def test_score_pairs_wer_of_reference_against_itself(recognizer, spoken):
    x, sr = spoken[0]
    scores = score_pairs([(x, x), (np.zeros(sr), np.zeros(sr))], sr, recognizer=recognizer,
                         texts=[SENTENCES[0], "hello"])
    assert scores["skipped"] == 1 and scores["mcd_db"] == 0.0
    assert scores["wer_generated"] == scores["wer_reference"] < 1.0
