"""One record -> one example of fixed-shape numpy arrays: decoded media features, tokens, labels.

`FeatureSpec` fixes every shape (from the `data` config section); `make_example(record, ...)` decodes the history
clips and the gold reply through `merg_jax.data.media` (`read_wav`, `read_video`) and `merg_jax.data.features`
(`log_mel`, `video_frames`), pads or cuts them to the spec, tokenizes the turn with `templates.encode_example`, and
returns the arrays of one batch row (the batch keys of `merg_jax.data.pipeline` without the leading B).
A media file that cannot be had raises `BadSample`; the pipeline skips and counts it.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import tempfile
from typing import Any

import numpy as np

from merg_jax.data import labels
from merg_jax.data.features import FeatureConfig
from merg_jax.data.templates import SYSTEM_PROMPT, encode_example, encode_prompt


class BadSample(Exception):
    """A sample whose media cannot be decoded (or are missing, with `missing_media="skip"`)."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """Static shapes and settings of one example.

    seq_len L: tokens per row (inputs and targets, shifted by one). max_clips C: history utterances with media.
    audio: mel settings of the history clips, `audio_frames` T_mel frames per clip (0: no audio arrays);
    video: fps/size of the history clips, `video_frames` F frames per clip (0: no video arrays);
    reply_audio / reply_frames, reply_video / reply_video_frames: the same for the gold reply.
    chain: CoE target (else reply only); media_tokens: `<Aud>`/`<Vid>` tokens per utterance in the prompt
    (True/1, n, or False/0: `templates.media_slots`).
    missing_media: "skip" (a sample missing a wanted media file is skipped and counted) or "mask" (that clip is
    zero with mask False).
    prompt_only: tokens hold the prompt alone (`templates.encode_prompt`, what inference feeds the model), targets
    and loss_mask are zero: evaluation and `respond` batches.
    feature_cache_mb: bound of the process's in-memory cache of decoded features (`feature_cache`; 0: none);
    feature_cache_dir: a folder that caches them on disk, shared by processes and runs ("": none).
    reply_symbols / reply_symbols_len: the gold reply's symbols for the speech generator's content encoder
    (`speech_text.TextFrontEnd` kind; cut at reply_symbols_len), batch keys `reply_symbols`, `reply_symbols_len`.
    reply_portrait: with reply video, `reply_portrait` uint8 [B, S_reply, S_reply, 3], the listener's avatar image
    (`{root}/avatars/{ID}.png`; the reply's first frame when there is none).
    """

    seq_len: int
    max_clips: int = 8
    audio: FeatureConfig = FeatureConfig()
    audio_frames: int = 0
    video: FeatureConfig = FeatureConfig()
    video_frames: int = 0
    reply_audio: FeatureConfig = FeatureConfig()
    reply_audio_frames: int = 0
    reply_video: FeatureConfig = FeatureConfig()
    reply_video_frames: int = 0
    chain: bool = True
    media_tokens: int | bool = True
    system_prompt: str = SYSTEM_PROMPT
    missing_media: str = "skip"
    prompt_only: bool = False
    feature_cache_mb: float = 0.0
    feature_cache_dir: str = ""
    reply_symbols: str = ""  # the speech generator's text front end ("phonemes" / "characters"); "": no symbols
    reply_symbols_len: int = 0
    reply_portrait: bool = False  # the replying avatar's portrait (the face generator's style target reads it)

    def __post_init__(self):
        if self.missing_media not in ("skip", "mask"):
            raise ValueError(f"data.missing_media={self.missing_media!r}: expected 'skip' or 'mask'")
        for name in ("seq_len", "max_clips"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name}={getattr(self, name)} must be >= 1")
        for name in ("audio_frames", "video_frames", "reply_audio_frames", "reply_video_frames"):
            if getattr(self, name) < 0:
                raise ValueError(f"data.{name}={getattr(self, name)} must be >= 0")

    def shapes(self, batch_size: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Every batch key -> (shape, dtype) for a batch of `batch_size` rows."""
        B, L, C = batch_size, self.seq_len, self.max_clips
        i32, f32, b = np.dtype(np.int32), np.dtype(np.float32), np.dtype(bool)
        out = {k: ((B, L), i32) for k in ("tokens", "targets", "loss_mask", "segment_ids", "positions",
                                           "media_clip", "media_kind")}
        out["clip_utterance"] = ((B, C), i32)
        out["clip_emotion7"] = ((B, C), i32)
        if self.audio_frames:
            out["audio_mel"] = ((B, C, self.audio_frames, self.audio.n_mels), f32)
            out["audio_len"] = ((B, C), i32)
            out["audio_mask"] = ((B, C), b)
        if self.video_frames:
            s = self.video.size
            out["video_frames"] = ((B, C, self.video_frames, s, s, 3), np.dtype(np.uint8))
            out["video_len"] = ((B, C), i32)
            out["video_mask"] = ((B, C), b)
        if self.reply_audio_frames:
            out["reply_mel"] = ((B, self.reply_audio_frames, self.reply_audio.n_mels), f32)
            out["reply_mel_len"] = ((B,), i32)
            out["reply_audio_mask"] = ((B,), b)
        if self.reply_video_frames:
            s = self.reply_video.size
            out["reply_frames"] = ((B, self.reply_video_frames, s, s, 3), np.dtype(np.uint8))
            out["reply_frames_len"] = ((B,), i32)
            out["reply_video_mask"] = ((B,), b)
            if self.reply_portrait:
                out["reply_portrait"] = ((B, s, s, 3), np.dtype(np.uint8))
        if self.reply_symbols_len:
            out["reply_symbols"] = ((B, self.reply_symbols_len), i32)
            out["reply_symbols_len"] = ((B,), i32)
        for k in ("emotion7", "emotion32", "age", "gender", "timbre", "avatar_id", "topic", "sample_index"):
            out[k] = ((B,), i32)
        return out

    def empty(self, batch_size: int) -> dict[str, np.ndarray]:
        """A batch of padding rows: zeros, with -1 for the labels, clip indices and sample_index."""
        out = {k: np.zeros(shape, dtype) for k, (shape, dtype) in self.shapes(batch_size).items()}
        for k in ("media_clip", "clip_utterance", "clip_emotion7", "emotion7", "emotion32", "age", "gender", "timbre", "avatar_id",
                  "topic", "sample_index"):
            out[k][...] = -1
        return out


# ------------------------------------------------------------------------------------------------ media


def _media_file(name: str, record: dict, root: str | None):
    """(path to decode, temp file to delete or None). Bytes from array_record go through a temporary file, so
    the one decoder (`merg_jax.data.media`) serves both sources."""
    blobs = record.get("media")
    if blobs is not None and name in blobs:
        fd, tmp = tempfile.mkstemp(suffix=pathlib.PurePosixPath(name).suffix, prefix="merg_media_")
        with os.fdopen(fd, "wb") as f:
            f.write(blobs[name])
        return tmp, tmp
    return (os.path.join(root, name) if root is not None else name), None


def _decode(kind: str, name: str, record: dict, root: str | None):
    from merg_jax.data import media

    path, tmp = _media_file(name, record, root)
    try:
        return media.read_wav(path) if kind == "audio" else media.read_video(path)
    except Exception as e:  # MediaError names the file; anything else (a codec surprise) too
        raise BadSample(name if tmp else path, f"{kind}: {type(e).__name__}: {e}") from None
    finally:
        if tmp is not None:
            os.unlink(tmp)


def _fit(x: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """x [T, ...] cut or zero-padded to [n, ...]; also the number of valid rows."""
    t = min(x.shape[0], n)
    out = np.zeros((n, *x.shape[1:]), x.dtype)
    out[:t] = x[:t]
    return out, t


def _cached(kind: str, name: str, record: dict, root: str | None, config: FeatureConfig, frames: int, compute):
    """`compute()` through the process's feature cache when the media is a file on disk (records carrying their
    media bytes are decoded every time: their names need not be unique across datasets)."""
    from merg_jax.data.feature_cache import feature_cache, file_key

    cache = feature_cache()
    blobs = record.get("media")
    key = None if (blobs is not None and name in blobs) or root is None else file_key(os.path.join(root, name))
    if key is None or not cache.enabled:
        return compute()
    return cache.get_or_compute((kind, key, config, frames), compute)


def _features(kind: str, name: str, record: dict, root: str | None, config: FeatureConfig, frames: int, extract):
    """(`extract(decoded, rate)` cut or padded to `frames` rows, valid rows), through the feature cache."""

    def compute():
        data, rate = _decode(kind, name, record, root)
        try:
            return _fit(extract(data, rate), frames)
        except ValueError as e:
            raise BadSample(name, f"{kind}: {e}") from None

    return _cached(kind, name, record, root, config, frames, compute)


def audio_features(name: str, record: dict, root: str | None, config: FeatureConfig, frames: int):
    """(log-mel [frames, n_mels] float32, valid frames)."""
    return _features("audio", name, record, root, config, frames, config.log_mel)


def video_features(name: str, record: dict, root: str | None, config: FeatureConfig, frames: int):
    """(frames [frames, size, size, 3] uint8, valid frames)."""
    return _features("video", name, record, root, config, frames, config.video_frames)


# ------------------------------------------------------------------------------------------------ labels


def _label(value: Any, names) -> int:
    return names.index(value) if isinstance(value, str) and value in names else -1


def label_ids(record: dict) -> dict[str, int]:
    """Class ids (-1: unknown). Emotions: the CoE speaker emotion, mapped between the 7 multimodal and the 32
    EmpatheticDialogues labels when it is named in the other set. Profile and avatar: the listener's (the reply's
    voice and face)."""
    emotion = (record.get("coe") or {}).get("speaker_emotion")
    e7 = _label(emotion, labels.EMOTIONS_7)
    if e7 < 0 and emotion in labels.ED_TO_MULTIMODAL:
        e7 = labels.EMOTIONS_7.index(labels.ED_TO_MULTIMODAL[emotion])
    e32 = _label(emotion, labels.EMOTIONS_32)
    if e32 < 0 and emotion in labels.MULTIMODAL_TO_ED:
        e32 = labels.EMOTIONS_32.index(labels.MULTIMODAL_TO_ED[emotion])
    p = record.get("listener_profile") or {}
    avatar = p.get("avatar_id")
    avatar = avatar if isinstance(avatar, int) and 0 <= avatar < labels.NUM_AVATARS else -1
    return {"emotion7": e7, "emotion32": e32, "age": _label(p.get("age"), labels.AGES),
            "gender": _label(p.get("gender"), labels.GENDERS), "timbre": _label(p.get("timbre"), labels.TIMBRES),
            "avatar_id": avatar, "topic": _label(record.get("topic"), labels.TOPICS)}


# ------------------------------------------------------------------------------------------------ example


def _media_of(u: dict, key: str, spec: FeatureSpec, record: dict):
    name = u[key]
    if name is None and spec.missing_media == "skip":
        raise BadSample(f"{record.get('conversation_id')}/utt{u['number']}",
                        f"{'audio' if key == 'audio' else 'video'} file missing or unreadable (reader problem)")
    return name


def make_example(record: dict, tokenizer, spec: FeatureSpec, root: str | None) -> dict[str, np.ndarray]:
    """The arrays of one batch row for `record` (see `FeatureSpec.shapes`, without B). Raises BadSample.

    With `spec.prompt_only` the row holds the prompt alone (the last prompt token at position n - 1) and
    `record["response"]` may lack its text (a dialogue to answer)."""
    L, C = spec.seq_len, spec.max_clips
    if spec.feature_cache_mb or spec.feature_cache_dir:
        from merg_jax.data.feature_cache import feature_cache

        feature_cache(spec.feature_cache_mb, spec.feature_cache_dir or None)
    if spec.prompt_only:
        # At most L tokens, all of them inputs: nothing follows the prompt, so there is no shift by one.
        enc = encode_prompt(tokenizer, record["history"], max_len=L - 1, max_clips=C, media_tokens=spec.media_tokens,
                            system_prompt=spec.system_prompt)
    else:
        enc = encode_example(tokenizer, record["history"], record["response"]["text"], record.get("coe"),
                             max_len=L, max_clips=C, chain=spec.chain, media_tokens=spec.media_tokens,
                             system_prompt=spec.system_prompt)
    out = {k: v[0, ...] for k, v in spec.empty(1).items()}  # 0-d views for the per-row scalars
    if spec.prompt_only:
        n = len(enc.tokens)
        out["tokens"][:n] = enc.tokens
        out["media_clip"][:n] = enc.media_clip
        out["media_kind"][:n] = enc.media_kind
    else:
        n = len(enc.tokens) - 1
        out["tokens"][:n] = enc.tokens[:-1]
        out["targets"][:n] = enc.tokens[1:]
        out["loss_mask"][:n] = enc.loss_mask[1:]
        out["media_clip"][:n] = enc.media_clip[:-1]
        out["media_kind"][:n] = enc.media_kind[:-1]
    out["segment_ids"][:n] = 1
    out["positions"][:n] = np.arange(n, dtype=np.int32)
    history = record["history"]
    ids = label_ids(record)
    for c, h in enumerate(enc.clip_history_index):
        u = history[h]
        out["clip_utterance"][c] = u["number"]
        # The speaker's clips show the turn's (annotated) emotion; a listener's expression is not annotated.
        out["clip_emotion7"][c] = ids["emotion7"] if u["role"] == "speaker" else -1
        if spec.audio_frames:
            name = _media_of(u, "audio", spec, record)
            if name is not None:
                out["audio_mel"][c], out["audio_len"][c] = audio_features(name, record, root, spec.audio,
                                                                          spec.audio_frames)
                out["audio_mask"][c] = True
        if spec.video_frames:
            name = _media_of(u, "video", spec, record)
            if name is not None:
                out["video_frames"][c], out["video_len"][c] = video_features(name, record, root, spec.video,
                                                                             spec.video_frames)
                out["video_mask"][c] = True
    reply = record["response"]
    if spec.reply_audio_frames:
        name = _media_of(reply, "audio", spec, record)
        if name is not None:
            mel, t = audio_features(name, record, root, spec.reply_audio, spec.reply_audio_frames)
            out["reply_mel"][...], out["reply_mel_len"][...], out["reply_audio_mask"][...] = mel, t, True
    if spec.reply_video_frames:
        name = _media_of(reply, "video", spec, record)
        if name is not None:
            frames, t = video_features(name, record, root, spec.reply_video, spec.reply_video_frames)
            out["reply_frames"][...], out["reply_frames_len"][...], out["reply_video_mask"][...] = frames, t, True
            if spec.reply_portrait:
                out["reply_portrait"][...] = _listener_portrait(record, root, spec.reply_video.size, frames[0])
    if spec.reply_symbols_len and (reply.get("text") or "").strip():
        from merg_jax.data.speech_text import TextFrontEnd

        symbols = TextFrontEnd(spec.reply_symbols).encode(reply["text"])[:spec.reply_symbols_len]
        out["reply_symbols"][:len(symbols)] = symbols
        out["reply_symbols_len"][...] = len(symbols)
    for k, v in ids.items():
        out[k][...] = v
    out["sample_index"][...] = record.get("index", -1)
    return out


def _listener_portrait(record: dict, root: str | None, size: int, first_frame: np.ndarray) -> np.ndarray:
    from merg_jax.data.face_corpus import portrait_path, read_image

    avatar = (record.get("listener_profile") or {}).get("avatar_id")
    path = portrait_path(root, avatar) if root else None
    return read_image(path, size) if path is not None else first_frame


__all__ = ["BadSample", "FeatureSpec", "audio_features", "label_ids", "make_example", "video_features"]
