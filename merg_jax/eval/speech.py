"""Speech metrics of generated speech against reference speech: MCD, F0 RMSE/correlation, duration ratio, WER
(pocketsphinx), real-time factor, and `score_pairs`, which aggregates them over a split.

Formats: a waveform is a mono 1-D float array in [-1, 1] (int16 arrays are rescaled) with its sample rate `sr`
in Hz. Reference and generated speech may differ in length; frames are paired by DTW. Analysis is WORLD
(pyworld): F0 by Harvest (or DIO + StoneMask), spectral envelope by CheapTrick, mel-cepstrum by `pysptk.sp2mc`,
all at a 5 ms frame period.

Usage:
    scores = score_pairs([(ref_wav, gen_wav), ...], sr=16000, texts=[...])   # one dict for the split
    mc_ref, mc_gen = mel_cepstrum(ref_wav, 16000), mel_cepstrum(gen_wav, 16000)
    mcd_dtw(mc_ref, mc_gen)                                                      # dB, c0 dropped
    asr = Recognizer(); word_error_rate([text], [asr.transcribe(gen_wav, 16000)])

Why these definitions:
- MCD drops c0 (frame energy) by default, the textbook convention (Kubichek 1993; most TTS papers): loudness is
  not voice quality. ESPnet's `evaluate_mcd` keeps c0, so ESPnet-comparable numbers need `keep_c0=True`.
- `pair_scores`/`score_pairs` trim leading and trailing silence (the `duration_ratio` trim) before analysis, so
  padding neither inflates MCD (silence DTW-forced onto speech) nor deflates it (digital silence matched to
  digital silence at ~0 dB); pauses inside the utterance are kept: they are part of the speech.
- WER uses pocketsphinx's bundled US-English model: offline, deterministic, no downloads. It is a weak
  recogniser (WER 0.35-0.9 on clean espeak-ng speech, depending on the voice), so compare a model's WER with
  the WER of the reference speech on the same texts (`score_pairs` reports both), never with published
  Whisper-based WERs.
"""

from __future__ import annotations

import functools
import importlib.metadata
import math
import re
import sys
import types
from typing import Literal, Sequence, TypedDict

import numpy as np

__all__ = [
    "ASR_SAMPLE_RATE", "Recognizer", "SilentAudioError", "SpeechScores", "default_alpha", "duration_ratio",
    "dtw_path", "f0_contour", "f0_metrics", "mcd_dtw", "mel_cepstrum", "normalize_text", "pair_scores",
    "real_time_factor", "score_pairs", "speech_seconds", "trim_silence", "word_error_rate",
]

FRAME_PERIOD_MS = 5.0
F0_FLOOR, F0_CEIL = 71.0, 800.0  # WORLD's defaults: covers low male to child voices
TRIM_DB = 40.0  # below the loudest frame: removes padding and breath noise, keeps quiet word endings
SILENCE_PEAK = 1e-4  # -80 dBFS: a waveform whose peak is below this is treated as silent (nothing to analyse)
ASR_SAMPLE_RATE = 16000  # pocketsphinx's en-us acoustic model is trained on 16 kHz speech
_MCD_CONST = 10.0 / math.log(10.0)  # dB per neper: MCD = (10 / ln 10) * sqrt(2 * sum_d diff_d^2)
# The conventional all-pass constants, the best mel-scale fit at each rate (pysptk.util.mcepalpha gives 0.41 at
# 16 kHz; 0.42 is what SPTK, Merlin and ESPnet use there).
_ALPHA = {8000: 0.31, 16000: 0.42, 22050: 0.455, 24000: 0.466, 44100: 0.544, 48000: 0.554}


class SilentAudioError(ValueError):
    """A waveform is silent (peak below -80 dBFS) or has no speech left after trimming: it cannot be analysed."""


# ---------------------------------------------------------------------------------------------------- WORLD


@functools.cache
def _world():
    """(pyworld, pysptk), imported on first use.

    pyworld 0.3.5 and pysptk 1.0.1 `import pkg_resources` at import time (only for their version string and an
    example-audio path), and setuptools >= 81 no longer ships pkg_resources. When it is missing, a stand-in with
    just those two functions is put in sys.modules for the duration of the import and removed afterwards, so
    nothing else in the process sees a fake pkg_resources.
    """
    try:
        import pkg_resources  # noqa: F401
        shim = None
    except ImportError:
        shim = types.ModuleType("pkg_resources")
        shim.get_distribution = lambda name: types.SimpleNamespace(version=importlib.metadata.version(name))
        shim.resource_filename = _resource_filename
        sys.modules["pkg_resources"] = shim
    try:
        import pysptk
        import pyworld
    finally:
        if shim is not None and sys.modules.get("pkg_resources") is shim:
            del sys.modules["pkg_resources"]
    return pyworld, pysptk


