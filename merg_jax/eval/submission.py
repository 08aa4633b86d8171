"""The ACM MM'25 MERG challenge submission: one JSON file of replies per conversation, and the reply media names.

    submission = build_submission(rows)            # rows: per-turn {conversation_id, turn_id, emotion, response}
    path = write_submission("out/sub", submission)  # out/sub/submission.json, written atomically
    validate_submission(path, media_dir="out/sub")  # SubmissionError naming the file and the field otherwise

Schema of submission.json (docs/submission.md has an example): a JSON list; each item is an object with exactly
the keys
    conversation_id  str, non-empty, usable in a file name (the media names contain it)
    emotion          str, one of merg_jax.labels.EMOTIONS_7 or EMOTIONS_32: the emotion predicted for the
                     conversation's last turn (the one with the whole dialogue as context)
    turns            non-empty list of objects with exactly the keys turn_id (str) and response (non-empty str)
no two items share a conversation_id, and no two turns of one conversation share a turn_id.

Media (optional for now; a later issue writes them): the reply of turn t (AvaMERG turn ids count from 0) is
utterance 2t + 2 of the conversation in AvaMERG numbering (DESIGN §2: utterances counted from 1; turn t's history
holds utterances 1..2t+1, speaker and listener alternating, and its reply is the next one), so its speech and
video are `dia{conversation_id}utt{2t+2}.wav|.mp4`, the dataset's own naming. `reply_media_name` builds these
names; `validate_submission(..., media_dir=)` checks that every such file that exists is a non-empty file.

Why this module validates so strictly: a challenge file is judged once, by someone else's script; a null reply or
a mistyped emotion found there costs a submission, found here costs a rerun.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import tempfile
from typing import Any, Iterable, Mapping, Sequence

from merg_jax.data.avamerg import as_id, is_name_component
from merg_jax.labels import EMOTIONS_7, EMOTIONS_32

__all__ = [
    "EMOTIONS", "MEDIA_EXTS", "SUBMISSION_FILE", "SubmissionConversation", "SubmissionError", "SubmissionTurn",
    "build_submission", "reply_media_name", "reply_utterance_number", "validate_submission", "write_submission",
]

SUBMISSION_FILE = "submission.json"
MEDIA_EXTS: tuple[str, ...] = ("wav", "mp4")
# The 7 multimodal emotions first, then the 32 text ones not already among them; order only matters for messages.
EMOTIONS: tuple[str, ...] = EMOTIONS_7 + tuple(e for e in EMOTIONS_32 if e not in EMOTIONS_7)

_CONVERSATION_KEYS = ("conversation_id", "emotion", "turns")
_TURN_KEYS = ("turn_id", "response")
_ROW_KEYS = ("conversation_id", "turn_id", "emotion", "response")
_NUMERIC = re.compile(r"[0-9]+")


class SubmissionError(ValueError):
    """An invalid submission; the message names the file and the exact field, e.g.
    "submission.json: [3].turns[0].response: expected a string, got null"."""


@dataclasses.dataclass(frozen=True)
class SubmissionTurn:
    turn_id: str
    response: str

    def to_json(self) -> dict[str, str]:
        return {"turn_id": self.turn_id, "response": self.response}


@dataclasses.dataclass(frozen=True)
class SubmissionConversation:
    conversation_id: str
    emotion: str
    turns: tuple[SubmissionTurn, ...]

    def to_json(self) -> dict[str, Any]:
        return {"conversation_id": self.conversation_id, "emotion": self.emotion,
                "turns": [t.to_json() for t in self.turns]}


def reply_utterance_number(turn_id: str | int) -> int:
    """AvaMERG utterance number (from 1) of turn `turn_id`'s reply: 2t + 2.

    Turn t's history is utterances 1..2t+1 (speaker first, alternating), so its reply is 2t + 2. This holds for the
    released data's alternation; where a reader has the turn itself, `Turn.response.number` (len(history) + 1) is
    the same number measured rather than assumed.
    """
    t = as_id(turn_id)
    if t is None or not _NUMERIC.fullmatch(t):
        raise ValueError(f"reply_utterance_number: turn_id {turn_id!r} is not a non-negative integer")
    return 2 * int(t) + 2


def reply_media_name(conversation_id: str | int, utterance_number: int, ext: str) -> str:
    """`dia{conversation_id}utt{utterance_number}.{ext}`: the dataset's media name, for our reply's wav / mp4.

    The conversation id is used as written (zero padding kept, as in the data), so our files sit beside the gold
    ones' names. ext is "wav" or "mp4" (a leading dot is accepted). ValueError for an id that could leave the
    directory ("/", "\\", "..") or a number < 1.
    """
    cid = as_id(conversation_id)
    if cid is None or not is_name_component(cid):
        raise ValueError(f"reply_media_name: conversation_id {conversation_id!r} is not usable in a file name")
    if isinstance(utterance_number, bool) or not isinstance(utterance_number, int) or utterance_number < 1:
        raise ValueError(f"reply_media_name: utterance_number must be an integer >= 1, got {utterance_number!r}")
    e = ext[1:] if ext.startswith(".") else ext
    if e not in MEDIA_EXTS:
        raise ValueError(f"reply_media_name: ext must be one of {list(MEDIA_EXTS)}, got {ext!r}")
    return f"dia{cid}utt{utterance_number}.{e}"


def build_submission(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per-turn predictions -> the submission list (not validated; `write_submission` validates).

    rows: {conversation_id, turn_id, emotion, response} per turn, ids as str or int (ints become decimal str).
    Conversations keep their first-seen order; within one, turns are sorted by int(turn_id) when every id is a
    decimal number (so "10" follows "9") and as strings otherwise. The conversation's emotion is the one predicted
    for its last turn after sorting: that turn sees the whole dialogue, and AvaMERG labels one emotion per
    dialogue. Raises SubmissionError for a row without one of the keys, an id that is neither str nor int, or the
    same turn twice.
    """
    convs: dict[str, list[tuple[str, Any, Any]]] = {}
    for i, row in enumerate(rows):
        for key in _ROW_KEYS:
            if key not in row:
                raise SubmissionError(f"rows[{i}]: missing key {key!r} (need {list(_ROW_KEYS)})")
        cid, tid = as_id(row["conversation_id"]), as_id(row["turn_id"])
        if cid is None:
            raise SubmissionError(f"rows[{i}].conversation_id: expected a string or integer, "
                                  f"got {_json_type(row['conversation_id'])}")
        if tid is None:
            raise SubmissionError(f"rows[{i}].turn_id: expected a string or integer, got {_json_type(row['turn_id'])}")
        turns = convs.setdefault(cid, [])
        if any(t == tid for t, _, _ in turns):
            raise SubmissionError(f"rows[{i}]: turn {tid!r} of conversation {cid!r} appears twice")
        turns.append((tid, row["emotion"], row["response"]))

    out = []
    for cid, turns in convs.items():
        if all(_NUMERIC.fullmatch(t) for t, _, _ in turns):
            turns = sorted(turns, key=lambda x: int(x[0]))
        else:
            turns = sorted(turns, key=lambda x: x[0])
        out.append({"conversation_id": cid, "emotion": turns[-1][1],
                    "turns": [{"turn_id": t, "response": r} for t, _, r in turns]})
    return out


