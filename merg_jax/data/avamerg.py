"""AvaMERG reader: a split JSON (DESIGN §2) -> typed, immutable records with resolved media paths.

    split = read_split("data/avamerg", "train")          # {root}/train.json + media under {root}/train/
    for turn in split.turns:                             # one training sample per turn
        turn.history[-1].text, turn.response.text, turn.response.audio, turn.coe.speaker_emotion
    split.problems                                       # every missing/empty/unreadable file, bad field, unsafe path

Leniency: unknown fields are ignored; absent optional fields become None (the test split has no
chain_of_empathy); ids may be numbers or strings (conversation_id and turn_id become str, zero padding kept as
written — a template can re-pad numeric ids, e.g. "dia{conversation_id:0>5}utt{n}.wav"); history entries may be
objects or bare strings. Problems: in normal mode every problem is recorded in `Split.problems` and the affected
item is skipped (a bad media file -> that media is None; a malformed turn or conversation -> left out); with
`strict=True` the first problem raises DataError naming the file (and the conversation/field).

Safety: media paths come from templates filled with values from the JSON. A path that would leave the dataset
root — "../" components, an absolute template, a symlink resolving outside the root, a conversation id that
is not a single file-name component — is reported as Problem(kind="unsafe_path") naming the id/template and the
path, and is never opened (DataError in strict mode). Nothing outside the root is read.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import string
import sys
from typing import Any, Iterator

log = logging.getLogger(__name__)

DEFAULT_AUDIO_TEMPLATE = "{split}/audio/dia{conversation_id}utt{n}.wav"
DEFAULT_VIDEO_TEMPLATE = "{split}/video/dia{conversation_id}utt{n}.mp4"
DEFAULT_JSON_NAME = "{split}.json"
SPLITS = ("train", "valid", "test")
TEMPLATE_FIELDS = ("split", "conversation_id", "n", "turn_id")
PROBLEM_KINDS = ("missing", "empty", "unreadable", "field", "unsafe_path")
CHECK_MEDIA = ("none", "exists", "decode")


class DataError(ValueError):
    """Bad input data: the message names the file (and the conversation/field when it is a JSON problem)."""


@dataclasses.dataclass(frozen=True)
class Profile:
    age: str | None = None
    gender: str | None = None
    timbre: str | None = None
    avatar_id: int | None = None  # JSON "ID": the avatar identity 0..64


@dataclasses.dataclass(frozen=True)
class ChainOfEmpathy:
    speaker_emotion: str | None = None
    event_scenario: str | None = None
    emotion_cause: str | None = None
    goal_to_response: str | None = None


@dataclasses.dataclass(frozen=True)
class Utterance:
    number: int  # n: position in the conversation's dialogue, from 1 (history index + 1)
    role: str  # "speaker" | "listener" as written (inferred by alternation when absent)
    text: str
    audio: pathlib.Path | None  # None when missing/unreadable/unsafe (a Problem says why)
    video: pathlib.Path | None


@dataclasses.dataclass(frozen=True)
class Turn:
    """One training sample: the dialogue so far and the listener's reply (utterance len(history) + 1)."""

    conversation_id: str
    turn_id: str
    topic: str | None
    context: str | None
    speaker_profile: Profile
    listener_profile: Profile
    history: tuple[Utterance, ...]
    response: Utterance  # its audio/video are the gold speech and talking-face video
    coe: ChainOfEmpathy | None


@dataclasses.dataclass(frozen=True)
class Conversation:
    conversation_id: str
    topic: str | None
    speaker_profile: Profile
    listener_profile: Profile
    turns: tuple[Turn, ...]

    @property
    def utterances(self) -> tuple[Utterance, ...]:
        """Every distinct utterance (by number) across the turns, in dialogue order; first occurrence wins."""
        seen: dict[int, Utterance] = {}
        for turn in self.turns:
            for u in (*turn.history, turn.response):
                seen.setdefault(u.number, u)
        return tuple(seen[n] for n in sorted(seen))


@dataclasses.dataclass(frozen=True)
class Problem:
    path: str  # the media file, or the JSON file for kind "field"
    kind: str  # one of PROBLEM_KINDS
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}: {self.message}"


