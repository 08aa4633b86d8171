"""`merg-jax eval`'s speech figures: the speech generator against the real speech of a split's utterances.

    figures = evaluate_speech(loaded, "data/avamerg_mini", "test", limit=60)

For each of `limit` utterances with audio (a fixed, seeded sample of the split), the generator speaks the
utterance's text

- in the style of the real clip (`style_from_reference`, the usual TTS evaluation): MCD with DTW (c0 dropped), F0
  RMSE and correlation, the total duration ratio, and pocketsphinx's WER on generated speech beside its WER on the
  real speech of the same sentences (`eval.speech.score_pairs`); the MCD baseline speaks every frame as the mean
  mel-cepstrum of the training set (c0 dropped), the "mean training spectrum" that does nothing;
- in the label style of its emotion and speaker profile (`style_from_label`, speaker utterances, whose emotion is
  annotated): the speech-emotion classifier — Empatheia's own audio tower with its clip emotion head, trained on
  the training split's speaker clips — on the generated speech, with its accuracy on the real clips beside it;
  and the mean F0 by gender and by emotion of generated and real speech, and whether the data's orderings hold
  (female above male; the highest- and lowest-pitched emotions of the data keep their order);
- and the real-time factor: seconds of synthesis per second of speech, after compilation, batch 1.

`style_contrast` speaks one sentence with the happy and with the sad label style of one profile and reports the
F0 mean, F0 range (5th–95th percentile) and duration of each beside the data's happy and sad clips.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from merg_jax import labels

log = logging.getLogger(__name__)

CONTRAST_TEXT = "I heard what happened, and I want you to know that I am here for you."


def _voiced_f0(wave: np.ndarray, sr: int) -> np.ndarray:
    from merg_jax.eval.speech import f0_contour

    try:
        f0 = f0_contour(wave, sr, f0_method="dio")
    except ValueError:
        return np.zeros(0)
    return f0[f0 > 0]


def _f0_summary(waves: list[np.ndarray], sr: int) -> dict[str, float]:
    f0 = np.concatenate([_voiced_f0(w, sr) for w in waves]) if waves else np.zeros(0)
    if f0.size == 0:
        return {"f0_mean_hz": float("nan"), "f0_range_hz": float("nan")}
    return {"f0_mean_hz": float(f0.mean()), "f0_range_hz": float(np.percentile(f0, 95) - np.percentile(f0, 5))}


class EmotionClassifier:
    """Empatheia's audio tower + clip emotion head on a waveform: the 7-way emotion it hears."""

    def __init__(self, loaded):
        import jax
        from flax import nnx

        model = loaded.model
        if model.encoders.audio is None or model.encoders.audio_emotion is None:
            raise ValueError("the speech-emotion classifier needs the audio tower with its clip emotion head "
                             "(config.empatheia.clip_emotion_head=True, trained by the `encoders` stage)")
        a = loaded.config.data.audio
        self.settings = dict(sample_rate=int(a.sample_rate), n_fft=int(a.n_fft), hop=int(a.hop), n_mels=int(a.n_mels))
        self.frames = int(a.frames)
        graphdef, state = nnx.split(model)

        @jax.jit
        def logits(state, mel, n):
            m = nnx.merge(graphdef, state)
            return m.encoders.audio_emotion(m.audio_clips(mel, n).pooled)

        self._state, self._logits = state, logits

    def __call__(self, wave: np.ndarray, sr: int) -> int:
        from merg_jax.data.features import log_mel

        mel = log_mel(wave, sr, **self.settings)[: self.frames]
        x = np.zeros((1, 1, self.frames, mel.shape[1]), np.float32)
        x[0, 0, : len(mel)] = mel
        return int(np.argmax(np.asarray(self._logits(self._state, x, np.asarray([[len(mel)]], np.int32)))[0]))


def _mean_training_mc(root: str, n: int = 24) -> np.ndarray:
    from merg_jax.data.speech_corpus import read_speech, utterance_records
    from merg_jax.eval.speech import mel_cepstrum, trim_silence

    records = utterance_records(root, "train")
    pick = np.random.default_rng(0).permutation(len(records))[:n]
    frames = [mel_cepstrum(trim_silence(read_speech(records[i]["audio"], 16000), 16000), 16000, f0_method="dio")
              for i in pick]
    return np.concatenate(frames).mean(0)


def _baseline_mcd(ref: np.ndarray, sr: int, mean_mc: np.ndarray) -> float:
    from merg_jax.eval.speech import mel_cepstrum, trim_silence

    mc = mel_cepstrum(trim_silence(ref, sr), sr, f0_method="dio")
    return float(np.mean(10.0 / np.log(10.0) * np.sqrt(2.0 * np.sum((mc[:, 1:] - mean_mc[1:]) ** 2, axis=1))))