def _resource_filename(package: str, resource: str) -> str:
    import importlib.resources

    return str(importlib.resources.files(package) / resource)


def _as_wave(wav: np.ndarray, what: str = "wav") -> np.ndarray:
    """float64 C-contiguous 1-D copy in [-1, 1] (what pyworld needs); int16 input is scaled by 1/32768."""
    x = np.asarray(wav)
    if x.ndim != 1:
        raise ValueError(f"{what}: expected a mono 1-D waveform, got shape {x.shape}")
    if x.size == 0:
        raise SilentAudioError(f"{what}: empty waveform")
    x = x / 32768.0 if np.issubdtype(x.dtype, np.integer) else x
    x = np.ascontiguousarray(x, dtype=np.float64)
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: waveform has NaN or inf samples")
    return x


def _check_audible(x: np.ndarray, what: str) -> None:
    if np.abs(x).max() < SILENCE_PEAK:
        raise SilentAudioError(f"{what}: silent waveform (peak {np.abs(x).max():.2e} < {SILENCE_PEAK:g})")


def default_alpha(sr: int) -> float:
    """The mel-cepstrum all-pass constant for a sample rate: 0.42 at 16 kHz, 0.455 at 22.05k, 0.466 at 24k (and
    the usual values at 8, 44.1 and 48 kHz); other rates get `pysptk.util.mcepalpha(sr)`."""
    if sr in _ALPHA:
        return _ALPHA[sr]
    return float(_world()[1].util.mcepalpha(sr))


def _f0(x: np.ndarray, sr: int, frame_period_ms: float, method: str) -> tuple[np.ndarray, np.ndarray]:
    pyworld, _ = _world()
    if method == "harvest":
        return pyworld.harvest(x, sr, f0_floor=F0_FLOOR, f0_ceil=F0_CEIL, frame_period=frame_period_ms)
    if method == "dio":
        f0, t = pyworld.dio(x, sr, f0_floor=F0_FLOOR, f0_ceil=F0_CEIL, frame_period=frame_period_ms)
        return pyworld.stonemask(x, f0, t, sr), t
    raise ValueError(f"f0 method must be 'harvest' or 'dio', got {method!r}")


def _analyse(wav: np.ndarray, sr: int, order: int, alpha: float | None, frame_period_ms: float, method: str,
             what: str) -> tuple[np.ndarray, np.ndarray]:
    """(f0 [frames] Hz, mel-cepstrum [frames, order+1]) of one waveform, from one F0 track."""
    x = _as_wave(wav, what)
    _check_audible(x, what)
    _, pysptk = _world()
    f0, t = _f0(x, sr, frame_period_ms, method)
    sp = _world()[0].cheaptrick(x, f0, t, sr, f0_floor=F0_FLOOR)
    mc = pysptk.sp2mc(sp, order, default_alpha(sr) if alpha is None else alpha)
    return f0, np.asarray(mc, np.float64)


def mel_cepstrum(wav: np.ndarray, sr: int, order: int = 23, alpha: float | None = None,
                 frame_period_ms: float = FRAME_PERIOD_MS, f0_method: Literal["harvest", "dio"] = "harvest"
                 ) -> np.ndarray:
    """Mel-cepstrum [frames, order+1] of a waveform [n]: WORLD CheapTrick envelope -> `pysptk.sp2mc`.

    frames = floor(n / sr * 1000 / frame_period_ms) + 1. Column 0 is c0 (log energy), columns 1.. the spectral
    shape. `alpha=None` picks `default_alpha(sr)`. CheapTrick needs F0: Harvest (robust, ~0.3x real time) or
    `f0_method="dio"` (DIO + StoneMask, ~20x faster, more voicing errors). Raises SilentAudioError on a silent
    waveform.
    """
    return _analyse(wav, sr, order, alpha, frame_period_ms, f0_method, "mel_cepstrum")[1]


