"""The prompt and the Chain-of-Empathy (CoE) target, as text and as token ids with a loss mask and media slots.

Prompt (DESIGN §1, the authors' Vicuna-v0 style), one line per history utterance, oldest first:

    {SYSTEM_PROMPT}

    Human: <Aud> <Vid> {speaker utterance}
    ### Assistant: <Aud> <Vid> {listener utterance}
    Human: <Aud> <Vid> {speaker utterance}
    ### Assistant:

Target with the chain (`chain=True`), what the model writes after "### Assistant:" (it starts with a space):

     Firstly, the event scenario: {event_scenario} Secondly, the speaker feels <emo> {speaker_emotion} </emo>.
     The emotion cause: {emotion_cause} The goal to response: {goal_to_response} Finally, <response> {reply}
     </response>

(one line in reality; single spaces between the clauses). A clause whose field is unknown (None, e.g. a test
split without CoE annotations) is left out; the reply clause is always there. Without the chain (`chain=False`,
the paper's "w/o CoE" ablation) the target is just " {reply}". `parse_target` reads any of these back (and what a
model writes, tolerating missing clauses) into a dict.

Token ids (`encode_example`): `<s>` prompt target `</s>`. Every piece of dialogue text is tokenized with special
strings read as plain text, and the marker tokens are inserted by id, so a user typing "<Aud>" creates no media
slot. The pieces are tokenized separately and concatenated, so the ids of a prompt do not depend on what follows
it; inference must build its prompt with `encode_prompt` (not `tokenizer.encode` of the rendered text) to see the
exact ids training saw. With a byte-level tokenizer, `tokenizer.decode` of the target ids gives back exactly
`render_target(...)`; a sentencepiece tokenizer (LLaMA) may add a space in front of each piece.

`media_tokens` is how many `<Aud>` (then `<Vid>`) tokens each utterance gets: 1 (`True`, the paper: one
embedding per clip), n (a resampler's n tokens per clip, placed in order) or 0 (`False`, the text-only ablation).
Each `<Aud>`/`<Vid>` token records its clip: the index c (0-based, oldest first) of its utterance among the history
utterances kept in the prompt; the pipeline puts that utterance's features at `audio_mel[c]` / `video_frames[c]`.
A history longer than `max_clips` utterances, or than the token budget, loses its oldest utterances first; if the
target alone does not fit, it is cut at the end (`truncated`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from merg_jax.data.tokenizer import AUD, EMO, EMO_END, RESPONSE, RESPONSE_END, VID, TextTokenizer

SYSTEM_PROMPT = (
    "A conversation between a person who shares an experience (Human) and an empathetic listener (Assistant). "
    "Each utterance comes with its speaker's voice and face. The Assistant first works out the event scenario, "
    "the speaker's emotion, the cause of that emotion and the goal of the response, then replies with empathy.")
HUMAN, ASSISTANT = "Human:", "### Assistant:"
LISTENER_ROLE = "listener"

# Clause openers of the CoE target, in order. Field -> the text right before its value.
CLAUSES: tuple[tuple[str, str], ...] = (
    ("event_scenario", "Firstly, the event scenario:"),
    ("emotion", "Secondly, the speaker feels"),
    ("emotion_cause", "The emotion cause:"),
    ("goal_to_response", "The goal to response:"),
    ("reply", "Finally,"),
)
TARGET_FIELDS: tuple[str, ...] = tuple(name for name, _ in CLAUSES)
COE_KEYS = {"event_scenario": "event_scenario", "emotion": "speaker_emotion", "emotion_cause": "emotion_cause",
            "goal_to_response": "goal_to_response"}

# A piece of a template: text, or one special token (by its string).
Piece = tuple[str, str]  # ("text", s) | ("special", token)


def _get(obj: Any, key: str, default=None):
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def coe_fields(coe: Any) -> dict[str, str | None]:
    """{event_scenario, emotion, emotion_cause, goal_to_response} of a `ChainOfEmpathy`, a record dict or None."""
    return {field: _get(coe, key) for field, key in COE_KEYS.items()}


# ------------------------------------------------------------------------------------------------ pieces


def media_slots(media_tokens: int | bool) -> int:
    """Placeholder tokens per clip and modality: `True` → 1 (the paper's one embedding per clip), `False` → 0 (the
    text-only ablation), an int n → n (a resampler's n tokens per clip)."""
    n = int(media_tokens)
    if n < 0 or float(media_tokens) != n:
        raise ValueError(f"media_tokens={media_tokens!r} must be a bool or a non-negative int (tokens per clip)")
    return n


def utterance_pieces(role: str, text: str, *, media_tokens: int | bool = True) -> list[Piece]:
    tag = ASSISTANT if role == LISTENER_ROLE else HUMAN
    n = media_slots(media_tokens)
    if not n:
        return [("text", f"{tag} {text}\n")]
    return ([("text", f"{tag} ")] + [("special", AUD)] * n + [("text", " ")] + [("special", VID)] * n
            + [("text", f" {text}\n")])


def target_pieces(reply: str, coe: Any = None, *, chain: bool = True) -> list[Piece]:
    if not chain:
        return [("text", f" {reply}")]
    f = coe_fields(coe)
    out: list[Piece] = []
    if f["event_scenario"] is not None:
        out.append(("text", f" Firstly, the event scenario: {f['event_scenario']}"))
    if f["emotion"] is not None:
        out += [("text", " Secondly, the speaker feels "), ("special", EMO), ("text", f" {f['emotion']} "),
                ("special", EMO_END), ("text", ".")]
    if f["emotion_cause"] is not None:
        out.append(("text", f" The emotion cause: {f['emotion_cause']}"))
    if f["goal_to_response"] is not None:
        out.append(("text", f" The goal to response: {f['goal_to_response']}"))
    out += [("text", " Finally, "), ("special", RESPONSE), ("text", f" {reply} "), ("special", RESPONSE_END)]
    return out


def _render(pieces: Sequence[Piece]) -> str:
    return "".join(s for _, s in pieces)


def render_prompt(history: Sequence[tuple[str, str]], *, system_prompt: str = SYSTEM_PROMPT,
                  media_tokens: int | bool = True) -> str:
    """The prompt as text; `history` is (role, text) pairs, oldest first."""
    pieces: list[Piece] = [("text", f"{system_prompt}\n\n")]
    for role, text in history:
        pieces += utterance_pieces(role, text, media_tokens=media_tokens)
    pieces.append(("text", ASSISTANT))
    return _render(pieces)


def render_target(reply: str, coe: Any = None, *, chain: bool = True) -> str:
    """The target as text (starts with a space; no end-of-sequence token)."""
    return _render(target_pieces(reply, coe, chain=chain))


# ------------------------------------------------------------------------------------------------ parsing

_EMO_RE = re.compile(re.escape(EMO) + r"(.*?)(?:" + re.escape(EMO_END) + r"|$)", re.S)
_FINALLY = dict(CLAUSES)["reply"]


def _find_clauses(text: str) -> list[tuple[str, int, int]]:
    """(field, where its clause begins, where its value begins) of the clauses present, scanning in order."""
    found: list[tuple[str, int, int]] = []
    pos = 0
    for field, opener in CLAUSES:
        begin = text.find(opener, pos)
        value_start = begin + len(opener)
        if field == "emotion" and begin < 0:
            begin = value_start = text.find(EMO, pos)
        elif field == "reply":
            r = text.find(RESPONSE, pos)
            if r >= 0:  # "<response>" decides; "Finally," counts only right in front of it
                f = text.rfind(_FINALLY, pos, r)
                begin = f if f >= 0 and not text[f + len(_FINALLY):r].strip() else r
                value_start = r + len(RESPONSE)
        if begin >= 0:
            found.append((field, begin, value_start))
            pos = value_start
    return found


def parse_target(text: str) -> dict[str, str | None]:
    """Fields of a (generated) target: {event_scenario, emotion, emotion_cause, goal_to_response, reply}; a field
    whose clause is absent is None.

    The clauses are looked for in their order; a value runs from its clause's opener to the next clause found
    (so any clause may be missing). The emotion is the text inside `<emo> ... </emo>`, the reply the text inside
    `<response> ... </response>` (to the end when the closing tag is missing). Text with no CoE marker at all is
    a bare reply (the no-CoE target). Values are stripped of surrounding whitespace.
    """
    text = text.replace("</s>", "")
    out: dict[str, str | None] = dict.fromkeys(TARGET_FIELDS)
    found = _find_clauses(text)
    if not found:
        bare = text.strip()
        out["reply"] = bare or None
        return out
    for k, (field, _, value_start) in enumerate(found):
        end = found[k + 1][1] if k + 1 < len(found) else len(text)
        value = text[value_start:end]
        if field == "emotion":
            m = _EMO_RE.search(value)
            value = m.group(1) if m else value.strip().rstrip(".")
        elif field == "reply":
            j = value.find(RESPONSE_END)
            value = value[:j] if j >= 0 else value
        out[field] = value.strip()
    return out


# ------------------------------------------------------------------------------------------------ encoding


@dataclasses.dataclass(frozen=True)
class EncodedExample:
    """One turn as token ids, all arrays of the same length n (the whole sequence, before the shift by one).

    tokens     int32 [n]  `<s>` prompt target `</s>`
    loss_mask  int32 [n]  1 on the target's tokens and the final `</s>` (what the model must write), else 0
    media_clip int32 [n]  clip index c at each `<Aud>`/`<Vid>`, -1 elsewhere
    media_kind int32 [n]  1 at `<Aud>`, 2 at `<Vid>`, 0 elsewhere
    clip_history_index    the history index (0-based position in the turn's full history) of clip c
    target_text           the target as text (`render_target`, before any cut)
    dropped               history utterances left out (too many for max_clips or the token budget)
    truncated             the target was cut to fit
    """

    tokens: np.ndarray
    loss_mask: np.ndarray
    media_clip: np.ndarray
    media_kind: np.ndarray
    clip_history_index: tuple[int, ...]
    target_text: str
    dropped: int = 0
    truncated: bool = False

    @property
    def prompt_length(self) -> int:
        nz = np.flatnonzero(self.loss_mask)
        return int(nz[0]) if nz.size else len(self.tokens)


def _encode_pieces(tok: TextTokenizer, pieces: Sequence[Piece]) -> tuple[list[int], list[int]]:
    """(ids, media kind per id) of pieces; text pieces read special strings as plain text."""
    ids: list[int] = []
    kinds: list[int] = []
    for kind, s in pieces:
        if kind == "special":
            ids.append(tok.special_ids[s] if s in tok.special_ids else tok.token_to_id(s))
            kinds.append(1 if s == AUD else 2 if s == VID else 0)
        else:
            piece = tok.encode(s, parse_specials=False)
            ids += piece
            kinds += [0] * len(piece)
    return ids, kinds


def _history_items(history: Sequence[Any]) -> list[tuple[str, str]]:
    out = []
    for u in history:
        if isinstance(u, tuple):
            out.append((str(u[0]), str(u[1])))
        else:
            out.append((str(_get(u, "role", "")), str(_get(u, "text", ""))))
    return out


def encode_example(tok: TextTokenizer, history: Sequence[Any], reply: str | None, coe: Any = None, *,
                   max_len: int, max_clips: int, chain: bool = True, media_tokens: int | bool = True,
                   system_prompt: str = SYSTEM_PROMPT) -> EncodedExample:
    """A turn as `EncodedExample` of at most `max_len + 1` tokens (so that inputs and targets, shifted by one,
    have `max_len` each). `history`: `Utterance`s, record dicts or (role, text) pairs, oldest first; `reply=None`
    encodes the prompt only (`encode_prompt`)."""
    items = _history_items(history)
    head, _ = _encode_pieces(tok, [("text", f"{system_prompt}\n\n")])
    head = [tok.bos_id] + head
    tail, _ = _encode_pieces(tok, [("text", ASSISTANT)])
    utts = [_encode_pieces(tok, utterance_pieces(r, t, media_tokens=media_tokens)) for r, t in items]
    target_text = "" if reply is None else render_target(reply, coe, chain=chain)
    target: list[int] = []
    if reply is not None:
        target, _ = _encode_pieces(tok, target_pieces(reply, coe, chain=chain))
        target = target + [tok.eos_id]
    budget = max_len + 1
    fixed = len(head) + len(tail)
    if fixed >= budget:
        raise ValueError(f"max_len={max_len} leaves no room for a turn: the system prompt and the final "
                         f"'{ASSISTANT}' alone take {fixed} tokens")
    # Keep the newest utterances that fit, at most max_clips of them.
    first = len(utts)
    used = fixed + len(target)
    while first > 0 and len(utts) - first < max_clips and used + len(utts[first - 1][0]) <= budget:
        first -= 1
        used += len(utts[first][0])
    truncated = False
    if used > budget:  # no history fits beside the whole target: cut the target
        target = target[:budget - fixed]
        truncated = True
    ids = list(head)
    kinds = [0] * len(head)
    clips = [-1] * len(head)
    for c, k in enumerate(range(first, len(utts))):
        u_ids, u_kinds = utts[k]
        ids += u_ids
        kinds += u_kinds
        clips += [c if kd else -1 for kd in u_kinds]
    ids += tail
    kinds += [0] * len(tail)
    clips += [-1] * len(tail)
    mask = [0] * len(ids) + [1] * len(target)
    ids += target
    kinds += [0] * len(target)
    clips += [-1] * len(target)
    return EncodedExample(
        tokens=np.asarray(ids, np.int32), loss_mask=np.asarray(mask, np.int32),
        media_clip=np.asarray(clips, np.int32), media_kind=np.asarray(kinds, np.int32),
        clip_history_index=tuple(range(first, len(utts))), target_text=target_text,
        dropped=first, truncated=truncated)


def encode_prompt(tok: TextTokenizer, history: Sequence[Any], *, max_len: int, max_clips: int,
                  media_tokens: int | bool = True, system_prompt: str = SYSTEM_PROMPT) -> EncodedExample:
    """The prompt alone (`<s>` ... `### Assistant:`), as inference feeds it; `loss_mask` is all zero."""
    return encode_example(tok, history, None, max_len=max_len, max_clips=max_clips, media_tokens=media_tokens,
                          system_prompt=system_prompt)


__all__ = ["ASSISTANT", "CLAUSES", "EncodedExample", "HUMAN", "SYSTEM_PROMPT", "TARGET_FIELDS", "coe_fields",
           "encode_example", "encode_prompt", "media_slots", "parse_target", "render_prompt", "render_target", "target_pieces",
           "utterance_pieces"]
