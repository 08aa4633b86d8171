"""Writes frames as an H.264 mp4 with imageio-ffmpeg's own ffmpeg, optionally with a wav muxed in as AAC: atomic,
and byte-for-byte reproducible without audio.

    write_mp4("clip.mp4", frames, 25)                       # uint8 [T, H, W, 3]
    write_mp4("reply.mp4", frames, 25, audio="reply.wav")   # the wav's sound in the same file

Reproducible because the encoder runs single-threaded (x264's frame threads and lookahead threads otherwise
make rate-control decisions depend on timing) and the muxer is in bitexact mode with metadata stripped (no
encoder version or creation time in the file). Quality: constant rate factor 16, yuv420p (what every player
decodes), so decoded frames are within a few grey levels of the input except at sharp colour edges, where 4:2:0
chroma subsampling blurs colour over 2 x 2 pixels.
"""

from __future__ import annotations

import os
import pathlib
import uuid

import numpy as np

from merg_jax.data.ffmpeg import imageio_ffmpeg

CRF = 16
AUDIO_RATE = 48000  # AAC frames of 1024 samples: 21 ms here


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int, *, audio: str | os.PathLike | None = None
              ) -> None:
    """Writes uint8 frames [T, H, W, 3] (T >= 1, H and W even) to `path` at `fps` frames per second; `audio`, a
    sound file soundfile reads, is muxed in as 48 kHz AAC, cut or padded with silence to exactly T / fps seconds (at
    48 kHz an AAC frame is 21 ms, so the two streams' durations agree within one video frame; at 16 kHz they would
    not).

    The file appears only when complete (temporary file in the same folder, then rename); identical input gives
    identical bytes. Raises ValueError naming the path for bad frames, RuntimeError if ffmpeg fails.
    """
    path = pathlib.Path(path)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{path}: frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    num, height, width, _ = frames.shape
    if num == 0:
        raise ValueError(f"{path}: no frames to write")
    if height % 2 or width % 2:
        raise ValueError(f"{path}: H.264 yuv420p needs even frame sizes, got {height}x{width}")
    if isinstance(fps, bool) or not isinstance(fps, (int, np.integer)) or fps <= 0:
        raise ValueError(f"{path}: fps {fps!r} is not a positive integer")
    if audio is not None and not os.path.isfile(audio):
        raise ValueError(f"{path}: the audio to mux in, {audio}, does not exist")
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name that ffmpeg creates itself (so the file gets the usual permissions, not mkstemp's 0600).
    tmp = str(path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp"))
    tmp_audio = None
    if audio is not None:
        tmp_audio = str(path.with_name(f".{path.name}.{uuid.uuid4().hex}.wav"))
        _fit_audio(audio, tmp_audio, num / fps)
    try:
        writer = imageio_ffmpeg.write_frames(
            tmp, (width, height), pix_fmt_in="rgb24", pix_fmt_out="yuv420p", fps=int(fps), quality=None,
            codec="libx264", macro_block_size=1, ffmpeg_log_level="error",
            audio_path=tmp_audio, audio_codec=None if audio is None else "aac",
            output_params=["-crf", str(CRF), "-preset", "medium", "-threads", "1", "-x264-params",
                           "threads=1:lookahead-threads=1:sliced-threads=0", "-map_metadata", "-1",
                           "-fflags", "+bitexact", "-flags:v", "+bitexact",
                           *([] if audio is None else ["-b:a", "96k", "-ar", str(AUDIO_RATE)]), "-f", "mp4"])
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        if os.path.getsize(tmp) == 0:
            raise RuntimeError(f"{path}: ffmpeg wrote an empty file")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        if tmp_audio is not None and os.path.exists(tmp_audio):
            os.unlink(tmp_audio)


def _fit_audio(source: str | os.PathLike, out: str, seconds: float) -> None:
    """`source` as mono 48 kHz float wav of exactly `seconds` (cut, or padded with silence)."""
    import soundfile as sf

    from merg_jax.data.features import resample, to_float_mono

    try:
        wave, sr = sf.read(str(source), dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001 - libsndfile's errors name no file
        raise ValueError(f"{source}: cannot read the audio to mux in ({e})") from None
    wave = resample(to_float_mono(wave.mean(1)), int(sr), AUDIO_RATE)
    n = int(round(seconds * AUDIO_RATE))
    wave = np.pad(wave[:n], (0, max(0, n - len(wave)))).astype(np.float32)
    sf.write(out, wave, AUDIO_RATE, subtype="FLOAT", format="WAV")


__all__ = ["AUDIO_RATE", "CRF", "write_mp4"]
