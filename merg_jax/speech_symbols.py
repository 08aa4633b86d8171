"""The speech generator's symbol table: what its text front end (`merg_jax.data.speech_text`) emits and its content
encoder embeds. A leaf module, so the data side and the model side share it without importing each other.

A model's embedding rows are indexed by these ids, so `SYMBOLS` is part of every saved model: append new symbols at
its end and never remove, reorder or replace one.
"""

from __future__ import annotations

PAD, UNKNOWN, SPACE = "\x00", "\ufffd", " "
PUNCTUATION = ",.!?;:"  # kept in both modes: they mark pauses
MARKS = "'-"  # in-word marks (characters mode)
LETTERS = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"
# What espeak-ng en-us emits beyond the ASCII letters (collected over ~30k English words): vowels, consonants,
# ᵻ (reduced vowel), stress ˈ ˌ, length ː and the syllabic mark U+0329 (as in "button" → bˈʌʔn̩).
IPA_EN_US = "ɑɐæɔəɚɛɜɪʊʌᵻɾɹŋɡʃʒθðʔɬçˈˌː\u0329"
# The rest of StyleTTS2's IPA letters, for other voices and rarer espeak-ng output.
IPA_MORE = "ɒɓʙβɕɗɖʤɘɝɞɟʄɠɢʛɦɧħɥʜɨʝɭɫɮʟɱɯɰɳɲɴøɵɸœɶʘɺɻʀʁɽʂʈʧʉʋⱱɣɤʍχʎʏʑʐʡʕʢǀǁǂǃˑʼʴʰʱʲʷˠˤ˞↓↑→↗↘"

# Stable: ids are saved with model weights. Only appending is allowed.
SYMBOLS: tuple[str, ...] = (PAD, UNKNOWN, SPACE, *PUNCTUATION, *MARKS, *LETTERS, *DIGITS, *IPA_EN_US, *IPA_MORE)
PAD_ID, UNKNOWN_ID = 0, 1
SYMBOL_TO_ID: dict[str, int] = {s: i for i, s in enumerate(SYMBOLS)}
if len(SYMBOL_TO_ID) != len(SYMBOLS) or any(len(s) != 1 for s in SYMBOLS):
    raise AssertionError("SYMBOLS must be distinct single characters")


def num_symbols() -> int:
    return len(SYMBOLS)
