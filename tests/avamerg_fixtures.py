"""Small AvaMERG-format datasets for tests: JSON in the published schema (DESIGN §2), wav and mp4 files.

    conv = make_conversation("00001", num_turns=2)              # a dict in the published schema
    files = write_dataset(tmp_path, [conv, make_conversation(7, coe=False)], split="train",
                          missing=["train/audio/dia7utt2.wav"], empty=["train/video/dia7utt3.mp4"])
    files.json_path, files.audio, files.video                   # what was written (absolute paths)
    write_wav(path, 0.5, sr=44100, channels=2, subtype="PCM_24")
    write_mp4(path, 1.0, fps=30, size=(320, 240))               # frame i is painted frame_colour(i)
    decode_frame_index(frame)                                    # -> i, robust to H.264 colour error

Conversation j of `make_conversation` has 2 * num_turns utterances: turn t's history holds utterances
1 .. 2t+1 (speaker first, alternating) and its response is utterance 2t+2 (the listener's).
`write_dataset` writes one wav and one mp4 per utterance; all clips with the same settings share the same
bytes (encoded once per process), which keeps dataset fixtures fast.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
from typing import Any, Iterable, Sequence

import numpy as np

AUDIO_TEMPLATE = "{split}/audio/dia{conversation_id}utt{n}.wav"
VIDEO_TEMPLATE = "{split}/video/dia{conversation_id}utt{n}.mp4"

SPEAKER_PROFILE = {"age": "young", "gender": "male", "timbre": "high", "ID": 28}
LISTENER_PROFILE = {"age": "young", "gender": "female", "timbre": "mid", "ID": 18}


# ------------------------------------------------------------------------------------------------ audio


def tone(seconds: float, sr: int = 16000, freq: float = 220.0, amplitude: float = 0.5) -> np.ndarray:
    """float32 [round(seconds * sr)] sine at `freq` Hz."""
    t = np.arange(int(round(seconds * sr))) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_wav(path: str | os.PathLike, seconds: float, sr: int = 16000, channels: int = 1,
              subtype: str = "PCM_16", *, freq: float = 220.0, signal: np.ndarray | None = None) -> pathlib.Path:
    """A wav file of `seconds` of a `freq` Hz tone in each of `channels` channels, or of `signal` (float in
    [-1, 1]: [T] copied to every channel, or [T, C] as is; `seconds` is then ignored).

    `subtype` is a soundfile subtype: PCM_U8, PCM_16, PCM_24, PCM_32, FLOAT, DOUBLE.
    """
    import soundfile as sf

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = tone(seconds, sr, freq) if signal is None else np.asarray(signal, np.float32)
    if data.ndim == 1:
        data = np.repeat(data[:, None], channels, axis=1)
    sf.write(str(path), data, sr, subtype=subtype)
    return path


def espeak_wav(path: str | os.PathLike, text: str) -> pathlib.Path | None:
    """Real speech from espeak-ng (22.05 kHz mono PCM16), or None when espeak-ng is not installed."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([exe, "-w", str(path), text], check=True, capture_output=True, timeout=60)
    return path


# ------------------------------------------------------------------------------------------------ video


def frame_colour(i: int) -> tuple[int, int, int]:
    """The flat colour of frame i (i < 32): red and green encode i in steps of 8, blue is constant."""
    return 8 * i % 256, 255 - 8 * i % 256, 96


def decode_frame_index(frame: np.ndarray) -> int:
    """Inverse of frame_colour on a decoded frame [H, W, 3] (its mean colour; tolerates ±3 of codec error)."""
    r, g, _ = frame.reshape(-1, 3).mean(axis=0)
    return int(round(((r + (255 - g)) / 2) / 8))


def index_frames(num_frames: int, size: tuple[int, int] = (96, 96)) -> np.ndarray:
    """uint8 [num_frames, height, width, 3]; frame i is flat frame_colour(i). `size` is (width, height)."""
    w, h = size
    colours = np.array([frame_colour(i) for i in range(num_frames)], np.uint8)
    return np.broadcast_to(colours[:, None, None, :], (num_frames, h, w, 3)).copy()


def write_mp4(path: str | os.PathLike, seconds: float, fps: float = 25, size: tuple[int, int] = (96, 96), *,
              frames: np.ndarray | None = None) -> pathlib.Path:
    """An H.264 mp4 (yuv420p, near-lossless crf 5) of round(seconds * fps) frames. `size` is (width, height).

    Frames default to `index_frames` (frame i painted frame_colour(i)); pass `frames` [T, H, W, 3] uint8 to
    write your own (then `seconds` and `size` are ignored).
    """
    import imageio_ffmpeg

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if frames is None:
        frames = index_frames(int(round(seconds * fps)), size)
    frames = np.ascontiguousarray(frames, np.uint8)
    h, w = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, quality=9, macro_block_size=2,
                                         ffmpeg_log_level="error")
    writer.send(None)  # start ffmpeg
    for frame in frames:
        writer.send(frame.tobytes())
    writer.close()
    return path