@dataclasses.dataclass(frozen=True)
class Split:
    name: str
    root: pathlib.Path  # resolved dataset root
    conversations: tuple[Conversation, ...]
    problems: tuple[Problem, ...]
    json_path: pathlib.Path | None = None  # the split JSON that was read

    @property
    def turns(self) -> tuple[Turn, ...]:
        return tuple(t for c in self.conversations for t in c.turns)


def read_split(root: str | os.PathLike, split: str, *, audio_template: str = DEFAULT_AUDIO_TEMPLATE,
               video_template: str = DEFAULT_VIDEO_TEMPLATE, json_name: str = DEFAULT_JSON_NAME,
               strict: bool = False, check_media: str = "exists", progress: bool = False) -> Split:
    """Read split `split` of the AvaMERG dataset at `root`.

    Templates are `str.format` strings over the fields split, conversation_id (str), n (int, utterance number
    from 1) and turn_id (str), relative to `root`. `check_media`: "none" (paths only, no file access beyond
    resolving links), "exists" (file exists and is non-empty; the default), "decode" (decodes every file — slow:
    one ffmpeg run per video). `progress` shows a tqdm bar over conversations on a terminal.

    Raises DataError for a bad argument, an unreadable/unsafe JSON file, or (strict) the first problem.
    """
    reader = _Reader(root, split, audio_template=audio_template, video_template=video_template,
                     json_name=json_name, strict=strict, check_media=check_media)
    return reader.read(progress=progress)


DIALOGUE_MEDIA_TEMPLATES = {"audio": "dia{conversation_id}utt{n}.wav", "video": "dia{conversation_id}utt{n}.mp4"}