def evaluate_speech(loaded, data_root: str, split: str = "test", *, limit: int = 60,
                    emit: Callable[[str], None] | None = None) -> dict[str, Any]:
    from merg_jax.data.speech_corpus import read_speech, utterance_records
    from merg_jax.eval.speech import Recognizer, score_pairs
    from merg_jax.infer.speech import Synthesizer

    emit = emit or log.info
    synth = Synthesizer(loaded.model.speech)
    sr = synth.sample_rate
    records = utterance_records(str(data_root), split)
    pick = np.random.default_rng(0).permutation(len(records))[: max(1, int(limit))]
    records = [records[i] for i in sorted(pick)]
    synth.speak("Warm up.", np.zeros(synth.cfg.style_dim, np.float32))  # compile before timing
    pairs, texts, compute, seconds = [], [], 0.0, 0.0
    by_label: dict[str, list] = {"gen": [], "ref": []}
    for k, r in enumerate(records):
        ref = read_speech(r["audio"], sr)
        t0 = time.perf_counter()
        gen = synth.speak(r["text"], synth.style_from_mel(synth.mel(ref)))
        compute += time.perf_counter() - t0
        seconds += gen.size / sr
        pairs.append((ref, gen))
        texts.append(r["text"])
        if r["emotion7"] >= 0 and r["gender"] >= 0:
            style = synth.style_from_label(labels.EMOTIONS_7[r["emotion7"]], labels.GENDERS[r["gender"]],
                                           labels.AGES[r["age"]] if r["age"] >= 0 else None,
                                           labels.TIMBRES[r["timbre"]] if r["timbre"] >= 0 else None)
            by_label["gen"].append((r, synth.speak(r["text"], style)))
            by_label["ref"].append((r, ref))
        if (k + 1) % 20 == 0:
            emit(f"speech eval: {k + 1}/{len(records)} utterances synthesised")
    emit(f"speech eval: scoring {len(pairs)} pairs (WORLD, DTW, pocketsphinx)")
    scores = dict(score_pairs(pairs, sr, recognizer=Recognizer(), texts=texts, f0_method="dio"))
    mean_mc = _mean_training_mc(str(data_root))
    baseline = [_baseline_mcd(ref, sr, mean_mc) for ref, _ in pairs]
    out: dict[str, Any] = {**scores, "utterances": len(records), "mcd_baseline_mean_training_mc": float(np.mean(baseline)),
                           "mcd_keeps_c0": False, "real_time_factor": compute / max(seconds, 1e-9),
                           "generated_seconds": seconds}
    try:
        classify = EmotionClassifier(loaded)
    except ValueError as e:
        emit(f"speech eval: no emotion classifier ({e})")
        classify = None
    if classify is not None and by_label["gen"]:
        gold = [r["emotion7"] for r, _ in by_label["gen"]]
        out["emotion_acc_generated"] = float(np.mean([classify(w, sr) == g for (_, w), g in zip(by_label["gen"], gold)]))
        out["emotion_acc_real"] = float(np.mean([classify(w, sr) == g for (_, w), g in zip(by_label["ref"], gold)]))
        out["emotion_chance"] = 1.0 / len(labels.EMOTIONS_7)
        out["emotion_utterances"] = len(gold)
    out["f0_by_gender"] = {}
    out["f0_by_emotion"] = {}
    for side in ("gen", "ref"):
        for g, name in enumerate(labels.GENDERS):
            waves = [w for r, w in by_label[side] if r["gender"] == g]
            if waves:
                out["f0_by_gender"].setdefault(name, {})[side] = _f0_summary(waves, sr)["f0_mean_hz"]
        for e, name in enumerate(labels.EMOTIONS_7):
            waves = [w for r, w in by_label[side] if r["emotion7"] == e]
            if waves:
                out["f0_by_emotion"].setdefault(name, {})[side] = _f0_summary(waves, sr)["f0_mean_hz"]
    out["f0_order_kept"] = _orders_kept(out["f0_by_gender"], out["f0_by_emotion"])
    out["style_contrast"] = style_contrast(synth, records, sr)
    return _no_nan(out)


def _no_nan(x: Any) -> Any:
    """NaN (an undefined figure: no voiced frame, no pair) as None, so the metrics file is standard JSON."""
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, float) and x != x:
        return None
    return x


def _orders_kept(by_gender: dict, by_emotion: dict) -> dict[str, bool | None]:
    kept: dict[str, bool | None] = {"female_above_male": None, "emotion_extremes": None}
    if {"female", "male"} <= set(by_gender) and all("gen" in by_gender[g] for g in ("female", "male")):
        kept["female_above_male"] = bool(by_gender["female"]["gen"] > by_gender["male"]["gen"])
    both = {e: v for e, v in by_emotion.items() if "gen" in v and "ref" in v}
    if len(both) >= 2:
        hi = max(both, key=lambda e: both[e]["ref"])
        lo = min(both, key=lambda e: both[e]["ref"])
        kept["emotion_extremes"] = bool(both[hi]["gen"] > both[lo]["gen"])
        kept["highest_emotion"], kept["lowest_emotion"] = hi, lo
    return kept


def style_contrast(synth, records: list[dict], sr: int) -> dict[str, Any]:
    """One sentence in the happy and in the sad label style of one profile, beside the data's happy/sad clips."""
    from merg_jax.data.speech_corpus import read_speech
    from merg_jax.eval.speech import speech_seconds

    out: dict[str, Any] = {"text": CONTRAST_TEXT}
    for emotion in ("happy", "sad"):
        e = labels.EMOTIONS_7.index(emotion)
        try:
            gen = synth.speak(CONTRAST_TEXT, synth.style_from_label(emotion, "female", "young", "mid"))
        except ValueError:
            continue
        real = [read_speech(r["audio"], sr) for r in records if r["emotion7"] == e][:10]
        words = [len(r["text"].split()) for r in records if r["emotion7"] == e][:10]
        real_rate = sum(words) / max(sum(speech_seconds(w, sr) for w in real), 1e-9) if real else float("nan")
        out[emotion] = {"generated": {**_f0_summary([gen], sr),
                                      "words_per_s": len(CONTRAST_TEXT.split()) / speech_seconds(gen, sr)},
                        "data": {**_f0_summary(real, sr), "words_per_s": real_rate, "clips": len(real)}}
    return out


__all__ = ["EmotionClassifier", "evaluate_speech", "style_contrast"]