def f0_contour(wav: np.ndarray, sr: int, frame_period_ms: float = FRAME_PERIOD_MS,
               f0_method: Literal["harvest", "dio"] = "harvest") -> np.ndarray:
    """F0 in Hz per frame [frames] (same frames as `mel_cepstrum`), 0.0 where the frame is unvoiced.

    Searched between 71 and 800 Hz (WORLD's defaults). Raises SilentAudioError on a silent waveform.
    """
    x = _as_wave(wav, "f0_contour")
    _check_audible(x, "f0_contour")
    return _f0(x, sr, frame_period_ms, f0_method)[0]


# ------------------------------------------------------------------------------------------------------ DTW


def dtw_path(ref: np.ndarray, gen: np.ndarray) -> tuple[np.ndarray, float]:
    """Classic DTW of ref [N, D] against gen [M, D] on the Euclidean frame distance.

    Steps (1,1), (1,0), (0,1), all weight 1; the path runs from (0, 0) to (N-1, M-1). Returns (path [L, 2] int
    array of (ref frame, gen frame) pairs in time order, total cost = sum of the distances along the path).
    On ties the diagonal step is preferred, then (1,0), then (0,1) (walking back from the end).

    Cost: O(N*M) memory and time, vectorised per row: within a row D[i, j] = min(B[j], D[i, j-1] + C[i, j]) with
    B[j] = C[i, j] + min(D[i-1, j-1], D[i-1, j]), whose solution is the prefix minimum
    D[i, j] = S[j] + min_{k<=j} (B[k] - S[k]) with S the running sum of C[i] (S[j] - S[k] is the cost of the
    horizontal run k+1..j), so one `np.minimum.accumulate` replaces the inner Python loop.
    """
    a, b = np.asarray(ref, np.float64), np.asarray(gen, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"dtw_path: expected [N, D] and [M, D], got {a.shape} and {b.shape}")
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        raise ValueError("dtw_path: empty sequence")
    from scipy.spatial.distance import cdist

    # cdist sums squared differences directly: a frame against itself costs exactly 0 (the Gram expansion
    # |a|^2 + |b|^2 - 2ab leaves rounding noise that can beat the tiny distances of a steady sound).
    cost = cdist(a, b, "euclidean")
    acc = np.empty((n, m))
    acc[0] = np.cumsum(cost[0])
    for i in range(1, n):
        row = cost[i]
        best_up = np.empty(m)
        best_up[0] = acc[i - 1, 0]
        best_up[1:] = np.minimum(acc[i - 1, :-1], acc[i - 1, 1:])
        run = np.cumsum(row)
        acc[i] = run + np.minimum.accumulate(row + best_up - run)
    # Backtrack from the end; a Python loop of at most N + M steps.
    i, j = n - 1, m - 1
    path = [(i, j)]
    while i > 0 or j > 0:
        if i == 0:
            j -= 1
        elif j == 0:
            i -= 1
        else:
            step = int(np.argmin((acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1])))
            i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
        path.append((i, j))
    return np.asarray(path[::-1], np.int64), float(acc[-1, -1])


def _mcd_frames(ref_mc: np.ndarray, gen_mc: np.ndarray, keep_c0: bool) -> tuple[np.ndarray, np.ndarray]:
    """(per-pair MCD in dB [L], DTW path [L, 2]) on the cepstral dims that count (c0 kept or not)."""
    ref_mc, gen_mc = np.asarray(ref_mc, np.float64), np.asarray(gen_mc, np.float64)
    if ref_mc.ndim != 2 or gen_mc.ndim != 2 or ref_mc.shape[1] != gen_mc.shape[1]:
        raise ValueError(f"mcd_dtw: expected [N, order+1] and [M, order+1], got {ref_mc.shape} and {gen_mc.shape}")
    start = 0 if keep_c0 else 1
    a, b = ref_mc[:, start:], gen_mc[:, start:]
    path, _ = dtw_path(a, b)
    diff = a[path[:, 0]] - b[path[:, 1]]
    return _MCD_CONST * np.sqrt(2.0 * (diff * diff).sum(axis=1)), path