def read_dialogue_file(path: str | os.PathLike, *, media_root: str | os.PathLike | None = None,
                       audio_template: str = DIALOGUE_MEDIA_TEMPLATES["audio"],
                       video_template: str = DIALOGUE_MEDIA_TEMPLATES["video"], strict_fields: bool = True,
                       check_media: str = "exists") -> Split:
    """Conversations to answer, from a JSON file in the AvaMERG schema: one conversation object or a list of them.
    A turn's `response` may be absent (it is what the model writes). Media are looked up under `media_root`
    (default: the file's folder) by the templates; missing ones are `Split.problems` of kind missing/empty (the
    clip is then text only). With `strict_fields`, a malformed field raises `DataError` naming the file and the
    field."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"{path}: dialogue file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the dialogue file: {e}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON: {e}") from None
    reader = _Reader(media_root if media_root is not None else path.parent, "respond", audio_template=audio_template,
                     video_template=video_template, json_name=DEFAULT_JSON_NAME, strict=False,
                     check_media=check_media, json_path=path, require_response=False)
    conversations: list[Conversation] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(data if isinstance(data, list) else [data]):
        conv = reader._conversation(i, raw, seen)
        if conv is not None:
            conversations.append(conv)
    fields = [p for p in reader.problems if p.kind in ("field", "unsafe_path")]
    if strict_fields and fields:
        raise DataError(f"{fields[0].path}: {fields[0].message}")
    return Split("respond", reader.root, tuple(conversations), tuple(reader.problems), path)


def available_splits(root: str | os.PathLike, json_name: str = DEFAULT_JSON_NAME) -> list[str]:
    """The standard splits (train, valid, test) whose JSON file exists under `root`."""
    root = pathlib.Path(root)
    return [s for s in SPLITS if (root / json_name.format(split=s)).is_file()]


def check_template(template: str, what: str) -> None:
    """DataError unless `template` is a format string over TEMPLATE_FIELDS only."""
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise DataError(f"{what} {template!r} is not a valid format string: {e}") from None
    unknown = {n.split(".")[0].split("[")[0] for n in names} - set(TEMPLATE_FIELDS)
    if unknown or "" in names:
        raise DataError(f"{what} {template!r} uses unknown field(s) {sorted(unknown) or ['{}']}; "
                        f"allowed: {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}")


class _Reader:
    """One read of one split; collects problems (or raises at the first one when strict)."""

    def __init__(self, root, split: str, *, audio_template: str, video_template: str, json_name: str,
                 strict: bool, check_media: str, json_path: pathlib.Path | None = None,
                 require_response: bool = True):
        if check_media not in CHECK_MEDIA:
            raise DataError(f"check_media={check_media!r}: expected one of {CHECK_MEDIA}")
        if not isinstance(split, str) or not split:
            raise DataError(f"split name must be a non-empty string, got {split!r}")
        check_template(audio_template, "audio_template")
        check_template(video_template, "video_template")
        check_template(json_name, "json_name")
        root_path = pathlib.Path(root)
        if not root_path.is_dir():
            raise DataError(f"{root_path}: dataset root is not a directory")
        self.root = root_path.resolve()
        self._root_s = os.fspath(self.root)
        self.split = split
        self.templates = {"audio": audio_template, "video": video_template}
        self.strict = strict
        self.check_media = check_media
        self.problems: list[Problem] = []
        self._media_cache: dict[tuple[str, str], pathlib.Path | None] = {}
        self._dir_cache: dict[str, str] = {}
        self.require_response = require_response
        if json_path is not None:  # a dialogue file given by the user: only the media must stay inside the root
            self.json_path = pathlib.Path(json_path)
            return
        rel = json_name.format(split=split, conversation_id="", n=0, turn_id="")
        json_path = self._contained(rel)
        if json_path is None:
            raise DataError(f"split JSON {rel!r} (json_name {json_name!r}, split {split!r}) is outside the "
                            f"dataset root {self.root}; not read")
        self.json_path = json_path

    # ------------------------------------------------------------------------------------------- problems

    def _report(self, path, kind: str, message: str) -> None:
        problem = Problem(str(path), kind, message)
        if self.strict:
            raise DataError(f"{problem.path}: {kind}: {message}")
        self.problems.append(problem)

    def _field(self, where: str, message: str) -> None:
        self._report(self.json_path, "field", f"{where}: {message}")

    # ------------------------------------------------------------------------------------------- reading

    def read(self, progress: bool = False) -> Split:
        try:
            with open(self.json_path, encoding="utf-8-sig") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise DataError(f"{self.json_path}: split JSON not found (split {self.split!r})") from None
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{self.json_path}: cannot read split JSON: {e}") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{self.json_path}: not valid JSON: {e}") from None

        conversations: list[Conversation] = []
        if not isinstance(data, list):
            self._field("top level", f"expected a list of conversations, got {_type(data)}")
        else:
            seen: dict[str, int] = {}
            items = enumerate(data)
            if progress:
                from tqdm import tqdm

                # disable=None: only on a terminal, so logs and CI output stay clean.
                items = tqdm(items, total=len(data), desc=f"{self.split}: reading", unit="conv", disable=None,
                             file=sys.stderr)
            for i, raw in items:
                conv = self._conversation(i, raw, seen)
                if conv is not None:
                    conversations.append(conv)
        split = Split(self.split, self.root, tuple(conversations), tuple(self.problems), self.json_path)
        if self.problems:
            log.warning("%s: %d problem(s) reading split %r (first: %s)", self.json_path, len(self.problems),
                        self.split, self.problems[0])
        return split

    def _conversation(self, i: int, raw: Any, seen: dict[str, int]) -> Conversation | None:
        where = f"conversation #{i}"
        if not isinstance(raw, dict):
            self._field(where, f"expected an object, got {_type(raw)}")
            return None
        cid = as_id(raw.get("conversation_id"))
        if cid is None:
            self._field(where, f"field 'conversation_id': expected a string or integer, "
                               f"got {_type(raw.get('conversation_id'))}")
            return None
        where = f"conversation {cid!r} (#{i})"
        if not is_name_component(cid):
            self._report(self.json_path, "unsafe_path",
                         f"{where}: conversation_id {cid!r} is not a plain file-name part (path separators, "
                         f"'..' or NUL) and could place media paths outside the dataset root {self.root}; "
                         f"conversation skipped, none of its media read")
            return None
        if cid in seen:
            self._field(where, f"duplicate conversation_id {cid!r} (first at #{seen[cid]}); skipped")
            return None
        seen[cid] = i

        topic = self._opt_str(raw, "topic", where)
        speaker = self._profile(raw, "speaker_profile", where)
        listener = self._profile(raw, "listener_profile", where)
        raw_turns = raw.get("turns")
        if not isinstance(raw_turns, list) or not raw_turns:
            got = "an empty list" if isinstance(raw_turns, list) else _type(raw_turns)
            self._field(where, f"field 'turns': expected a non-empty list of turns, got {got}; skipped")
            return None
        turns = []
        for j, raw_turn in enumerate(raw_turns):
            turn = self._turn(cid, j, raw_turn, where, topic, speaker, listener)
            if turn is not None:
                turns.append(turn)
        if not turns:
            return None  # each bad turn was reported already
        return Conversation(cid, topic, speaker, listener, tuple(turns))

    def _turn(self, cid: str, j: int, raw: Any, where: str, topic, speaker: Profile,
              listener: Profile) -> Turn | None:
        at = f"turns[{j}]"
        if not isinstance(raw, dict):
            self._field(where, f"field '{at}': expected an object, got {_type(raw)}; turn skipped")
            return None
        turn_id = as_id(j if raw.get("turn_id") is None else raw["turn_id"])
        if turn_id is None:
            self._field(where, f"field '{at}.turn_id': expected a string or integer, got {_type(raw['turn_id'])}; "
                               f"turn skipped")
            return None
        context = self._opt_str(raw, "context", where, at)
        raw_history = raw.get("dialogue_history", [])
        if not isinstance(raw_history, list):
            self._field(where, f"field '{at}.dialogue_history': expected a list, got {_type(raw_history)}; "
                               f"turn skipped")
            return None
        parsed = []
        for k, entry in enumerate(raw_history):
            item = self._history_entry(entry, k, where, f"{at}.dialogue_history[{k}]")
            if item is None:
                return None
            parsed.append(item)
        response_text = raw.get("response")
        if isinstance(response_text, dict):  # some dumps store the reply like a history entry
            response_text = response_text.get("utterance")
        if response_text is None and not self.require_response:  # a turn to answer
            response_text = ""
        if not isinstance(response_text, str):
            self._field(where, f"field '{at}.response': expected a string, got {_type(response_text)}; "
                               f"turn skipped")
            return None
        coe = self._coe(raw, where, at)

        history = tuple(self._utterance(cid, turn_id, k + 1, role, text) for k, (role, text) in enumerate(parsed))
        response = self._utterance(cid, turn_id, len(parsed) + 1, "listener", response_text)
        return Turn(cid, turn_id, topic, context, speaker, listener, history, response, coe)

    def _history_entry(self, entry: Any, k: int, where: str, at: str) -> tuple[str, str] | None:
        default_role = "speaker" if k % 2 == 0 else "listener"  # AvaMERG dialogues alternate, speaker first
        if isinstance(entry, str):
            return default_role, entry
        if not isinstance(entry, dict):
            self._field(where, f"field '{at}': expected an object or string, got {_type(entry)}; turn skipped")
            return None
        text = entry.get("utterance")
        if not isinstance(text, str):
            self._field(where, f"field '{at}.utterance': expected a string, got {_type(text)}; turn skipped")
            return None
        role = entry.get("role", default_role)
        if not isinstance(role, str):
            self._field(where, f"field '{at}.role': expected a string, got {_type(role)}; turn skipped")
            return None
        index = entry.get("index", k)
        if isinstance(index, bool) or not isinstance(index, int) or index != k:
            # n is taken from the position in the list; a disagreeing index means the file is inconsistent.
            self._field(where, f"field '{at}.index': {index!r} differs from its position {k} in the history "
                               f"(utterance number n = position + 1 is used)")
        return role, text

    def _utterance(self, cid: str, turn_id: str, n: int, role: str, text: str) -> Utterance:
        fields = {"split": self.split, "conversation_id": cid, "n": n, "turn_id": turn_id}
        return Utterance(n, role, text, self._media("audio", fields), self._media("video", fields))

    def _opt_str(self, raw: dict, key: str, where: str, at: str | None = None) -> str | None:
        value = raw.get(key)
        if value is None or isinstance(value, str):
            return value
        self._field(where, f"field '{at + '.' if at else ''}{key}': expected a string, got {_type(value)}; "
                           f"treated as absent")
        return None

    def _profile(self, raw: dict, key: str, where: str) -> Profile:
        value = raw.get(key)
        if value is None:
            return Profile()
        if not isinstance(value, dict):
            self._field(where, f"field '{key}': expected an object, got {_type(value)}; treated as absent")
            return Profile()
        avatar = value.get("ID")
        if isinstance(avatar, str) and avatar.strip().isdigit():
            avatar = int(avatar)
        if avatar is not None and (isinstance(avatar, bool) or not isinstance(avatar, int)):
            self._field(where, f"field '{key}.ID': expected an integer, got {_type(avatar)}; treated as absent")
            avatar = None
        return Profile(self._opt_str(value, "age", where, key), self._opt_str(value, "gender", where, key),
                       self._opt_str(value, "timbre", where, key), avatar)

    def _coe(self, raw: dict, where: str, at: str) -> ChainOfEmpathy | None:
        value = raw.get("chain_of_empathy")
        if value is None:
            return None
        key = f"{at}.chain_of_empathy"
        if not isinstance(value, dict):
            self._field(where, f"field '{key}': expected an object, got {_type(value)}; treated as absent")
            return None
        return ChainOfEmpathy(*(self._opt_str(value, f.name, where, key)
                                for f in dataclasses.fields(ChainOfEmpathy)))

    # ------------------------------------------------------------------------------------------- media

    def _media(self, kind: str, fields: dict) -> pathlib.Path | None:
        template = self.templates[kind]
        rel = template.format(**fields)
        key = (kind, rel)
        if key in self._media_cache:
            return self._media_cache[key]
        path = self._contained(rel)
        if path is None:
            shown = os.path.normpath(os.path.join(self.root, rel))
            self._report(shown, "unsafe_path",
                         f"{kind} path {rel!r} of conversation {fields['conversation_id']!r} utterance "
                         f"{fields['n']} (template {template!r}) is outside the dataset root {self.root}; not read")
        elif not self._media_ok(kind, path):
            path = None
        self._media_cache[key] = path
        return path

    def _contained(self, rel: str) -> pathlib.Path | None:
        """root/rel if it stays inside the root both lexically and after resolving symlinks; else None.

        The lexical test comes first so an absolute or '../' path is rejected without touching the filesystem;
        the resolved test catches symlinks (inside the root) that point outside it. Only lstat/readlink are used
        (os.path.realpath), nothing is opened.
        """
        if "\x00" in rel or os.path.isabs(rel):
            return None
        lexical = os.path.normpath(os.path.join(self._root_s, rel))
        if not _inside(lexical, self._root_s):
            return None
        # realpath(dir/name) == realpath(dir)/name unless name itself is a link: resolving each directory once
        # (not every file) keeps a 300k-file split fast.
        parent, name = os.path.split(lexical)
        real_parent = self._dir_cache.get(parent)
        if real_parent is None:
            real_parent = self._dir_cache[parent] = os.path.realpath(parent)
        resolved = os.path.join(real_parent, name)
        if os.path.islink(resolved):
            resolved = os.path.realpath(resolved)
        if not _inside(resolved, self._root_s):
            return None
        return pathlib.Path(lexical)

    def _media_ok(self, kind: str, path: pathlib.Path) -> bool:
        if self.check_media == "none":
            return True
        from merg_jax.data import media  # lazy: media imports this module (DataError)

        try:
            if self.check_media == "exists":
                media.check_file(path)
            elif kind == "audio":
                wave, _ = media.read_wav(path)
                if wave.shape[0] == 0:
                    raise media.MediaError(path, "empty", "audio has no samples")
            else:
                media.read_video(path)
        except media.MediaError as e:
            self._report(e.path, e.kind, f"{kind}: {e.reason}")
            return False
        return True


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def is_name_component(value: str) -> bool:
    """Whether `value` can be one part of a file name: no path separator, NUL, '.' or '..'."""
    return bool(value) and value not in (".", "..") and not any(c in value for c in ("/", "\\", "\x00"))


def as_id(value: Any) -> str | None:
    """A conversation/turn id as str: strings as written (zero padding kept), integers in decimal."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _type(value: Any) -> str:
    return "nothing (absent)" if value is None else type(value).__name__


def iter_media(split: Split) -> Iterator[tuple[str, pathlib.Path]]:
    """("audio" | "video", path) for every distinct media file the split's utterances point to, in order."""
    seen: set[pathlib.Path] = set()
    for conv in split.conversations:
        for turn in conv.turns:
            for u in (*turn.history, turn.response):
                for kind, path in (("audio", u.audio), ("video", u.video)):
                    if path is not None and path not in seen:
                        seen.add(path)
                        yield kind, path
