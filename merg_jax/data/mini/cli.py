"""`merg-jax make-data`: generate AvaMERG-mini, a synthetic AvaMERG-format dataset.

    merg-jax make-data --out DIR --dialogues N [--seed 0] [--size 96] [--fps 25] [--splits 0.8,0.1,0.1]
                       [--workers K] [--speech auto|espeak|formant] [--neutral-text-share 0.3] [--quiet]

Writes {DIR}/{train,valid,test}.json, the speech (wav) and talking-avatar video (mp4 + side-car json) of every
utterance, the 65 avatar portraits, metadata.json and README.txt (layout in merg_jax/data/mini/generate.py).
--neutral-text-share is the fraction of conversations whose words carry no emotion (it is then only in the voices
and faces). The same seed gives the same dataset for any --workers. Prints a summary: counts, speech hours, Dist-1/2
of the gold replies, wall time.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _splits(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--splits {text!r}: expected three numbers, e.g. 0.8,0.1,0.1") from None
    if len(values) != 3 or any(v < 0 for v in values) or sum(values) <= 0:
        raise argparse.ArgumentTypeError(f"--splits {text!r}: expected three non-negative fractions (train,valid,test)")
    return values  # type: ignore[return-value]


def _parser() -> argparse.ArgumentParser:
    from merg_jax.data.mini.dialogues import NEUTRAL_TEXT_SHARE  # text banks only: cheap, unlike generate

    p = argparse.ArgumentParser(prog="merg-jax make-data", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="output folder (new, empty, or an earlier make-data output)")
    p.add_argument("--dialogues", required=True, type=int, help="number of conversations in all splits")
    p.add_argument("--seed", type=int, default=0, help="seed of everything drawn (default 0)")
    p.add_argument("--size", type=int, default=96, help="video frame size in pixels, even (default 96)")
    p.add_argument("--fps", type=int, default=25, help="video frame rate (default 25)")
    p.add_argument("--splits", type=_splits, default=(0.8, 0.1, 0.1), help="train,valid,test fractions")
    p.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)),
                   help="parallel processes (default: CPU count, at most 8); the output does not depend on it")
    p.add_argument("--speech", default="auto", choices=("auto", "espeak", "formant"),
                   help="speech engine: espeak-ng, the built-in formant synthesiser, or auto (espeak-ng if installed)")
    p.add_argument("--neutral-text-share", type=float, default=NEUTRAL_TEXT_SHARE,
                   help="fraction of conversations whose words carry no emotion, so that it is only in voice and "
                        f"face (default {NEUTRAL_TEXT_SHARE})")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from merg_jax.data.mini.generate import Config, make_dataset

    try:
        config = Config(out=args.out, dialogues=args.dialogues, seed=args.seed, size=args.size, fps=args.fps,
                        splits=args.splits, workers=args.workers, engine=args.speech, progress=not args.quiet,
                        neutral_text_share=args.neutral_text_share)
        meta = make_dataset(config)
    except (ValueError, FileExistsError, RuntimeError) as e:
        print(f"merg-jax make-data: {e}", file=sys.stderr)
        return 2
    total = meta["total"]
    seconds = sum(s["audio_seconds"] for s in meta["splits"].values())
    print(f"AvaMERG-mini written to {args.out} (seed {meta['seed']}, speech: {meta['speech_engine']})")
    for split, s in meta["splits"].items():
        print(f"  {split:<5} {s['conversations']:>6} conversations {s['turns']:>6} turns {s['utterances']:>7} "
              f"utterances {s['audio_seconds'] / 60:8.1f} min speech   Dist-1 {s['dist_1']:6.2f}  "
              f"Dist-2 {s['dist_2']:6.2f}")
    print(f"  gold replies: {total['replies']}  Dist-1 {total['dist_1']:.2f}  Dist-2 {total['dist_2']:.2f}  "
          f"exact duplicates {100 * total['duplicate_replies']:.1f}%")
    n = sum(s["conversations"] for s in meta["splits"].values())
    neutral = sum(len(s["neutral_text_conversations"]) for s in meta["splits"].values())
    print(f"  neutral text (emotion only in voice and face): {neutral} of {n} conversations "
          f"(share {meta['neutral_text_share']})")
    print(f"  {seconds / 3600:.2f} h of speech; {meta['wall_seconds']:.1f} s wall "
          f"({n / max(meta['wall_seconds'], 1e-9):.2f} dialogues/s)")
    if meta["failed"]:
        print(f"  {len(meta['failed'])} conversation(s) failed and were skipped (details in metadata.json):",
              file=sys.stderr)
        for f in meta["failed"][:5]:
            print(f"    {f['split']} {f['conversation_id']}: {f['error'].strip().splitlines()[-1]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
