"""The text front end of the speech generator: text → symbol ids (IPA phonemes from espeak-ng, or characters).

    front = TextFrontEnd("auto")                   # phonemes when the espeak-ng binary is on PATH, else characters
    ids = front.encode("Hello, world!")            # int32 [L], no padding
    ids, lengths = front.encode_batch(texts)       # int32 [B, L] padded with PAD_ID (0), int32 [B]
    pieces = split_sentences(long_text, 200)       # synthesise long text piece by piece

Phonemes: espeak-ng's IPA for en-us, one symbol per unicode character (so "oʊ" is 'o', 'ʊ' and "dʒ" is 'd', 'ʒ'),
stress marks (ˈ ˌ) and the length mark (ː) included; words are separated by a space and the punctuation ,.!?;:
is kept (espeak-ng drops it, but it carries the pauses), e.g. "Hello, world!" → "həlˈoʊ, wˈɜːld!". Characters:
the lowercased text with its whitespace collapsed to single spaces. Either way, characters outside `SYMBOLS` map to
`UNKNOWN_ID`.

The symbol table itself is `merg_jax.speech_symbols.SYMBOLS` (a leaf module the model side reads too): only
appending to it is allowed, since saved models index their embeddings by it.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import shutil
import subprocess
import threading
from collections.abc import Sequence
from typing import Literal

import numpy as np

Kind = Literal["phonemes", "characters", "auto"]

from merg_jax.speech_symbols import PAD, PAD_ID, SYMBOL_TO_ID, SYMBOLS, UNKNOWN_ID  # noqa: F401 - re-exported


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def resolve(kind: Kind) -> Literal["phonemes", "characters"]:
    """"auto" → "phonemes" if espeak-ng is installed, else "characters"; "phonemes" without espeak-ng is an error."""
    if kind == "auto":
        return "phonemes" if espeak_available() else "characters"
    if kind == "phonemes" and not espeak_available():
        raise RuntimeError("text front end 'phonemes' needs the espeak-ng binary on PATH (apt-get install "
                           "espeak-ng), or use 'characters' / 'auto'")
    if kind not in ("phonemes", "characters"):
        raise ValueError(f"text front end kind {kind!r}: expected 'phonemes', 'characters' or 'auto'")
    return kind


# ---------------------------------------------------------------------------------------------------- phonemes

# A pause: a run of ,.!?;: followed by whitespace or the end, or opening the text or a word ("...and"); "3.5"
# and "1,000" stay inside a clause.
_CLAUSE_END = re.compile(r"([,.!?;:]+(?=\s|$)|(?<!\S)[,.!?;:]+)")
_DASHES = re.compile(r"\s*—\s*|\s+–\s+")  # a dash between words is a pause
# What espeak-ng reads (letters, digits, apostrophes, hyphens); anything else would end its clause mid-chunk.
_UNSPOKEN = re.compile(r"[^\w\s'\-.,]|_|[.,](?!\d)|(?<!\d)[.,]")
_LANGUAGE_SWITCH = re.compile(r"\([a-z]{2,3}(?:-[a-z0-9]+)*\)")  # espeak-ng's "(fr)…(en)" markers
# espeak-ng splits very long clauses on its own (and mangles a word at ~1000 characters), which would break the
# one-output-line-per-input-line bookkeeping; shorter chunks keep it exact.
_MAX_CHUNK_WORDS = 40


def _split_clauses(sentence: str) -> list[tuple[str, str]]:
    """[(words, punctuation after them)]: words cleaned for espeak-ng (possibly empty), punctuation possibly empty."""
    sentence = _DASHES.sub(", ", sentence.replace("…", "..."))
    parts = _CLAUSE_END.split(sentence)  # words, punct, words, punct, …, words
    out = []
    for i in range(0, len(parts), 2):
        words = " ".join(_UNSPOKEN.sub(" ", parts[i]).split())
        punct = parts[i + 1] if i + 1 < len(parts) else ""
        out.append((words, punct))
    return out


def _chunks(words: str) -> list[str]:
    w = words.split()
    return [" ".join(w[i:i + _MAX_CHUNK_WORDS]) for i in range(0, len(w), _MAX_CHUNK_WORDS)]


def _run_espeak(lines: Sequence[str], voice: str) -> list[str]:
    """One espeak-ng call: the IPA of each line. Falls back to one call per line if the line count comes back wrong."""
    if not lines:
        return []
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed")
    cmd = [exe, "-q", "-b", "1", "--ipa", "-v", voice]
    res = subprocess.run(cmd, input="\n".join(lines) + "\n", capture_output=True, encoding="utf-8", check=True)
    out = [_LANGUAGE_SWITCH.sub("", line).strip() for line in res.stdout.splitlines()]
    if len(out) == len(lines):
        return out
    if len(lines) == 1:  # espeak-ng split the clause itself: its pieces are still in order
        return [" ".join(x for x in out if x)]
    return [_run_espeak([line], voice)[0] for line in lines]


class _LRU:
    """A thread-safe least-recently-used map (functools.lru_cache cannot be filled by a batched call)."""

    def __init__(self, maxsize: int):
        self.maxsize, self._data, self._lock = maxsize, collections.OrderedDict(), threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
            return None

    def put(self, key, value) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)


_CACHE = _LRU(65536)


def phonemize(sentences: Sequence[str], voice: str = "en-us") -> list[str]:
    """espeak-ng IPA for each sentence, punctuation kept (see the module docstring); one espeak-ng call for all
    the sentences not cached yet. Whitespace (newlines included) is collapsed first."""
    sentences = [" ".join(s.split()) for s in sentences]
    found = {s: _CACHE.get((s, voice)) for s in sentences}
    todo = [s for s, ipa in found.items() if ipa is None]
    if todo:
        clauses = [_split_clauses(s) for s in todo]
        lines = [c for cl in clauses for words, _ in cl for c in _chunks(words)]
        ipa = iter(_run_espeak(lines, voice))
        for s, cl in zip(todo, clauses):
            out = ""
            for words, punct in cl:
                spoken = " ".join(p for p in (next(ipa) for _ in _chunks(words)) if p)
                if spoken:
                    out += (" " if out else "") + spoken
                out += punct
            found[s] = out
            _CACHE.put((s, voice), out)
    return [found[s] for s in sentences]


# ---------------------------------------------------------------------------------------------------- front end


@dataclasses.dataclass(frozen=True)
class TextFrontEnd:
    """Text → symbol ids. kind: "phonemes" (needs espeak-ng), "characters", or "auto" (phonemes if available).

    The ids index `SYMBOLS` in both modes, so `vocab_size` does not depend on the kind; a model trained on one
    kind still needs the same kind at inference (`mode` says which one "auto" picked).
    """

    kind: Kind = "auto"
    voice: str = "en-us"  # espeak-ng voice (phonemes mode)

    def __post_init__(self):
        resolve(self.kind)  # fail at construction for a bad kind or missing espeak-ng

    @property
    def mode(self) -> Literal["phonemes", "characters"]:
        return resolve(self.kind)

    @property
    def vocab_size(self) -> int:
        return len(SYMBOLS)

    def symbols(self, text: str) -> list[str]:
        """The symbol sequence of `text` (characters not in `SYMBOLS` included as they are)."""
        return self._symbols_batch([text])[0]

    def encode(self, text: str) -> np.ndarray:
        """int32 [L] symbol ids, no padding. Raises ValueError("empty text") for empty or whitespace-only text."""
        return _ids(self.symbols(text))

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids int32 [B, L] padded with PAD_ID, lengths int32 [B]), L the longest row; phonemises in one call."""
        if not len(texts):
            raise ValueError("encode_batch: no texts")
        rows = [_ids(s) for s in self._symbols_batch(texts)]
        lengths = np.array([len(r) for r in rows], np.int32)
        ids = np.full((len(rows), int(lengths.max())), PAD_ID, np.int32)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = r
        return ids, lengths

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """The symbols of `ids` as a string, padding dropped (unknown symbols come back as U+FFFD)."""
        return "".join(SYMBOLS[int(i)] for i in np.asarray(ids).reshape(-1) if int(i) != PAD_ID)

    def _symbols_batch(self, texts: Sequence[str]) -> list[list[str]]:
        if any(not t.strip() for t in texts):
            raise ValueError("empty text")
        if self.mode == "characters":
            return [list(" ".join(t.lower().split())) for t in texts]
        out = [list(p) for p in phonemize(texts, self.voice)]
        for t, p in zip(texts, out):
            if not p:
                raise ValueError(f"text {t!r} has nothing espeak-ng can speak")
        return out


