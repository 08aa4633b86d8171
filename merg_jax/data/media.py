"""Decoding AvaMERG media files: wav speech and mp4 talking-face video.

    read_wav(path)        -> (float32 mono waveform [T], sample_rate)
    read_video(path)      -> (uint8 RGB frames [T, H, W, 3], fps)
    media_duration(path)  -> seconds, from the file header only (no decoding)

Audio goes through soundfile (libsndfile): 8-bit unsigned, 16/24/32-bit integer and float wav all decode to
float32 in [-1, 1]; several channels are averaged to mono. Video goes through imageio-ffmpeg's `read_frames`
(the ffmpeg binary that imageio's ffmpeg plugin also uses), asking ffmpeg for raw rgb24 frames.

Every failure is a `MediaError` (a `DataError`) whose message names the file and whose `kind` is the Problem
kind the reader reports: "missing", "empty" (zero bytes, or no samples/frames) or "unreadable".
"""

from __future__ import annotations

import os
import pathlib
import struct
import warnings

import numpy as np

from merg_jax.data.avamerg import DataError

# ffmpeg runs as a subprocess (vfork + exec, merg_jax.data.ffmpeg): the child execs at once and runs no Python, so
# the threads of JAX in the parent are not at risk, and Python's warning about forking a multi-threaded process
# does not apply here.
warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)

# Containers soundfile (libsndfile) reads; anything else is treated as video.
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".aiff", ".aif", ".au", ".w64", ".rf64"})


class MediaError(DataError):
    """A media file that is missing, empty or cannot be decoded. `path` and `kind` say which and why."""

    def __init__(self, path: str | os.PathLike, kind: str, message: str):
        self.path = str(path)
        self.kind = kind
        self.reason = message
        super().__init__(f"{self.path}: {message}")


def check_file(path: str | os.PathLike) -> pathlib.Path:
    """The path if it names a non-empty regular file; MediaError "missing"/"empty"/"unreadable" otherwise."""
    p = pathlib.Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise MediaError(p, "missing", "file not found") from None
    except OSError as e:  # permission, name too long, loop of links ...
        raise MediaError(p, "unreadable", f"cannot stat: {e}") from None
    if not p.is_file():
        raise MediaError(p, "unreadable", "not a regular file")
    if st.st_size == 0:
        raise MediaError(p, "empty", "file is empty (0 bytes)")
    return p


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode an audio file to a float32 mono waveform [T] in [-1, 1] and its sample rate.

    Any PCM width (u8, s16, s24, s32) or float subtype; channels are averaged (a plain downmix).
    """
    import soundfile as sf

    p = check_file(path)
    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)  # [T, C]
    except Exception as e:  # libsndfile reports bad headers/truncation as LibsndfileError/RuntimeError
        raise MediaError(p, "unreadable", f"cannot decode audio: {e}") from None
    wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    return np.ascontiguousarray(wave, dtype=np.float32), int(sr)


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Decode a video to uint8 RGB frames [T, H, W, 3] and its frame rate (frames per second).

    Frames come out in presentation order exactly as ffmpeg decodes them (no frame-rate conversion here; see
    `features.video_frames` for resampling to a target fps).
    """
    from merg_jax.data.ffmpeg import imageio_ffmpeg

    p = check_file(path)
    gen = imageio_ffmpeg.read_frames(str(p), pix_fmt="rgb24")
    try:
        meta = next(gen)
        width, height = meta["size"]
        fps = float(meta.get("fps") or 0.0)
        frames = [np.frombuffer(buf, np.uint8).reshape(height, width, 3) for buf in gen]
    except Exception as e:  # ffmpeg header parse errors arrive as IOError/IndexError/AttributeError/RuntimeError
        raise MediaError(p, "unreadable", f"cannot decode video: {type(e).__name__}: {e}") from None
    finally:
        gen.close()  # stops the ffmpeg subprocess
    if not frames:
        raise MediaError(p, "empty", "video has no frames")
    if fps <= 0:
        raise MediaError(p, "unreadable", "video frame rate is unknown")
    return np.stack(frames), fps


def media_duration(path: str | os.PathLike) -> float:
    """Duration in seconds, read cheaply from the header: soundfile for audio, the mp4 `mvhd` box for mp4/mov
    (a few seeks, no subprocess), ffmpeg's header for anything else."""
    p = check_file(path)
    if p.suffix.lower() in AUDIO_SUFFIXES:
        import soundfile as sf

        try:
            info = sf.info(str(p))
        except Exception as e:
            raise MediaError(p, "unreadable", f"cannot read audio header: {e}") from None
        return float(info.frames) / float(info.samplerate)
    seconds = _mp4_duration(p)
    if seconds is not None:
        return seconds
    return _ffmpeg_header_duration(p)


def _mp4_duration(path: pathlib.Path) -> float | None:
    """Movie duration from the ISO-BMFF `moov/mvhd` box, or None if the file is not an mp4/mov we can parse.

    Walks the top-level boxes by their sizes (skipping `mdat` without reading it), so it costs a few small
    reads whether `moov` comes before or after the media data.
    """
    try:
        with open(path, "rb") as f:
            end = os.fstat(f.fileno()).st_size
            moov = _find_box(f, 0, end, b"moov")
            if moov is None:
                return None
            mvhd = _find_box(f, *moov, b"mvhd")
            if mvhd is None:
                return None
            f.seek(mvhd[0])
            version = f.read(4)[0]
            if version == 1:
                _, _, timescale, duration = struct.unpack(">QQIQ", f.read(28))
            else:
                _, _, timescale, duration = struct.unpack(">IIII", f.read(16))
    except (OSError, struct.error, IndexError):
        return None
    if timescale == 0:
        return None
    return duration / timescale


def _find_box(f, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    """(payload start, payload end) of the first box `kind` among the boxes in [start, end) of file `f`."""
    pos = start
    while pos + 8 <= end:
        f.seek(pos)
        header = f.read(8)
        if len(header) < 8:
            return None
        size, box = struct.unpack(">I4s", header)
        payload = pos + 8
        if size == 1:  # 64-bit size follows the type
            size = struct.unpack(">Q", f.read(8))[0]
            payload += 8
        elif size == 0:  # box runs to the end of its parent
            size = end - pos
        if size < payload - pos:
            return None  # corrupt size; give up rather than loop
        if box == kind:
            return payload, min(pos + size, end)
        pos += size
    return None


def _ffmpeg_header_duration(path: pathlib.Path) -> float:
    from merg_jax.data.ffmpeg import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path))
    try:
        meta = next(gen)
    except Exception as e:
        raise MediaError(path, "unreadable", f"cannot read video header: {type(e).__name__}: {e}") from None
    finally:
        gen.close()
    duration = float(meta.get("duration") or 0.0)
    if duration <= 0:
        raise MediaError(path, "unreadable", "video duration is unknown")
    return duration