@functools.lru_cache(maxsize=None)
def _clip_bytes(kind: str, seconds: float, rate: float, size: tuple[int, int]) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "audio":
            p = write_wav(pathlib.Path(tmp) / "a.wav", seconds, sr=int(rate))
        else:
            p = write_mp4(pathlib.Path(tmp) / "v.mp4", seconds, fps=rate, size=size)
        return p.read_bytes()


# ------------------------------------------------------------------------------------------------ JSON


def make_conversation(conversation_id: str | int = "00001", *, num_turns: int = 2, topic: str | None = "Work",
                      speaker: dict | None = None, listener: dict | None = None, coe: bool = True,
                      emotion: str = "surprised", extra: dict | None = None) -> dict[str, Any]:
    """A conversation dict in the published AvaMERG schema. Utterance texts name their position,
    e.g. "c00001 u3 speaker", so tests can check numbering. `extra` fields are added at the top level."""
    cid = conversation_id
    utterances = [f"c{cid} u{n} {'speaker' if n % 2 else 'listener'}" for n in range(1, 2 * num_turns + 1)]
    turns = []
    for t in range(num_turns):
        history = [{"index": k, "role": "speaker" if k % 2 == 0 else "listener", "utterance": utterances[k]}
                   for k in range(2 * t + 1)]
        turn = {"turn_id": str(t), "context": f"situation of {cid}", "dialogue_history": history,
                "response": utterances[2 * t + 1]}
        if coe:
            turn["chain_of_empathy"] = {"speaker_emotion": emotion, "event_scenario": f"event {cid}/{t}",
                                        "emotion_cause": f"cause {cid}/{t}", "goal_to_response": f"goal {cid}/{t}"}
        turns.append(turn)
    conv: dict[str, Any] = {"conversation_id": cid,
                            "speaker_profile": dict(SPEAKER_PROFILE if speaker is None else speaker),
                            "listener_profile": dict(LISTENER_PROFILE if listener is None else listener),
                            "topic": topic, "turns": turns}
    if topic is None:
        del conv["topic"]
    conv.update(extra or {})
    return conv


def num_utterances(conversation: dict) -> int:
    """Utterances of a schema conversation: the longest turn's history + its response."""
    return max(len(t.get("dialogue_history", [])) + 1 for t in conversation["turns"])


@dataclasses.dataclass
class DatasetFiles:
    root: pathlib.Path
    json_path: pathlib.Path
    audio: list[pathlib.Path]  # every wav written (missing ones excluded, empty ones included)
    video: list[pathlib.Path]


def write_dataset(root: str | os.PathLike, conversations: Sequence[dict] | None = None, split: str = "train", *,
                  media: bool = True, seconds: float = 0.2, sr: int = 16000, fps: float = 25,
                  size: tuple[int, int] = (96, 96), audio_template: str = AUDIO_TEMPLATE,
                  video_template: str = VIDEO_TEMPLATE, missing: Iterable[str] = (),
                  empty: Iterable[str] = ()) -> DatasetFiles:
    """Write {root}/{split}.json and (if `media`) one wav and one mp4 per utterance of every conversation.

    `missing`: paths relative to `root` not to write; `empty`: paths written as zero-byte files. Defaults to
    two conversations ("00001" with CoE, "00002" with CoE) of two turns each.
    """
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if conversations is None:
        conversations = [make_conversation("00001"), make_conversation("00002", emotion="sad")]
    json_path = root / f"{split}.json"
    json_path.write_text(json.dumps(list(conversations), indent=1))
    missing, empty = {os.path.normpath(m) for m in missing}, {os.path.normpath(e) for e in empty}
    files = DatasetFiles(root, json_path, [], [])
    if not media:
        return files
    for conv in conversations:
        for n in range(1, num_utterances(conv) + 1):
            fields = {"split": split, "conversation_id": str(conv["conversation_id"]), "n": n, "turn_id": "0"}
            for kind, template, out in (("audio", audio_template, files.audio),
                                        ("video", video_template, files.video)):
                rel = os.path.normpath(template.format(**fields))
                if rel in missing:
                    continue
                path = root / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                rate = sr if kind == "audio" else fps
                path.write_bytes(b"" if rel in empty else _clip_bytes(kind, seconds, rate, tuple(size)))
                out.append(path)
    return files
