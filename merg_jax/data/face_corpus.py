"""The face generator's training data: every utterance of a split that has a video, one per batch row.

    it = make_face_iterator(config, "train", kind="renderer")   # rows for stage face_renderer
    batch = next(it)   # portrait [B, S, S, 3] uint8, frames [B, P, S, S, 3] uint8 (P random frames of one clip),
                       # emotion7 [B] (the speaker's annotated emotion, -1: none), sample_index [B] (-1: padding row)
    it = make_face_iterator(config, "train", kind="motion", tracks=path)   # rows for stage face_motion
    batch = next(it)   # mel [B, M, n_mels] + mel_len (the speech generator's log-mel of the clip's audio),
                       # motion [B, F, 2K] + motion_len (the clip's keypoint offsets from its portrait's, from
                       # `tracks`), window_start / style_start [B] (two random windows of the clip), emotion7 [B]

The portrait of a clip is its speaker's avatar image (`{root}/avatars/{ID}.png`, AvaMERG's avatar ID) resized to
the face size; a clip whose avatar has no image uses its own first frame. A clip that does not decode is skipped
and counted (`DataIterator` reports it); a clip longer than `empatheia.face.max_frames` is left out of the motion
rows up front (one log line).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib

import numpy as np

from merg_jax.data.pipeline_batch import Skipped

log = logging.getLogger(__name__)

PORTRAIT_TEMPLATE = "avatars/{ID}.png"


def portrait_path(root: str | os.PathLike, avatar_id: int | None) -> pathlib.Path | None:
    """`{root}/avatars/{ID}.png` when it exists, else None."""
    if avatar_id is None or int(avatar_id) < 0:
        return None
    p = pathlib.Path(root) / PORTRAIT_TEMPLATE.format(ID=int(avatar_id))
    return p if p.is_file() else None


def read_image(path: str | os.PathLike, size: int | None = None) -> np.ndarray:
    """uint8 RGB [size, size, 3] (the central square, resized) of any image PIL reads; errors name the file."""
    from PIL import Image, UnidentifiedImageError

    from merg_jax.data.features import center_crop_resize

    p = pathlib.Path(path)
    try:
        with Image.open(p) as img:
            rgb = np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise ValueError(f"{p}: no such image") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{p}: not a readable image ({e})") from None
    if min(rgb.shape[:2]) < 16:
        raise ValueError(f"{p}: {rgb.shape[1]}×{rgb.shape[0]} is too small for a portrait (at least 16×16)")
    return rgb if size is None else center_crop_resize(rgb, size)


def clip_records(root: str | os.PathLike, split: str) -> list[dict]:
    """One record per utterance with a video: {index, video, audio ("" if none), avatar_id, portrait ("" if none),
    role, emotion7 (the annotated speaker emotion for speaker clips, -1 for the listener's), conversation_id,
    number}."""
    from merg_jax.data.avamerg import read_split
    from merg_jax.data.speech_corpus import _emotion7

    data = read_split(root, split, check_media="exists")
    out = []
    for conv in data.conversations:
        emotion = next((t.coe.speaker_emotion for t in conv.turns if t.coe and t.coe.speaker_emotion), None)
        for u in conv.utterances:
            if u.video is None:
                continue
            profile = conv.speaker_profile if u.role == "speaker" else conv.listener_profile
            avatar = profile.avatar_id if profile is not None else None
            portrait = portrait_path(root, avatar)
            out.append({"index": len(out), "video": str(u.video), "audio": str(u.audio or ""),
                        "avatar_id": -1 if avatar is None else int(avatar), "portrait": str(portrait or ""),
                        "role": u.role, "emotion7": _emotion7(emotion) if u.role == "speaker" else -1,
                        "conversation_id": conv.conversation_id, "number": u.number})
    if not out:
        raise ValueError(f"{root}: the {split} split has no utterance with a video for the face generator")
    return out


def clip_frames(path: str, size: int, fps: float) -> np.ndarray:
    """A clip's frames, uint8 [T, size, size, 3] at `fps` (resampled, centre-cropped and resized when needed)."""
    from merg_jax.data import media
    from merg_jax.data.features import video_frames

    frames, clip_fps = media.read_video(path)
    if frames.shape[1:3] == (size, size) and abs(clip_fps - fps) < 1e-3:
        return frames
    return video_frames(frames, clip_fps, target_fps=fps, size=size)


def clip_portrait(record: dict, size: int, frames: np.ndarray | None = None) -> np.ndarray:
    """The record's portrait at `size`, or its first frame when the avatar has no image."""
    if record.get("portrait"):
        return read_image(record["portrait"], size)
    if frames is None:
        frames = clip_frames(record["video"], size, 25.0)
    return frames[0]


@dataclasses.dataclass(frozen=True)
class FaceSpec:
    """What one row holds (picklable: it travels to grain's worker processes)."""

    size: int
    fps: float
    frames_per_row: int  # renderer rows: P frames of one clip
    motion_dim: int
    max_frames: int  # motion rows: video frames per clip
    mel_frames: int
    window: int
    style_frames: int
    sample_rate: int
    n_fft: int
    hop: int
    n_mels: int
    fmax: float
    fmin: float = 0.0
    tracks: str = ""  # motion rows: the keypoint-offset tracks file
    feature_cache_mb: float = 0.0
    feature_cache_dir: str = ""

    @classmethod
    def from_config(cls, config, *, tracks: str = "") -> FaceSpec:
        from merg_jax.models.face.config import FaceConfig

        f = FaceConfig.from_dict(config.empatheia.get("face"))
        d = config.data
        return cls(size=f.size, fps=f.fps, frames_per_row=int(d.get("face_frames_per_row", 4) or 4),
                   motion_dim=f.motion_dim, max_frames=f.max_frames, mel_frames=f.mel_frames(f.max_frames),
                   window=f.window, style_frames=f.style_frames, sample_rate=f.sample_rate, n_fft=f.n_fft,
                   hop=f.hop, n_mels=f.n_mels, fmin=f.fmin, fmax=f.fmax, tracks=str(tracks),
                   feature_cache_mb=float(d.get("feature_cache_mb", 0) or 0),
                   feature_cache_dir=str(d.get("feature_cache_dir", "") or ""))

    def empty(self, n: int, kind: str) -> dict[str, np.ndarray]:
        i32, f32, u8 = np.int32, np.float32, np.uint8
        s = self.size
        if kind == "renderer":
            return {"portrait": np.zeros((n, s, s, 3), u8), "frames": np.zeros((n, self.frames_per_row, s, s, 3), u8),
                    "emotion7": np.full(n, -1, i32), "sample_index": np.full(n, -1, i32)}
        return {"mel": np.zeros((n, self.mel_frames, self.n_mels), f32), "mel_len": np.zeros(n, i32),
                "motion": np.zeros((n, self.max_frames, self.motion_dim), f32), "motion_len": np.zeros(n, i32),
                "window_start": np.zeros(n, i32), "style_start": np.zeros(n, i32),
                "emotion7": np.full(n, -1, i32), "sample_index": np.full(n, -1, i32)}


class RendererTransform:
    """record, rng → a renderer row (the portrait and P random frames of the clip) or `Skipped`."""

    def __init__(self, spec: FaceSpec):
        self.spec = spec

    def __call__(self, record: dict, rng: np.random.Generator):
        s = self.spec
        try:
            frames = clip_frames(record["video"], s.size, s.fps)
            portrait = clip_portrait(record, s.size, frames)
        except Exception as e:  # noqa: BLE001 - one bad clip is skipped and reported, never the run's end
            return Skipped(int(record["index"]), record["video"], f"face: {type(e).__name__}: {e}")
        pick = rng.choice(len(frames), size=s.frames_per_row, replace=len(frames) < s.frames_per_row)
        return {"portrait": portrait, "frames": frames[np.sort(pick)], "emotion7": np.int32(record["emotion7"]),
                "sample_index": np.int32(record["index"])}


def load_tracks(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A tracks file (`merg_jax.train.face_tracks`): {offsets [N+1], motion [sum T, 2K], index [N]} — clip i's
    motion is motion[offsets[j]:offsets[j+1]] for the j with index[j] == i."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


class MotionTransform:
    """record, rng → a motion row (see the module docstring) or `Skipped`."""

    def __init__(self, spec: FaceSpec):
        self.spec = spec
        self._tracks = None
        self._cache = None

    def _setup(self):
        if self._tracks is None:
            from merg_jax.data.feature_cache import feature_cache

            t = load_tracks(self.spec.tracks)
            self._tracks = (t["offsets"], t["motion"], {int(i): j for j, i in enumerate(t["index"])})
            self._cache = feature_cache(self.spec.feature_cache_mb or None, self.spec.feature_cache_dir or None)

    def __call__(self, record: dict, rng: np.random.Generator):
        self._setup()
        s = self.spec
        offsets, motion, where = self._tracks
        j = where.get(int(record["index"]))
        try:
            if j is None:
                raise ValueError("no keypoint track (the clip did not decode when the tracks were made)")
            track = motion[offsets[j]:offsets[j + 1]]
            if not record["audio"]:
                raise ValueError("no audio")
            mel = self._mel(record["audio"])
        except Exception as e:  # noqa: BLE001 - one bad clip is skipped and reported, never the run's end
            return Skipped(int(record["index"]), record["video"], f"face motion: {type(e).__name__}: {e}")
        t = min(len(track), s.max_frames)
        m = min(mel.shape[0], s.mel_frames)
        row = {k: v[0] for k, v in s.empty(1, "motion").items()}
        row["motion"][:t] = track[:t]
        row["motion_len"] = np.int32(t)
        row["mel"][:m] = mel[:m]
        row["mel_len"] = np.int32(m)
        row["window_start"] = np.int32(rng.integers(0, max(1, t - s.window + 1)))
        row["style_start"] = np.int32(rng.integers(0, max(1, t - s.style_frames + 1)))
        row["emotion7"] = np.int32(record["emotion7"])
        row["sample_index"] = np.int32(record["index"])
        return row

    def _mel(self, path: str) -> np.ndarray:
        from merg_jax.data.feature_cache import file_key
        from merg_jax.data.speech_corpus import read_speech, speech_mel

        s = self.spec
        compute = lambda: speech_mel(read_speech(path, s.sample_rate), s)  # noqa: E731
        key = file_key(path)
        if key is None or not self._cache.enabled:
            return compute()
        return self._cache.get_or_compute(("face_mel", key, (s.sample_rate, s.n_fft, s.hop, s.n_mels, s.fmin, s.fmax)),
                                          compute)


class _PadRows:
    def __init__(self, spec: FaceSpec, kind: str):
        self.spec, self.kind = spec, kind

    def __call__(self, n: int) -> dict[str, np.ndarray]:
        return self.spec.empty(n, self.kind)


def motion_records(records: list[dict], max_frames: int, fps: float) -> list[dict]:
    """The records whose clip fits `max_frames` (by the header's duration) and has audio; the rest counted."""
    from merg_jax.data.media import media_duration

    out, too_long, no_audio = [], 0, 0
    for r in records:
        if not r["audio"]:
            no_audio += 1
            continue
        try:
            if media_duration(r["video"]) * fps > max_frames:
                too_long += 1
                continue
        except Exception:  # noqa: BLE001 - an unreadable header is the pipeline's to report, per sample
            pass
        out.append(r)
    if too_long or no_audio:
        log.info("face motion rows: %d clips longer than %d frames and %d without audio left out", too_long,
                 max_frames, no_audio)
    return out


def make_face_iterator(config, split: str, *, kind: str = "renderer", tracks: str = "", tokenizer=None,
                       shard_index: int | None = None, shard_count: int | None = None, shuffle: bool | None = None,
                       num_epochs: int | None | str = "config", drop_remainder: bool = True,
                       workers: int | None = None, records: list[dict] | None = None, **_ignored):
    """The `DataIterator` of `split`'s clips as `kind` rows ("renderer" or "motion"; see the module docstring). The
    signature follows `pipeline.make_iterator`, so the trainer calls either the same way."""
    from merg_jax.data.row_iterator import make_row_iterator

    if kind not in ("renderer", "motion"):
        raise ValueError(f"face rows: kind={kind!r}, expected 'renderer' or 'motion'")
    spec = FaceSpec.from_config(config, tracks=tracks)
    if kind == "motion" and not (tracks and os.path.isfile(tracks)):
        raise ValueError(f"face motion rows need the keypoint tracks file; {tracks!r} does not exist")
    records = clip_records(str(config.data.root), split) if records is None else records
    if kind == "motion":  # the clips the tracks hold: short enough, with audio, under face_max_clips, decoded
        with np.load(tracks) as z:
            tracked = {int(i) for i in z["index"]}
        records = [r for r in records if int(r["index"]) in tracked]
    transform = RendererTransform(spec) if kind == "renderer" else MotionTransform(spec)
    return make_row_iterator(config, records, transform, _PadRows(spec, kind), name=f"face-{kind}/{split}",
                             shard_index=shard_index, shard_count=shard_count, shuffle=shuffle, num_epochs=num_epochs,
                             drop_remainder=drop_remainder, workers=workers)


__all__ = ["FaceSpec", "MotionTransform", "RendererTransform", "clip_frames", "clip_portrait", "clip_records",
           "load_tracks", "make_face_iterator", "motion_records", "portrait_path", "read_image"]
