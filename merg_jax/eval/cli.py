"""`merg-jax eval`: answer every turn of a split and score the replies with the paper's metrics.

    merg-jax eval --checkpoint DIR --data DIR [--split test] --out FILE.json [--ablate audio,video]
                  [--submission DIR] [--limit N] [--with-ablation] [--speech N] [--video N] [--sync-steps N]
                  [--emotion-steps N]

DIR of --checkpoint: a training output directory or an exported bundle. Writes FILE.json (metrics),
FILE.predictions.jsonl (every turn: gold and generated fields) and FILE.md (our figures beside the paper's), and
prints the table. --with-ablation also runs the split with audio and video blanked and puts those figures in the
table's ablation column. --submission DIR writes the MERG challenge submission (docs/submission.md), with each
reply's speech and talking-face video when the model has the generators. --speech N scores the speech generator on
N utterances of the split (MCD, F0, duration, WER beside the real speech's, emotion, RTF:
merg_jax/eval/speech_eval.py) into FILE.json's "speech"; --video N scores the face generator on N clips (renderer,
SSIM/PSNR, mouth motion, sync LSE-C/D, emotion, identity, CPBD, RTF beside their baselines:
merg_jax/eval/video_eval.py) into FILE.json's "video", training the sync judge for --sync-steps steps and the
emotion judge for --emotion-steps steps the first time (kept in CHECKPOINT/judges/sync and .../emotion); 0 skips
either.
"""

from __future__ import annotations

import argparse
import logging
import sys

PROG = "merg-jax eval"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="training output directory or bundle")
    p.add_argument("--data", required=True, help="dataset root (AvaMERG layout)")
    p.add_argument("--split", default="test", help="split to answer (%(default)s)")
    p.add_argument("--out", required=True, help="metrics JSON file to write")
    p.add_argument("--ablate", default="", help="modalities to blank: audio, video or audio,video")
    p.add_argument("--with-ablation", action="store_true",
                   help="also evaluate with audio and video blanked, for the table's ablation column")
    p.add_argument("--submission", default=None, help="write the MERG challenge submission into this directory")
    p.add_argument("--limit", type=int, default=None, help="answer only the first N turns")
    p.add_argument("--speech", type=int, default=60,
                   help="utterances to score the speech generator on (%(default)s; 0: none)")
    p.add_argument("--video", type=int, default=20,
                   help="clips to score the face generator on (%(default)s; 0: none)")
    p.add_argument("--sync-steps", type=int, default=1500,
                   help="training steps of the sync judge when CHECKPOINT/judges/sync does not hold one yet")
    p.add_argument("--emotion-steps", type=int, default=400,
                   help="training steps of the emotion judge when CHECKPOINT/judges/emotion does not hold one yet")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _modalities(text: str) -> tuple[str, ...]:
    out = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in out if m not in ("audio", "video")]
    if bad:
        raise ValueError(f"--ablate {text!r}: expected audio, video or audio,video")
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    from merg_jax.console import setup_logging, usage_error

    setup_logging()
    log = logging.getLogger("merg_jax")
    try:
        ablate = _modalities(args.ablate)
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit {args.limit}: must be >= 1")
        from merg_jax.eval.evaluate import evaluate, submission_rows, write_outputs
        from merg_jax.infer.bundle import load_model

        loaded = load_model(args.checkpoint)
        log.info("model: %s", loaded.source)
        result = evaluate(loaded, args.data, args.split, ablate=ablate, limit=args.limit, progress=not args.quiet,
                          emit=log.info)
        ablation = None
        if args.with_ablation:
            ablation = evaluate(loaded, args.data, args.split, ablate=("audio", "video"), limit=args.limit,
                                progress=not args.quiet, emit=log.info).metrics
            result.metrics["ablation_audio_video"] = ablation
        m = result.metrics
        if args.speech < 0:
            raise ValueError(f"--speech {args.speech}: must be >= 0")
        if args.speech and loaded.model.speech is not None:
            from merg_jax.eval.speech_eval import evaluate_speech

            m["speech"] = evaluate_speech(loaded, args.data, args.split, limit=args.speech, emit=log.info)
            log.info("speech: %s", ", ".join(f"{k} {v:.3f}" for k, v in m["speech"].items()
                                              if isinstance(v, float)))
        if args.video < 0 or args.sync_steps < 1 or args.emotion_steps < 1:
            raise ValueError(f"--video {args.video} / --sync-steps {args.sync_steps} / --emotion-steps "
                             f"{args.emotion_steps}: must be >= 0 / >= 1 / >= 1")
        if args.video and loaded.model.face is not None:
            import pathlib

            from merg_jax.eval.video_eval import evaluate_video

            judges = pathlib.Path(args.checkpoint) / "judges"
            m["video"] = evaluate_video(loaded, args.data, args.split, limit=args.video,
                                        sync_dir=str(judges / "sync"), sync_steps=args.sync_steps,
                                        emotion_dir=str(judges / "emotion"), emotion_steps=args.emotion_steps,
                                        emit=log.info)
        dataset = f"{args.data} ({args.split} split, {m['num_turns']} turns)"
        out, preds, table = write_outputs(result, args.out, ablation=ablation, dataset=dataset)
        print(table)
        log.info("wrote %s, %s and %s", out, preds, out.with_suffix(".md"))
        if args.submission:
            from merg_jax.eval.submission import build_submission, validate_submission, write_submission

            path = write_submission(args.submission, build_submission(submission_rows(result.rows)))
            if loaded.model.speech is not None or loaded.model.face is not None:
                from merg_jax.eval.evaluate import write_reply_media

                n = write_reply_media(loaded, result.rows, args.submission, args.data,
                                      emit=None if args.quiet else log.info)
                log.info("wrote %d reply wavs and %d reply mp4s into %s", n["wav"], n["mp4"], args.submission)
            validate_submission(path, media_dir=args.submission)
            log.info("wrote the challenge submission %s", path)
    except (ValueError, FileNotFoundError, FileExistsError, OSError) as e:
        return usage_error(PROG, e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
