"""Samples as plain records: what a pipeline source yields, whether it reads the raw dataset or array_record files.

A record is a JSON-able dict, one per turn (`avamerg.Turn`):

    {"index": int,                       # position of the turn in its split (`Split.turns` order)
     "conversation_id": str, "turn_id": str, "topic": str|None, "context": str|None,
     "speaker_profile":  {"age", "gender", "timbre": str|None, "avatar_id": int|None},
     "listener_profile": {...},
     "history":  [{"number": int, "role": str, "text": str, "audio": str|None, "video": str|None}, ...],
     "response": {"number", "role", "text", "audio", "video"},
     "coe": {"speaker_emotion", "event_scenario", "emotion_cause", "goal_to_response": str|None} | None,
     "media": {name: bytes}}             # only from array_record: the media files' bytes

`audio`/`video` name a media file: a path relative to the dataset root (`root` says where that is), or, when the
record carries `media`, a key of it. None: the reader found the file missing or unreadable.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any


def _relative(path: pathlib.Path | None, root: pathlib.Path) -> str | None:
    if path is None:
        return None
    try:
        return pathlib.Path(path).relative_to(root).as_posix()
    except ValueError:  # not under the root (cannot happen with the reader's containment checks)
        return os.fspath(path)


def _utterance(u, root: pathlib.Path) -> dict[str, Any]:
    return {"number": int(u.number), "role": u.role, "text": u.text,
            "audio": _relative(u.audio, root), "video": _relative(u.video, root)}


def _profile(p) -> dict[str, Any]:
    return {"age": p.age, "gender": p.gender, "timbre": p.timbre, "avatar_id": p.avatar_id}


def turn_record(turn, root: str | os.PathLike, index: int) -> dict[str, Any]:
    """The record of an `avamerg.Turn` read from the dataset at `root`."""
    root = pathlib.Path(root)
    return {
        "index": int(index), "conversation_id": turn.conversation_id, "turn_id": turn.turn_id,
        "topic": turn.topic, "context": turn.context,
        "speaker_profile": _profile(turn.speaker_profile), "listener_profile": _profile(turn.listener_profile),
        "history": [_utterance(u, root) for u in turn.history],
        "response": _utterance(turn.response, root),
        "coe": None if turn.coe is None else dataclasses.asdict(turn.coe),
    }


def split_records(split) -> list[dict[str, Any]]:
    """Records of every turn of an `avamerg.Split`, in `split.turns` order."""
    return [turn_record(t, split.root, i) for i, t in enumerate(split.turns)]


def media_names(record: dict[str, Any]) -> list[str]:
    """Every media name the record refers to (history then response; audio then video), without repeats."""
    names: list[str] = []
    for u in (*record["history"], record["response"]):
        for key in ("audio", "video"):
            if u[key] is not None and u[key] not in names:
                names.append(u[key])
    return names


def without_media(record: dict[str, Any]) -> dict[str, Any]:
    """The record minus its `media` bytes (what two sources must agree on)."""
    return {k: v for k, v in record.items() if k != "media"}


class RecordSource:
    """A grain random-access source over records held in memory (`len`, `[i]`); picklable for workers."""

    def __init__(self, records: list[dict[str, Any]], root: str | os.PathLike):
        self.records = records
        self.root = str(root)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.records[i]

    def __repr__(self) -> str:
        return f"RecordSource({len(self.records)} records, root={self.root!r})"


__all__ = ["RecordSource", "media_names", "split_records", "turn_record", "without_media"]
