"""The speech generator's training data: every utterance of a split that has audio, one per batch row.

    it = make_speech_iterator(config, "train")     # a DataIterator (get_state / set_state, skipped samples counted)
    batch = next(it)   # SPEECH_KEYS: symbols [B, max_tokens] int32 + symbols_len, mel [B, max_frames, n_mels] +
                       # mel_len, f0 [B, max_frames] (Hz, 0 unvoiced), wave_segment [B, segment·hop] float32,
                       # emotion7 / gender / age / timbre [B] (-1 unknown), sample_index [B] (-1: padding row)

The utterances are the speaker's and the listener's turns, voiced by whoever says them (AvaMERG): the profile is
that person's; the emotion is the turn's annotated speaker emotion for speaker utterances and unknown (-1) for the
listener's, whose expression AvaMERG does not annotate. Features follow `config.empatheia.speech` (a
`SpeechConfig`): log-mel and F0 (WORLD's DIO + StoneMask at the mel hop) are cached by `feature_cache`; symbols come
from the text front end. An utterance longer than `max_frames` is left out up front (counted, one log line); one
whose audio does not decode or whose text has more than `max_tokens` symbols is skipped in the pipeline (counted
and reported by `DataIterator`). `wave_segment` is a random `vocoder_segment`-frame window of the waveform (grain's
per-element RNG: resumable and reproducible).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from merg_jax import labels
from merg_jax.data.pipeline_batch import Skipped

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SpeechSpec:
    """What one row holds (picklable: it travels to grain's worker processes)."""

    sample_rate: int
    n_fft: int
    hop: int
    n_mels: int
    fmin: float
    fmax: float
    symbols: str  # the text front end's kind
    max_tokens: int
    max_frames: int
    segment_frames: int
    feature_cache_mb: float = 0.0
    feature_cache_dir: str = ""

    @classmethod
    def from_config(cls, config) -> SpeechSpec:
        from merg_jax.models.speech.config import SpeechConfig

        s = SpeechConfig.from_dict(config.empatheia.get("speech"))
        d = config.data
        return cls(sample_rate=s.sample_rate, n_fft=s.n_fft, hop=s.hop, n_mels=s.n_mels, fmin=s.fmin, fmax=s.fmax,
                   symbols=s.symbols, max_tokens=s.max_tokens, max_frames=s.max_frames,
                   segment_frames=s.vocoder_segment, feature_cache_mb=float(d.get("feature_cache_mb", 0) or 0),
                   feature_cache_dir=str(d.get("feature_cache_dir", "") or ""))

    @property
    def segment_samples(self) -> int:
        return self.segment_frames * self.hop

    def empty(self, n: int) -> dict[str, np.ndarray]:
        i32, f32 = np.int32, np.float32
        return {"symbols": np.zeros((n, self.max_tokens), i32), "symbols_len": np.zeros(n, i32),
                "mel": np.zeros((n, self.max_frames, self.n_mels), f32), "mel_len": np.zeros(n, i32),
                "f0": np.zeros((n, self.max_frames), f32), "wave_segment": np.zeros((n, self.segment_samples), f32),
                **{k: np.full(n, -1, i32) for k in ("emotion7", "gender", "age", "timbre", "sample_index")}}


# ------------------------------------------------------------------------------------------------ records


def utterance_records(root: str | os.PathLike, split: str, *, max_seconds: float | None = None) -> list[dict]:
    """One record per distinct utterance with audio: {index, text, audio (path), conversation_id, number, role,
    emotion7, gender, age, timbre}. Utterances longer than `max_seconds` are left out (counted in a log line)."""
    import soundfile as sf

    from merg_jax.data.avamerg import read_split

    data = read_split(root, split, check_media="exists")
    out, too_long = [], 0
    for conv in data.conversations:
        emotion = next((t.coe.speaker_emotion for t in conv.turns if t.coe and t.coe.speaker_emotion), None)
        e7 = _emotion7(emotion)
        for u in conv.utterances:
            if u.audio is None or not u.text.strip():
                continue
            if max_seconds is not None:
                try:
                    if sf.info(str(u.audio)).duration > max_seconds:
                        too_long += 1
                        continue
                except Exception:  # noqa: BLE001 - an unreadable header is the pipeline's to report, per sample
                    pass
            p = conv.speaker_profile if u.role == "speaker" else conv.listener_profile
            out.append({"index": len(out), "text": u.text, "audio": str(u.audio), "conversation_id":
                        conv.conversation_id, "number": u.number, "role": u.role,
                        "emotion7": e7 if u.role == "speaker" else -1,
                        "gender": _index(p.gender, labels.GENDERS), "age": _index(p.age, labels.AGES),
                        "timbre": _index(p.timbre, labels.TIMBRES)})
    if too_long:
        log.info("speech corpus %s/%s: %d utterances longer than %.1f s left out (raise "
                 "empatheia.speech.max_frames to keep them)", root, split, too_long, max_seconds)
    if not out:
        raise ValueError(f"{root}: the {split} split has no utterance with audio for the speech generator")
    return out


def _index(value, names) -> int:
    return names.index(value) if value in names else -1


def _emotion7(emotion: str | None) -> int:
    if emotion in labels.EMOTIONS_7:
        return labels.EMOTIONS_7.index(emotion)
    if emotion in labels.ED_TO_MULTIMODAL:
        return labels.EMOTIONS_7.index(labels.ED_TO_MULTIMODAL[emotion])
    return -1


# ------------------------------------------------------------------------------------------------ features


def speech_mel(wave: np.ndarray, spec) -> np.ndarray:
    """The speech generator's feature of a mono wave at `spec.sample_rate` (`spec`: a SpeechSpec or SpeechConfig):
    log-magnitude mel [1 + S // hop, n_mels], floor 1e-5 — `merg_jax.models.speech.audio.log_mel` in numpy."""
    from merg_jax.data.features import log_mel

    return log_mel(wave, spec.sample_rate, sample_rate=spec.sample_rate, n_fft=spec.n_fft, hop=spec.hop,
                   n_mels=spec.n_mels, fmin=spec.fmin, fmax=spec.fmax, power=1.0, log_floor=1e-5)


def mel_and_f0(wave: np.ndarray, spec: SpeechSpec) -> tuple[np.ndarray, np.ndarray]:
    """(`speech_mel`, F0 in Hz [F], 0 where unvoiced) of a mono wave at `spec.sample_rate`."""
    import pyworld

    mel = speech_mel(wave, spec)
    x = wave.astype(np.float64)
    period = 1000.0 * spec.hop / spec.sample_rate
    f0, t = pyworld.dio(x, spec.sample_rate, f0_floor=60.0, f0_ceil=600.0, frame_period=period)
    f0 = pyworld.stonemask(x, f0, t, spec.sample_rate).astype(np.float32)
    out = np.zeros(mel.shape[0], np.float32)
    out[:min(len(f0), len(out))] = f0[:len(out)]
    return mel, out


def read_speech(path: str, sample_rate: int) -> np.ndarray:
    """A mono float32 waveform at `sample_rate` (any readable file; resampled when needed)."""
    from merg_jax.data import media
    from merg_jax.data.features import resample, to_float_mono

    wave, sr = media.read_wav(path)
    return resample(to_float_mono(wave), int(sr), int(sample_rate)).astype(np.float32)


class SpeechTransform:
    """record, rng → one row (`SpeechSpec.empty` fields) or `Skipped` (a grain random map)."""

    def __init__(self, spec: SpeechSpec):
        self.spec = spec
        self._frontend = None
        self._cache = None

    def _setup(self):
        if self._frontend is None:
            from merg_jax.data.feature_cache import feature_cache
            from merg_jax.data.speech_text import TextFrontEnd

            self._frontend = TextFrontEnd(self.spec.symbols)
            self._cache = feature_cache(self.spec.feature_cache_mb or None, self.spec.feature_cache_dir or None)

    def __call__(self, record: dict, rng: np.random.Generator):
        self._setup()
        s = self.spec
        try:
            ids = self._frontend.encode(record["text"])
            if len(ids) > s.max_tokens:
                raise ValueError(f"{len(ids)} symbols > empatheia.speech.max_tokens={s.max_tokens}")
            wave = read_speech(record["audio"], s.sample_rate)
            mel, f0 = self._features(record["audio"], wave)
            if mel.shape[0] > s.max_frames:
                raise ValueError(f"{mel.shape[0]} frames > empatheia.speech.max_frames={s.max_frames}")
        except Exception as e:  # noqa: BLE001 - one bad utterance is skipped and reported, never the run's end
            return Skipped(int(record["index"]), record["audio"], f"speech: {type(e).__name__}: {e}")
        row = s.empty(1)
        row = {k: v[0] for k, v in row.items()}
        row["symbols"][:len(ids)] = ids
        row["symbols_len"] = np.int32(len(ids))
        row["mel"][:mel.shape[0]] = mel
        row["mel_len"] = np.int32(mel.shape[0])
        row["f0"][:len(f0)] = f0
        n = s.segment_samples
        start = int(rng.integers(0, max(1, len(wave) - n + 1)))
        seg = wave[start:start + n]
        row["wave_segment"][:len(seg)] = seg
        for k in ("emotion7", "gender", "age", "timbre"):
            row[k] = np.int32(record[k])
        row["sample_index"] = np.int32(record["index"])
        return row

    def _features(self, path: str, wave: np.ndarray):
        from merg_jax.data.feature_cache import file_key

        key = file_key(path)
        s = self.spec
        settings = (s.sample_rate, s.n_fft, s.hop, s.n_mels, s.fmin, s.fmax)
        if key is None or not self._cache.enabled:
            return mel_and_f0(wave, s)
        return self._cache.get_or_compute(("speech", key, settings), lambda: mel_and_f0(wave, s))


class _PadRows:
    def __init__(self, spec: SpeechSpec):
        self.spec = spec

    def __call__(self, n: int) -> dict[str, np.ndarray]:
        return self.spec.empty(n)


def make_speech_iterator(config, split: str, *, tokenizer=None, shard_index: int | None = None,
                         shard_count: int | None = None, shuffle: bool | None = None,
                         num_epochs: int | None | str = "config", drop_remainder: bool = True,
                         workers: int | None = None, **_ignored):
    """The `DataIterator` of `split`'s utterances (see the module docstring); the batch is `data.batch_size` (or
    `train.batch_size`) divided over the hosts. The signature follows `pipeline.make_iterator`, so the trainer
    calls either the same way (`tokenizer` is unused: the speech generator reads symbols)."""
    from merg_jax.data.row_iterator import make_row_iterator

    spec = SpeechSpec.from_config(config)
    records = utterance_records(str(config.data.root), split,
                                max_seconds=(spec.max_frames - 1) * spec.hop / spec.sample_rate)
    return make_row_iterator(config, records, SpeechTransform(spec), _PadRows(spec), name=f"speech/{split}",
                             shard_index=shard_index, shard_count=shard_count, shuffle=shuffle, num_epochs=num_epochs,
                             drop_remainder=drop_remainder, workers=workers)


__all__ = ["SpeechSpec", "SpeechTransform", "make_speech_iterator", "mel_and_f0", "read_speech", "speech_mel",
           "utterance_records"]