def mcd_dtw(ref_mc: np.ndarray, gen_mc: np.ndarray, keep_c0: bool = False) -> float:
    """Mel-cepstral distortion in dB between ref [N, order+1] and gen [M, order+1] mel-cepstra.

    MCD = mean over DTW-aligned frame pairs (i, j) of (10 / ln 10) * sqrt(2 * sum_d (c_d[i] - ĉ_d[j])^2).
    c0 (energy) is dropped by default (d = 1..order), the textbook convention; ESPnet keeps it, so pass
    `keep_c0=True` for ESPnet-comparable numbers. DTW (`dtw_path`) runs on the Euclidean distance of the same
    dims, so the path is the one that minimises the summed per-frame MCD. Every frame given counts (voiced or
    not): trim silence before analysis (`pair_scores` does) rather than here, where energy is gone. The mean is
    over the path's L >= max(N, M) pairs, as ESPnet does.
    """
    return float(_mcd_frames(ref_mc, gen_mc, keep_c0)[0].mean())


# ------------------------------------------------------------------------------------------------------- F0


def _f0_stats(ref_f0: np.ndarray, gen_f0: np.ndarray, path: np.ndarray) -> dict[str, float | int]:
    r, g = ref_f0[path[:, 0]], gen_f0[path[:, 1]]
    voiced = (r > 0) & (g > 0)
    r, g = r[voiced], g[voiced]
    n = int(voiced.sum())
    rmse = float(np.sqrt(np.mean((r - g) ** 2))) if n else float("nan")
    # Pearson needs >= 2 frames and variance on both sides (a flat contour has no correlation to speak of).
    corr = float(np.corrcoef(r, g)[0, 1]) if n >= 2 and r.std() > 0 and g.std() > 0 else float("nan")
    return {"f0_rmse_hz": rmse, "f0_corr": corr, "voiced_frames": n}


def f0_metrics(ref_wav: np.ndarray, gen_wav: np.ndarray, sr: int, trim_db: float | None = TRIM_DB,
               f0_method: Literal["harvest", "dio"] = "harvest") -> dict[str, float | int]:
    """F0 RMSE (Hz) and Pearson correlation between two waveforms, over frames voiced in both.

    Frames are paired by DTW on the mel-cepstra (c1..c23, the `mcd_dtw` path), so the two F0 tracks are
    compared phone by phone even when the timing differs. Returns {"f0_rmse_hz", "f0_corr", "voiced_frames"}:
    voiced_frames counts path pairs voiced in both; rmse is NaN when there is none, corr NaN with fewer than two
    or when either contour is flat. Leading/trailing silence is trimmed first (`trim_db=None`: no trimming).
    """
    s = pair_scores(ref_wav, gen_wav, sr, trim_db=trim_db, f0_method=f0_method)
    return {k: s[k] for k in ("f0_rmse_hz", "f0_corr", "voiced_frames")}


# ------------------------------------------------------------------------------------------------- duration


def trim_silence(wav: np.ndarray, sr: int, trim_db: float = TRIM_DB) -> np.ndarray:
    """The waveform [n] without leading and trailing silence: `librosa.effects.trim(top_db=trim_db)`.

    A frame is silent when its RMS is more than trim_db below the loudest frame's; frames are 25 ms with a 10 ms
    hop (librosa's defaults, 2048/512 samples, are 128/32 ms at 16 kHz: too coarse for short replies). Raises
    SilentAudioError on a silent waveform (librosa would keep all of it: zeros are 0 dB below a zero peak).
    """
    import librosa

    x = _as_wave(wav, "trim_silence")
    _check_audible(x, "trim_silence")
    frame, hop = max(1, round(0.025 * sr)), max(1, round(0.010 * sr))
    trimmed, _ = librosa.effects.trim(x, top_db=trim_db, frame_length=frame, hop_length=hop)
    return trimmed


def speech_seconds(wav: np.ndarray, sr: int, trim_db: float = TRIM_DB) -> float:
    """Seconds of speech: the length after `trim_silence`."""
    return len(trim_silence(wav, sr, trim_db)) / sr


def duration_ratio(gen_wav: np.ndarray, ref_wav: np.ndarray, sr: int, trim_db: float = TRIM_DB) -> float:
    """Generated over reference speech duration, each after trimming leading/trailing silence (`trim_silence`).

    Note the argument order: generated first (the ratio's numerator). 1.0 is the right speaking rate, > 1
    slower than the reference. Raises SilentAudioError when either waveform is silent.
    """
    return speech_seconds(gen_wav, sr, trim_db) / speech_seconds(ref_wav, sr, trim_db)


# ------------------------------------------------------------------------------------------------ pair scores


