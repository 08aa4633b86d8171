"""Text tokenizers for the multimodal model: a local Hugging Face tokenizer or a byte-level BPE trained here,
both with the model's special tokens as single tokens.

    tok = load_tokenizer("path/to/hf_dir")          # any local HF tokenizer dir (never downloads)
    tok = train_bpe(texts, vocab_size=4096)          # byte-level BPE, offline, seconds
    tok.encode(text) -> list[int]; tok.decode(ids) -> str; tok.save(dir); load_tokenizer(dir)

Special tokens (`SPECIAL_TOKENS`): `<pad>` `<s>` `</s>` `<unk>` (the four roles `pad/bos/eos/unk`), the media
placeholders `<Aud>` `<Vid>` (one pair per dialogue utterance; the model splices that utterance's speech / video
embedding in at their positions) and the Chain-of-Empathy markers `<emo>` `</emo>` `<response>` `</response>`.
A trained BPE gives them ids 0..9 in that order. A loaded tokenizer keeps its own pad/bos/eos/unk tokens where it
has them (LLaMA: `<s>`, `</s>`, `<unk>`) and gets the missing ones, plus the six marker tokens, appended at the end
of its vocabulary; `tok.added_tokens` lists every token added and its new id (the model's embedding table must be
resized to `len(tok)`).

At run time only the Hugging Face `tokenizers` backend is used (fast, picklable, cheap to import in grain workers);
`transformers.AutoTokenizer` is used once, to load a directory (`local_files_only=True`, so it never downloads).
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from collections.abc import Iterable

import numpy as np

from merg_jax.special_tokens import (AUD, BOS, EMO, EMO_END, EOS, MARKER_TOKENS, PAD, RESPONSE, RESPONSE_END,
                                    ROLE_TOKENS, SPECIAL_TOKENS, UNK, VID)

META_FILE = "merg_tokenizer.json"

log = logging.getLogger(__name__)


class TokenizerError(ValueError):
    """A tokenizer directory that cannot be loaded, or a tokenizer lacking what the model needs."""


class TextTokenizer:
    """A `tokenizers.Tokenizer` plus the ids of the model's special tokens.

    Attributes: `pad_id bos_id eos_id unk_id aud_id vid_id emo_id emo_end_id response_id response_end_id`,
    `roles` (role -> token string, e.g. {"bos": "<s>"}), `added_tokens` (token -> id, the tokens this wrapper added
    to a loaded tokenizer; empty for a trained BPE), `source` (where it came from).
    """

    def __init__(self, backend, *, roles: dict[str, str], added_tokens: dict[str, int] | None = None,
                 source: str = ""):
        self._json = backend.to_str()
        self.roles = dict(roles)
        self.added_tokens = dict(added_tokens or {})
        self.source = source
        self._build()

    def _build(self) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_str(self._json)
        # A second copy that reads special-token strings in text as plain text, for dialogue content: a user
        # writing "<Aud>" must not create a media placeholder. Two copies, because the flag is mutable state and
        # grain reads with several threads.
        self._plain = Tokenizer.from_str(self._json)
        self._plain.encode_special_tokens = True
        ids = {}
        for name, token in {**self.roles, "aud": AUD, "vid": VID, "emo": EMO, "emo_end": EMO_END,
                            "response": RESPONSE, "response_end": RESPONSE_END}.items():
            i = self._tok.token_to_id(token)
            if i is None:
                raise TokenizerError(f"tokenizer {self.source or ''}: special token {token!r} ({name}) is missing")
            ids[name] = i
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = ids["pad"], ids["bos"], ids["eos"], ids["unk"]
        self.aud_id, self.vid_id = ids["aud"], ids["vid"]
        self.emo_id, self.emo_end_id = ids["emo"], ids["emo_end"]
        self.response_id, self.response_end_id = ids["response"], ids["response_end"]
        self.special_ids: dict[str, int] = {self._tok.id_to_token(i): i for i in ids.values()}

    # Pickled for grain workers: the backend is rebuilt from its JSON (the `encode_special_tokens` flag does not
    # survive pickling a `tokenizers.Tokenizer`).
    def __getstate__(self):
        return {"json": self._json, "roles": self.roles, "added_tokens": self.added_tokens, "source": self.source}

    def __setstate__(self, state):
        self._json, self.roles = state["json"], state["roles"]
        self.added_tokens, self.source = state["added_tokens"], state["source"]
        self._build()

    @property
    def backend(self):
        """The `tokenizers.Tokenizer` (parses special-token strings)."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False,
               parse_specials: bool = True) -> list[int]:
        """Token ids of `text`. `parse_specials`: the exact strings of special tokens ("<Aud>", "<emo>", ...) become
        their ids; otherwise they are tokenized as ordinary text."""
        tok = self._tok if parse_specials else self._plain
        ids = tok.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def decode(self, ids: Iterable[int], *, stop_at_eos: bool = True, skip_roles: bool = True) -> str:
        """Text of `ids`. The marker tokens (`<Aud>`, `<emo>`, ...) are written out; with `skip_roles`, pad/bos
        (and eos, unless `stop_at_eos` ends the text there) are dropped. Ids outside the vocabulary are dropped."""
        seq = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids).reshape(-1).tolist()
        if stop_at_eos and self.eos_id in seq:
            seq = seq[:seq.index(self.eos_id)]
        drop = {self.pad_id, self.bos_id, self.eos_id} if skip_roles else set()
        n = self.vocab_size
        seq = [i for i in seq if 0 <= i < n and i not in drop]
        return self._tok.decode(seq, skip_special_tokens=False)

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(int(i))

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def save(self, directory: str | os.PathLike) -> pathlib.Path:
        """Writes a Hugging Face fast-tokenizer directory (`tokenizer.json`, `tokenizer_config.json`,
        `special_tokens_map.json`) and `merg_tokenizer.json` (roles, added tokens, source). Each file is written
        to a temporary name and renamed. The directory loads back with `load_tokenizer` or with
        `transformers.AutoTokenizer.from_pretrained`."""
        d = pathlib.Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        specials = {f"{role}_token": token for role, token in self.roles.items()}
        specials["additional_special_tokens"] = list(MARKER_TOKENS)
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1 << 30,
                  "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
                  **specials}
        meta = {"roles": self.roles, "added_tokens": self.added_tokens, "source": self.source,
                "special_ids": self.special_ids, "vocab_size": self.vocab_size}
        _atomic_write(d / "tokenizer.json", self._json)
        _atomic_write(d / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
        _atomic_write(d / "special_tokens_map.json", json.dumps(specials, indent=2) + "\n")
        _atomic_write(d / META_FILE, json.dumps(meta, indent=2) + "\n")
        return d

    def __repr__(self) -> str:
        return (f"TextTokenizer(vocab_size={self.vocab_size}, source={self.source!r}, "
                f"special_ids={self.special_ids}, added_tokens={self.added_tokens})")


def _atomic_write(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def load_tokenizer(path: str | os.PathLike) -> TextTokenizer:
    """Loads a local Hugging Face tokenizer directory (a `tokenizer.json`, or a sentencepiece `tokenizer.model`
    that transformers converts) and makes sure it has every special token as one token.

    A directory written by `TextTokenizer.save` loads as it was saved. Otherwise the directory is read with
    `transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)`; its pad/bos/eos/unk tokens are
    kept where defined, and the missing ones and the six marker tokens are added as special tokens (new ids at
    the end of the vocabulary, listed in `added_tokens`).
    """
    d = pathlib.Path(path)
    if not d.is_dir():
        raise TokenizerError(f"tokenizer directory {d} does not exist (expected a local Hugging Face tokenizer dir)")
    meta_file = d / META_FILE
    if meta_file.exists() and (d / "tokenizer.json").exists():
        meta = json.loads(meta_file.read_text())
        if "roles" in meta:  # ours; a ByteTokenizer's merg_tokenizer.json has no roles and goes the HF way
            from tokenizers import Tokenizer

            backend = Tokenizer.from_file(str(d / "tokenizer.json"))
            return TextTokenizer(backend, roles=meta["roles"], added_tokens=meta.get("added_tokens", {}),
                                 source=meta.get("source", str(d)))
    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    except Exception as e:
        raise TokenizerError(f"cannot load a Hugging Face tokenizer from {d}: {type(e).__name__}: {e}") from None
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise TokenizerError(f"{d}: {type(hf).__name__} has no fast (tokenizers) backend; convert it to a "
                             "tokenizer.json first")
    tok = _with_specials(backend, roles_found={role: getattr(hf, f"{role}_token", None) for role in ROLE_TOKENS},
                         source=str(d))
    if tok.added_tokens:
        log.info("%s: added %s (the model's vocabulary must grow to %d)", d,
                 ", ".join(f"{t}={i}" for t, i in tok.added_tokens.items()), tok.vocab_size)
    return tok


def _with_specials(backend, *, roles_found: dict[str, str | None], source: str) -> TextTokenizer:
    """Adds the missing role tokens and every marker token to a `tokenizers.Tokenizer` (a copy)."""
    from tokenizers import AddedToken, Tokenizer

    backend = Tokenizer.from_str(backend.to_str())
    roles, wanted = {}, []
    for role, default in ROLE_TOKENS.items():
        token = roles_found.get(role)
        if token is None or backend.token_to_id(str(token)) is None:
            token = default
        roles[role] = str(token)
        wanted.append(roles[role])
    wanted += list(MARKER_TOKENS)
    added = {}
    for token in dict.fromkeys(wanted):
        if backend.token_to_id(token) is None:
            backend.add_special_tokens([AddedToken(token, special=True, normalized=False)])
            added[token] = backend.token_to_id(token)
        else:
            # Present (maybe as an ordinary vocabulary entry): mark it special so text never splits it and
            # decoding keeps it whole.
            backend.add_special_tokens([AddedToken(token, special=True, normalized=False)])
    return TextTokenizer(backend, roles=roles, added_tokens=added, source=source)


def train_bpe(texts: Iterable[str], *, vocab_size: int = 8192, min_frequency: int = 2,
              show_progress: bool = False) -> TextTokenizer:
    """A byte-level BPE (GPT-2 style: every UTF-8 string encodes, no unknown tokens) trained on `texts`.

    The special tokens take ids 0..9 (`SPECIAL_TOKENS` order), then the 256 byte symbols, then the merges.
    `vocab_size` is an upper bound: a small corpus stops with fewer merges.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise TokenizerError(f"vocab_size={vocab_size} is below the {len(SPECIAL_TOKENS)} special tokens + 256 bytes")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=show_progress)
    backend.train_from_iterator(texts, trainer)
    return TextTokenizer(backend, roles=dict(ROLE_TOKENS), source="trained byte-level BPE")


__all__ = ["AUD", "BOS", "EMO", "EMO_END", "EOS", "MARKER_TOKENS", "PAD", "RESPONSE", "RESPONSE_END",
           "SPECIAL_TOKENS", "TextTokenizer", "TokenizerError", "UNK", "VID", "load_tokenizer", "train_bpe"]
