"""`merg-jax train-tokenizer`: a byte-level BPE trained on an AvaMERG training split, offline, in seconds.

    merg-jax train-tokenizer --data DIR --out DIR [--vocab-size 8192] [--split train] [--min-frequency 2]

The corpus is every turn of the split rendered as the model sees it (`training_texts`: the prompt with its system
text and role tags, and the Chain-of-Empathy target), so the template's words become single tokens too. The special
tokens (`<pad> <s> </s> <unk> <Aud> <Vid> <emo> </emo> <response> </response>`) take ids 0..9. The output directory
is a Hugging Face tokenizer directory (`tokenizer.json` ...) that `merg_jax.data.tokenizer.load_tokenizer` and
`transformers.AutoTokenizer` both load.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator

from merg_jax.data.templates import render_prompt, render_target


def training_texts(split, *, chain: bool = True) -> Iterator[str]:
    """One text per turn of `split` (an `avamerg.Split`): its prompt followed by its target."""
    for turn in split.turns:
        history = [(u.role, u.text) for u in turn.history]
        yield render_prompt(history) + render_target(turn.response.text, turn.coe, chain=chain)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="merg-jax train-tokenizer",
                                description="Train a byte-level BPE tokenizer on an AvaMERG training split.")
    p.add_argument("--data", required=True, help="dataset root (holds {split}.json)")
    p.add_argument("--out", required=True, help="output directory (a Hugging Face tokenizer dir)")
    p.add_argument("--vocab-size", type=int, default=8192, help="upper bound on the vocabulary (%(default)s)")
    p.add_argument("--split", default="train", help="split to train on (%(default)s)")
    p.add_argument("--min-frequency", type=int, default=2, help="least count of a merged pair (%(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    from merg_jax.data.avamerg import DataError, read_split
    from merg_jax.data.tokenizer import SPECIAL_TOKENS, TokenizerError, train_bpe

    prog = "merg-jax train-tokenizer"
    try:
        split = read_split(args.data, args.split, check_media="none")
    except (DataError, OSError) as e:
        print(f"{prog}: error: --data {args.data}: {e}", file=sys.stderr)
        return 2
    turns = split.turns
    if not turns:
        print(f"{prog}: error: --data {args.data}: split {args.split!r} has no turns", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        tok = train_bpe(training_texts(split), vocab_size=args.vocab_size, min_frequency=args.min_frequency)
    except TokenizerError as e:
        print(f"{prog}: error: --vocab-size: {e}", file=sys.stderr)
        return 2
    out = tok.save(args.out)
    seconds = time.perf_counter() - t0
    ids = ", ".join(f"{t}={tok.token_to_id(t)}" for t in SPECIAL_TOKENS)
    print(f"trained a byte-level BPE on {len(turns)} turns of {args.data} ({args.split}) in {seconds:.1f} s: "
          f"vocab {tok.vocab_size} (asked for at most {args.vocab_size}); special ids {ids}; saved to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