def pair_scores(ref_wav: np.ndarray, gen_wav: np.ndarray, sr: int, trim_db: float | None = TRIM_DB,
                order: int = 23, alpha: float | None = None, keep_c0: bool = False,
                f0_method: Literal["harvest", "dio"] = "harvest") -> dict[str, float | int]:
    """Every acoustic metric of one (reference, generated) pair from one WORLD analysis and one DTW per pair.

    Both waveforms are trimmed (`trim_silence`, skipped when trim_db is None), analysed (`mel_cepstrum`,
    `f0_contour` from the same F0 track), DTW-aligned on the mel-cepstra without c0 (with c0 when keep_c0), and
    F0 compared along that path. Returns {"mcd_db", "f0_rmse_hz", "f0_corr", "voiced_frames", "ref_seconds",
    "gen_seconds"} (seconds after trimming). Raises SilentAudioError when either waveform is silent.
    """
    ref, gen = _as_wave(ref_wav, "reference"), _as_wave(gen_wav, "generated")
    if trim_db is not None:
        ref, gen = trim_silence(ref, sr, trim_db), trim_silence(gen, sr, trim_db)
    ref_f0, ref_mc = _analyse(ref, sr, order, alpha, FRAME_PERIOD_MS, f0_method, "reference")
    gen_f0, gen_mc = _analyse(gen, sr, order, alpha, FRAME_PERIOD_MS, f0_method, "generated")
    per_frame, path = _mcd_frames(ref_mc, gen_mc, keep_c0)
    return {"mcd_db": float(per_frame.mean()), **_f0_stats(ref_f0, gen_f0, path),
            "ref_seconds": len(ref) / sr, "gen_seconds": len(gen) / sr}


# ------------------------------------------------------------------------------------------------------- ASR