def _ids(symbols: list[str]) -> np.ndarray:
    # The pad symbol never comes from text: a literal NUL is unknown, not padding.
    return np.array([SYMBOL_TO_ID.get(s, UNKNOWN_ID) if s != PAD else UNKNOWN_ID for s in symbols], np.int32)


# ---------------------------------------------------------------------------------------------------- sentences

_SENTENCE_END = re.compile(r"(?<=[.!?]) ")
_CLAUSE_BREAK = re.compile(r"(?<=[,;]) ")


def _pack(parts: list[str], max_chars: int) -> list[str]:
    """Greedily joins consecutive parts with spaces while they fit in max_chars (a part too long alone stays)."""
    out: list[str] = []
    for p in parts:
        if out and len(out[-1]) + 1 + len(p) <= max_chars:
            out[-1] += " " + p
        else:
            out.append(p)
    return out


def split_sentences(text: str, max_chars: int = 200) -> list[str]:
    """Splits text into pieces of at most `max_chars` characters for synthesis, whitespace collapsed.

    Each sentence (ending in . ! or ? before a space) is a piece; a longer one is split at commas and semicolons
    (clauses packed back together while they fit), then at spaces, then — for a single word over the limit — every
    `max_chars` characters. No piece is empty; empty text gives []. Abbreviations ("Mr. Smith") count as ends.
    """
    if max_chars < 1:
        raise ValueError(f"split_sentences: max_chars={max_chars} must be >= 1")
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(" ".join(text.split())):
        if not sentence:
            continue
        if len(sentence) <= max_chars:
            pieces.append(sentence)
            continue
        for clause in _pack(_CLAUSE_BREAK.split(sentence), max_chars):
            if len(clause) <= max_chars:
                pieces.append(clause)
                continue
            words = [w[i:i + max_chars] for w in clause.split(" ") for i in range(0, len(w), max_chars)]
            pieces.extend(_pack(words, max_chars))
    return pieces
