"""`merg-jax demo`: make AvaMERG-mini, train Empatheia through every stage, score the test split, and answer two
dialogues with text, voice and a talking avatar — about 15 minutes on 2 CPU cores (merg_jax/app/demo.py).

    merg-jax demo [--out runs/demo] [--data data/avamerg_demo] [--dialogues 100] [--config.KEY=VALUE ...]

Writes OUT/metrics.md (our figures beside the paper's), OUT/replies/{test,written}/reply.{json,wav,mp4}. Run it again
and it reuses the data, the checkpoints and the scores. Train longer with --config.train.steps=N (every stage) or
--config.stage.coe.steps=N (one stage); configs/empatheia_tiny.py is the full CPU recipe.
"""

from __future__ import annotations

import argparse
import sys

PROG = "merg-jax demo"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="run folder: checkpoints, metrics.md, replies (%(default)s)")
    p.add_argument("--data", default="data/avamerg_demo", help="dataset folder, made if absent (%(default)s)")
    p.add_argument("--dialogues", type=int, default=100, help="conversations of the made dataset (%(default)s)")
    p.add_argument("--workers", type=int, default=2, help="processes making the dataset (%(default)s)")
    p.add_argument("--eval-turns", type=int, default=6, help="test turns answered and scored (%(default)s)")
    p.add_argument("--speech-clips", type=int, default=3, help="test utterances the voice is scored on (%(default)s)")
    p.add_argument("--video-clips", type=int, default=3, help="test clips the face is scored on (%(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    from merg_jax.config import split_overrides
    from merg_jax.console import setup_logging, usage_error

    try:
        overrides = split_overrides(rest)
    except ValueError as e:
        return usage_error(PROG, e)
    setup_logging()
    from merg_jax.app.demo import run_demo
    from merg_jax.data.avamerg import DataError
    from merg_jax.train.trainer import TrainingError

    try:
        run_demo(args.out, data=args.data, dialogues=args.dialogues, workers=args.workers, overrides=overrides,
                 eval_turns=args.eval_turns, speech_clips=args.speech_clips, video_clips=args.video_clips)
    except (ValueError, KeyError, TrainingError, DataError, FileNotFoundError, OSError) as e:
        return usage_error(PROG, e.args[0] if isinstance(e, KeyError) and e.args else e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