class Recognizer:
    """pocketsphinx's offline US-English decoder (the acoustic model, LM and CMUdict bundled in the wheel).

    Construct once and reuse: loading the model takes about a second. `transcribe(wav, sr)` takes a mono float
    waveform at any rate (resampled to 16 kHz with `scipy.signal.resample_poly`, exact rational ratio) and
    returns lower-case words separated by spaces, "" when nothing was recognised (e.g. silence). Decoding is
    deterministic, roughly 0.3x real time on one core. Not thread-safe: one Recognizer per thread.
    `decoder_kwargs` go to `pocketsphinx.Decoder` (e.g. hmm=, lm=, dict= for other models).
    """

    def __init__(self, **decoder_kwargs) -> None:
        from pocketsphinx import Decoder

        decoder_kwargs.setdefault("loglevel", "FATAL")  # pocketsphinx logs every utterance to stderr otherwise
        self._decoder = Decoder(**decoder_kwargs)

    def transcribe(self, wav: np.ndarray, sr: int) -> str:
        x = np.asarray(wav)
        if x.ndim != 1:
            raise ValueError(f"transcribe: expected a mono 1-D waveform, got shape {x.shape}")
        if x.size == 0:
            return ""
        x = _as_wave(x, "transcribe")
        if sr != ASR_SAMPLE_RATE:
            from scipy.signal import resample_poly

            g = math.gcd(int(sr), ASR_SAMPLE_RATE)
            x = resample_poly(x, ASR_SAMPLE_RATE // g, int(sr) // g)
        pcm = np.clip(np.round(x * 32767.0), -32768, 32767).astype("<i2")
        d = self._decoder
        d.start_utt()
        d.process_raw(pcm.tobytes(), no_search=False, full_utt=True)  # whole utterance: batch CMN over all of it
        d.end_utt()
        hyp = d.hyp()
        return " ".join(hyp.hypstr.split()).lower() if hyp is not None else ""


_PUNCT_RE = re.compile(r"[^\w\s']|_")


def normalize_text(text: str) -> str:
    """WER text normalisation: lower-case; apostrophes deleted ("don't" -> "dont", on both sides alike); every
    other punctuation mark becomes a space ("well-known" -> "well known"); whitespace collapsed. Numbers are
    left as they are, so "3" against a spoken "three" is an error: write references with numbers spelled out."""
    text = _PUNCT_RE.sub(" ", text.lower()).replace("'", "")
    return " ".join(text.split())


def word_error_rate(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus WER: (substitutions + deletions + insertions) / reference words, pooled over all pairs (`jiwer.wer`)
    after `normalize_text` on both sides. A share (0 = perfect; can exceed 1 with many insertions).

    An empty hypothesis counts all its reference words as deleted; an empty reference counts only the
    hypothesis' insertions. Raises ValueError when the lists differ in length or the references have no word.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"word_error_rate: {len(refs)} references but {len(hyps)} hypotheses")
    r, h = [normalize_text(t) for t in refs], [normalize_text(t) for t in hyps]
    if not any(r):
        raise ValueError("word_error_rate: the references have no words")
    import jiwer

    return float(jiwer.wer(r, h))


def real_time_factor(compute_seconds: float, audio_seconds: float) -> float:
    """Seconds of compute per second of audio produced (< 1 is faster than real time)."""
    if audio_seconds <= 0:
        raise ValueError(f"real_time_factor: audio_seconds must be > 0, got {audio_seconds}")
    return compute_seconds / audio_seconds


# ------------------------------------------------------------------------------------------------- aggregate


class SpeechScores(TypedDict):
    """What `score_pairs` returns. Means are over the `scored` pairs (NaN when none); WERs are None without
    texts."""

    mcd_db: float  # mean per-pair MCD (c0 dropped unless keep_c0)
    f0_rmse_hz: float  # mean per-pair F0 RMSE over pairs with voiced frames in common
    f0_corr: float  # mean per-pair Pearson correlation over pairs where it is defined
    duration_ratio: float  # sum of generated speech seconds / sum of reference speech seconds (after trimming)
    wer_generated: float | None  # pocketsphinx WER of the generated speech against texts, over all pairs
    wer_reference: float | None  # the same recogniser on the reference speech: the floor to compare with
    pairs: int  # pairs given
    scored: int  # pairs whose acoustic analysis succeeded
    skipped: int  # pairs whose analysis failed (e.g. silent audio): not in the acoustic means
    voiced_frames: int  # DTW pairs voiced in both, summed over scored pairs


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _transcribe_or_empty(asr: Recognizer, wav: np.ndarray, sr: int) -> str:
    # A waveform the recogniser cannot take (NaN samples, wrong shape) heard nothing: all its words are deleted.
    try:
        return asr.transcribe(wav, sr)
    except ValueError:
        return ""


def score_pairs(pairs: Sequence[tuple[np.ndarray, np.ndarray]], sr: int, recognizer: Recognizer | None = None,
                texts: Sequence[str] | None = None, **pair_kwargs) -> SpeechScores:
    """Aggregate speech scores of (reference wav, generated wav) pairs, all at sample rate sr.

    Acoustic metrics come from `pair_scores` (extra keyword arguments go to it: trim_db, keep_c0, f0_method, ...).
    A pair whose analysis fails (a silent waveform, a too-short one, a WORLD error) is skipped and counted in
    `skipped`; the batch never fails on one bad pair. With `texts` (one per pair), both sides of every pair are
    transcribed (by `recognizer`, or a fresh `Recognizer()`) and scored by `word_error_rate`; WER covers all
    pairs, skipped ones included, since a generation that is silent is a real recognition failure (all words
    deleted) that must not flatter the model.
    """
    if texts is not None and len(texts) != len(pairs):
        raise ValueError(f"score_pairs: {len(pairs)} pairs but {len(texts)} texts")
    per_pair: list[dict[str, float | int]] = []
    skipped = 0
    for ref, gen in pairs:
        try:
            per_pair.append(pair_scores(ref, gen, sr, **pair_kwargs))
        except Exception:  # noqa: BLE001 - any analysis failure of one pair is counted, not raised
            skipped += 1
    wer_gen = wer_ref = None
    if texts is not None and any(normalize_text(t) for t in texts):
        asr = recognizer if recognizer is not None else Recognizer()
        wer_gen = word_error_rate(texts, [_transcribe_or_empty(asr, gen, sr) for _, gen in pairs])
        wer_ref = word_error_rate(texts, [_transcribe_or_empty(asr, ref, sr) for ref, _ in pairs])
    ref_total = sum(float(p["ref_seconds"]) for p in per_pair)
    return SpeechScores(
        mcd_db=_nanmean([float(p["mcd_db"]) for p in per_pair]),
        f0_rmse_hz=_nanmean([float(p["f0_rmse_hz"]) for p in per_pair]),
        f0_corr=_nanmean([float(p["f0_corr"]) for p in per_pair]),
        duration_ratio=sum(float(p["gen_seconds"]) for p in per_pair) / ref_total if ref_total else float("nan"),
        wer_generated=wer_gen, wer_reference=wer_ref, pairs=len(pairs), scored=len(per_pair), skipped=skipped,
        voiced_frames=sum(int(p["voiced_frames"]) for p in per_pair),
    )
