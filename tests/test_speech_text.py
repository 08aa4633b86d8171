"""The speech text front end: espeak-ng phonemes (skipped without espeak-ng), exact characters mode, the stable
symbol table, id round trips, unknown symbols, batch padding, empty-text errors, and sentence splitting."""

from __future__ import annotations

import numpy as np
import pytest

from merg_jax.data import speech_text as T
from merg_jax.data.speech_text import (PAD_ID, SYMBOLS, UNKNOWN_ID, TextFrontEnd, phonemize, resolve,
                                         split_sentences)

needs_espeak = pytest.mark.skipif(not T.espeak_available(), reason="espeak-ng is not installed")
CHARS = TextFrontEnd("characters")


def test_symbol_table_is_stable():
    # Ids are saved with model weights: these must never change (append new symbols at the end only).
    assert SYMBOLS[:12] == ("\x00", "\ufffd", " ", ",", ".", "!", "?", ";", ":", "'", "-", "a")
    assert PAD_ID == 0 and UNKNOWN_ID == 1
    assert SYMBOLS.index("z") == 36 and SYMBOLS.index("0") == 37 and SYMBOLS.index("ɑ") == 47
    assert len(set(SYMBOLS)) == len(SYMBOLS) and all(len(s) == 1 for s in SYMBOLS)
    for s in "ˈˌːɪʊəɚɹɾʃʒθðŋɡæɑɔɛɜʌᵻʔ\u0329":
        assert s in SYMBOLS, s
    assert CHARS.vocab_size == len(SYMBOLS)


def test_characters_exact():
    assert CHARS.mode == "characters"
    assert CHARS.symbols("  Hello,\n\tWorld!  ") == list("hello, world!")
    ids = CHARS.encode("Hi, 42!")
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, [SYMBOLS.index(c) for c in "hi, 42!"])
    assert CHARS.decode(ids) == "hi, 42!"


def test_unknown_symbols():
    ids = CHARS.encode("a€b\x00")  # NUL is the pad symbol, but text never produces padding
    np.testing.assert_array_equal(ids, [SYMBOLS.index("a"), UNKNOWN_ID, SYMBOLS.index("b"), UNKNOWN_ID])


def test_batch_padding_and_lengths():
    ids, lengths = CHARS.encode_batch(["ab", "hello there", "x"])
    assert ids.dtype == np.int32 and lengths.dtype == np.int32
    assert ids.shape == (3, 11)
    np.testing.assert_array_equal(lengths, [2, 11, 1])
    for row, n, text in zip(ids, lengths, ["ab", "hello there", "x"]):
        np.testing.assert_array_equal(row[:n], CHARS.encode(text))
        assert (row[n:] == PAD_ID).all()
    with pytest.raises(ValueError, match="no texts"):
        CHARS.encode_batch([])


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_text(text):
    with pytest.raises(ValueError, match="empty text"):
        CHARS.encode(text)
    with pytest.raises(ValueError, match="empty text"):
        CHARS.encode_batch(["ok", text])


def test_resolve(monkeypatch):
    assert resolve("characters") == "characters"
    with pytest.raises(ValueError, match="expected"):
        resolve("letters")
    monkeypatch.setattr(T.shutil, "which", lambda name: None)
    assert resolve("auto") == "characters"
    with pytest.raises(RuntimeError, match="espeak-ng"):
        TextFrontEnd("phonemes")


@needs_espeak
def test_phonemes():
    front = TextFrontEnd("phonemes")
    assert resolve("auto") == "phonemes"
    sym = front.symbols("Hello, world!")
    s = "".join(sym)
    assert all(len(x) == 1 for x in sym)
    for expected in ("h", "ə", "l", "ˈ", "o", "ʊ", "w", "ɜ", "ː", "d"):
        assert expected in sym, (expected, s)
    # Punctuation survives (espeak-ng drops it) and words stay separated by one space.
    assert s.endswith("!") and ", " in s and s.index(",") < s.index("w")
    assert "θ" in front.symbols("think") and "ʃ" in front.symbols("she")
    ids = front.encode("Hello, world!")
    assert (ids != UNKNOWN_ID).all()
    assert [SYMBOLS[i] for i in ids] == sym  # ids round-trip to symbols
    assert front.decode(ids) == s


@needs_espeak
def test_phonemes_batch_matches_single(monkeypatch):
    texts = ["The quick brown fox; it jumps.", "Is it 3.5 or 1,000?", "Well... maybe — not!", "...and so", "a\nb",
             " ".join(["word"] * 100) + "."]  # long enough that espeak-ng would split it on its own
    front = TextFrontEnd("phonemes")
    ids, lengths = front.encode_batch(texts)
    batched = [front.decode(row[:n]) for row, n in zip(ids, lengths)]
    monkeypatch.setattr(T, "_CACHE", T._LRU(1024))  # single calls must not just read the batch's cache entries
    assert batched == [phonemize([t])[0] for t in texts]
    assert batched[1].endswith("?") and ";" in batched[0] and batched[0].endswith(".")
    assert batched[2].startswith("wˈɛl... ") and ", " in batched[2] and batched[2].endswith("!")
    assert batched[3].startswith("... ")
    assert batched[-1].count("w") == 100 and "  " not in batched[-1]


@needs_espeak
def test_phonemes_fallback_when_espeak_splits_lines(monkeypatch):
    # Unchunked, espeak-ng splits a 150-word clause into two output lines: the batch must still line up.
    monkeypatch.setattr(T, "_MAX_CHUNK_WORDS", 10**6)
    monkeypatch.setattr(T, "_CACHE", T._LRU(1024))
    hello, long = phonemize(["Hello there.", " ".join(["word"] * 150)])
    assert hello == "həlˈoʊ ðˈɛɹ." and long.count("wˈɜːd") == 150 and "  " not in long


def test_split_sentences():
    assert split_sentences("Hi there. How are you?  Fine!") == ["Hi there.", "How are you?", "Fine!"]
    assert split_sentences("  one\n sentence  ") == ["one sentence"]
    assert split_sentences("") == [] and split_sentences("   ") == []
    # Too long: split at commas / semicolons, clauses packed back while they fit.
    assert split_sentences("aaa bbb, ccc; ddd eee, fff.", max_chars=13) == ["aaa bbb, ccc;", "ddd eee, fff."]
    assert split_sentences("aaa bbb, ccc; ddd eee, fff.", max_chars=12) == ["aaa bbb,", "ccc;", "ddd eee,", "fff."]
    # No punctuation: split at spaces; a word over the limit is cut.
    assert split_sentences("one two three four five", max_chars=9) == ["one two", "three", "four five"]
    assert split_sentences("abcdefghij k", max_chars=4) == ["abcd", "efgh", "ij k"]
    with pytest.raises(ValueError):
        split_sentences("x", max_chars=0)


def test_split_sentences_long_text_invariants():
    rng = np.random.default_rng(0)
    words = ["the", "quick", "brown", "fox,", "jumps;", "over", "a", "lazy", "dog.", "really?", "yes!", "x" * 70]
    text = " ".join(rng.choice(words, size=600))
    for max_chars in (20, 60, 200):
        pieces = split_sentences(text, max_chars)
        assert all(0 < len(p) <= max_chars for p in pieces)
        assert all(p == p.strip() and "  " not in p for p in pieces)
        assert "".join(pieces).replace(" ", "") == text.replace(" ", "")  # nothing lost, order kept