def write_submission(out_dir: str | os.PathLike, submission: Sequence[Mapping[str, Any] | SubmissionConversation],
                     *, validate: bool = True) -> pathlib.Path:
    """Writes `out_dir/submission.json` (UTF-8, ensure_ascii=False, indent 2) atomically; returns its path.

    Atomic: the JSON goes to a temp file in the same directory, is fsync'ed, then `os.replace`d over the target, so
    a crash or a full disk leaves either the old file or the new one, never half a file, and no temp file behind.
    With validate (the default) an invalid submission raises SubmissionError before anything is written.
    """
    out = pathlib.Path(out_dir)
    target = out / SUBMISSION_FILE
    items = [c.to_json() if isinstance(c, SubmissionConversation) else c for c in submission]
    if validate:
        _validate(items, str(target), None)
    # Serialise before touching the disk: an unserialisable value then fails with nothing created.
    text = json.dumps(items, ensure_ascii=False, indent=2) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{SUBMISSION_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a submission is meant to be read by others
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target


def validate_submission(path_or_obj: str | os.PathLike | Sequence[Any], *,
                        media_dir: str | os.PathLike | None = None) -> None:
    """Raises SubmissionError (naming the file and the exact field) unless the submission follows the schema.

    path_or_obj: a submission.json path, a directory holding one, or the already-loaded list (named
    "submission (in memory)" in messages). media_dir: when given, each reply's `dia{id}utt{2t+2}.wav|.mp4` there
    that exists must be a non-empty regular file; missing media are allowed (media are optional for now), and turns
    whose turn_id is not a number have no media name, so are not checked.
    """
    if isinstance(path_or_obj, (str, os.PathLike)):
        path = pathlib.Path(path_or_obj)
        if path.is_dir():
            path = path / SUBMISSION_FILE
        name = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SubmissionError(f"{name}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise SubmissionError(f"{name}: unreadable: {e}") from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise SubmissionError(f"{name}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    else:
        name, obj = "submission (in memory)", path_or_obj
    _validate(obj, name, pathlib.Path(media_dir) if media_dir is not None else None)


def _validate(obj: Any, name: str, media_dir: pathlib.Path | None) -> None:
    def fail(where: str, message: str) -> None:
        raise SubmissionError(f"{name}: {where}: {message}" if where else f"{name}: {message}")

    if not isinstance(obj, list):
        fail("", f"expected a JSON list of conversations, got {_json_type(obj)}")
    if media_dir is not None and not media_dir.is_dir():
        fail("", f"media directory {str(media_dir)!r} does not exist")
    first_conv: dict[str, int] = {}
    for i, conv in enumerate(obj):
        at = f"[{i}]"
        _check_keys(conv, _CONVERSATION_KEYS, at, fail)
        cid = conv["conversation_id"]
        _check_str(cid, f"{at}.conversation_id", fail)
        if not is_name_component(cid):
            fail(f"{at}.conversation_id", f"{cid!r} cannot name media files (empty, '.', '..', or has '/' or '\\')")
        if cid in first_conv:
            fail(f"{at}.conversation_id", f"duplicate {cid!r} (first at [{first_conv[cid]}])")
        first_conv[cid] = i
        emotion = conv["emotion"]
        _check_str(emotion, f"{at}.emotion", fail)
        if emotion not in EMOTIONS:
            fail(f"{at}.emotion", f"{emotion!r} is not one of the 7 multimodal or 32 EmpatheticDialogues emotions "
                                  f"{list(EMOTIONS)}")
        turns = conv["turns"]
        if not isinstance(turns, list):
            fail(f"{at}.turns", f"expected a list, got {_json_type(turns)}")
        if not turns:
            fail(f"{at}.turns", "expected at least one turn, got an empty list")
        first_turn: dict[str, int] = {}
        first_number: dict[int, int] = {}
        for j, turn in enumerate(turns):
            tat = f"{at}.turns[{j}]"
            _check_keys(turn, _TURN_KEYS, tat, fail)
            tid = turn["turn_id"]
            _check_str(tid, f"{tat}.turn_id", fail)
            if tid in first_turn:
                fail(f"{tat}.turn_id", f"duplicate {tid!r} (first at {at}.turns[{first_turn[tid]}])")
            first_turn[tid] = j
            if _NUMERIC.fullmatch(tid):
                # "1" and "01" are different strings but the same reply utterance: their media would collide.
                k = first_number.setdefault(int(tid), j)
                if k != j:
                    fail(f"{tat}.turn_id", f"{tid!r} is the same turn number as {turns[k]['turn_id']!r} "
                                           f"at {at}.turns[{k}]")
            response = turn["response"]
            _check_str(response, f"{tat}.response", fail)
            if not response.strip():
                fail(f"{tat}.response", "expected a non-empty string, got an empty or blank one")
            if media_dir is not None and _NUMERIC.fullmatch(tid):
                for ext in MEDIA_EXTS:
                    media = media_dir / reply_media_name(cid, reply_utterance_number(tid), ext)
                    if not media.exists():
                        continue
                    if not media.is_file():
                        fail(f"{tat}", f"reply media {str(media)!r} is not a regular file")
                    if media.stat().st_size == 0:
                        fail(f"{tat}", f"reply media {str(media)!r} is empty (0 bytes)")


def _check_keys(value: Any, keys: tuple[str, ...], at: str, fail) -> None:
    if not isinstance(value, dict):
        fail(at, f"expected an object with keys {list(keys)}, got {_json_type(value)}")
    for key in keys:
        if key not in value:
            fail(at, f"missing key {key!r}")
    extra = [k for k in value if k not in keys]
    if extra:
        fail(at, f"unexpected key {extra[0]!r} (allowed: {list(keys)})")


def _check_str(value: Any, at: str, fail) -> None:
    if not isinstance(value, str):
        fail(at, f"expected a string, got {_json_type(value)}")


def _json_type(value: Any) -> str:
    """The JSON name of a value's type, as the file's reader sees it ("null", not "NoneType")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
