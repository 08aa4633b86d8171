"""A byte-level tokenizer: every UTF-8 string encodes losslessly, with no vocabulary file to train or download.

Ids: `0..NUM_SPECIAL-1` are special tokens (`<pad>`=0, `<s>`, `</s>`, `<Aud>`, `<Vid>` and reserved slots for
later issues), then the 256 byte values, offset by `NUM_SPECIAL`. The vocabulary (264) fits the tiny config's
`model.vocab_size` (384); the ids above it are never produced.

`<Aud>` and `<Vid>` are the placeholders of the authors' prompt (`Human: <Aud> <Vid>{utterance} ### Assistant:`)
that the multimodal model replaces by one projected speech / video embedding each. `encode` turns those exact
strings into their ids (`parse_specials=True`, the default) and `decode` writes them back, so `decode(encode(s))
== s` for every string `s`.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterable

import numpy as np

PAD, BOS, EOS, AUD, VID = 0, 1, 2, 3, 4
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<s>", "</s>", "<Aud>", "<Vid>",
                                   "<reserved_5>", "<reserved_6>", "<reserved_7>")
NUM_SPECIAL = len(SPECIAL_TOKENS)
BYTE_OFFSET = NUM_SPECIAL
VOCAB_SIZE = NUM_SPECIAL + 256
# Specials that appear in text (and so are parsed by `encode` and written back by `decode`).
TEXT_SPECIALS = {"<Aud>": AUD, "<Vid>": VID}
CONFIG_FILE = "merg_tokenizer.json"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (what a Hugging Face byte-level tokenizer uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


class ByteTokenizer:
    """Stateless; `ByteTokenizer()` is the only configuration there is."""

    pad_id, bos_id, eos_id, aud_id, vid_id = PAD, BOS, EOS, AUD, VID
    vocab_size = VOCAB_SIZE
    byte_offset = BYTE_OFFSET
    special_tokens = SPECIAL_TOKENS

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False,
               parse_specials: bool = True) -> list[int]:
        ids = [BOS] if add_bos else []
        pieces = _split_specials(text) if parse_specials else [text]
        for piece in pieces:
            if piece in TEXT_SPECIALS and parse_specials:
                ids.append(TEXT_SPECIALS[piece])
            else:
                ids.extend(b + BYTE_OFFSET for b in piece.encode("utf-8"))
        if add_eos:
            ids.append(EOS)
        return ids

    def decode(self, ids: Iterable[int], *, stop_at_eos: bool = True) -> str:
        """Bytes back to text; `<pad>`/`<s>` are dropped, `</s>` ends the text (or is dropped), `<Aud>`/`<Vid>`
        are written as such, ids past the vocabulary are dropped, and invalid UTF-8 (a model's half-written
        character) becomes U+FFFD."""
        out = bytearray()
        for i in np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids).reshape(-1).tolist():
            if i == EOS and stop_at_eos:
                break
            if BYTE_OFFSET <= i < VOCAB_SIZE:
                out.append(i - BYTE_OFFSET)
            elif i in (AUD, VID):
                out.extend(SPECIAL_TOKENS[i].encode("utf-8"))
        return out.decode("utf-8", errors="replace")

    def __len__(self) -> int:
        return VOCAB_SIZE

    def to_dict(self) -> dict:
        return {"type": "byte", "byte_offset": BYTE_OFFSET, "vocab_size": VOCAB_SIZE,
                "special_tokens": {t: i for i, t in enumerate(SPECIAL_TOKENS)},
                "pad_id": PAD, "bos_id": BOS, "eos_id": EOS, "aud_id": AUD, "vid_id": VID}

    def save(self, directory: str | pathlib.Path, *, hf: bool = True) -> None:
        """Writes `merg_tokenizer.json` (what `load` reads) and, with `hf`, an equivalent Hugging Face fast
        tokenizer (`tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`), so the directory also
        opens with `transformers.AutoTokenizer.from_pretrained`."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        if hf:
            self.hf_tokenizer_object().save(str(directory / "tokenizer.json"))
            specials = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}
            (directory / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
            cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1 << 30,
                   "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
                   **specials}
            (directory / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | pathlib.Path) -> ByteTokenizer:
        info = json.loads((pathlib.Path(directory) / CONFIG_FILE).read_text())
        if info.get("type") != "byte" or info.get("byte_offset") != BYTE_OFFSET:
            raise ValueError(f"{directory}/{CONFIG_FILE} describes another tokenizer: {info}")
        return cls()

    def hf_tokenizer_object(self):
        """The same mapping as a `tokenizers.Tokenizer` (a BPE with no merges over GPT-2's byte alphabet); it adds
        `<s>` in front unless asked not to (`add_special_tokens=False`)."""
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

        b2u = _bytes_to_unicode()
        vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
        vocab.update({b2u[b]: b + BYTE_OFFSET for b in range(256)})
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False, byte_fallback=False))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
        # `<s>` first, as in training (`encode(text, add_bos=True)`).
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                          special_tokens=[("<s>", BOS)])
        return tok


def _split_specials(text: str) -> list[str]:
    """Splits `text` around the exact strings of `TEXT_SPECIALS`, keeping them as pieces."""
    pieces, start, i = [], 0, 0
    while i < len(text):
        if text[i] == "<":
            for name in TEXT_SPECIALS:
                if text.startswith(name, i):
                    if i > start:
                        pieces.append(text[start:i])
                    pieces.append(name)
                    i += len(name)
                    start = i
                    break
            else:
                i += 1
        else:
            i += 1
    if start < len(text):
        pieces.append(text[start:])
    return pieces
