"""`merg-jax bench data`: samples/s of the AvaMERG input pipeline with 0 and with N grain worker processes.

    merg-jax bench data [--data DIR] [--split train] [--config configs/tiny.py] [--workers 2] [--batches 8]
                        [--dialogues 8] [--json FILE] [--config.data.KEY=VALUE ...]

Without --data, a small dataset is generated in a temporary directory by the AvaMERG-mini generator (`merg-jax
make-data`; a tone-and-colour stand-in if the generator fails). The tokenizer is the config's `data.tokenizer`
when that directory exists, else a byte-level BPE trained on the split (seconds). Each run builds a fresh iterator
(the config's features, shuffle and per-host batch), takes one batch (the start-up: worker processes, first
decodes, reported apart) and then times `--batches` batches. `ratio` is the N-worker rate over the 0-worker rate:
above 1, the workers help. Decoding is mostly ffmpeg and numpy, so the gain follows the free CPU cores.
`--json FILE` also writes every number to FILE.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("data", help="input pipeline samples/s with 0 and N grain workers",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="dataset dir (AvaMERG layout); default: generate a small one")
    p.add_argument("--split", default="train")
    p.add_argument("--config", default="configs/tiny.py", help="config whose `data` section is used (%(default)s)")
    p.add_argument("--workers", type=int, default=2, help="worker processes of the second run (%(default)s)")
    p.add_argument("--batches", type=int, default=8, help="timed batches per run, after the first (%(default)s)")
    p.add_argument("--batch-size", type=int, default=0, help="per-host batch (default: the config's)")
    p.add_argument("--dialogues", type=int, default=8, help="dialogues to generate without --data (%(default)s)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the numbers to FILE as JSON")
    return p


def _synthetic_dataset(root: pathlib.Path, dialogues: int, split: str) -> None:
    """A stand-in in the AvaMERG layout: 1 s tones and 1 s colour-ramp 96x96 25 fps videos, 2 turns each."""
    from merg_jax.data.ffmpeg import imageio_ffmpeg
    import numpy as np
    import soundfile as sf

    convs = []
    (root / split / "audio").mkdir(parents=True, exist_ok=True)
    (root / split / "video").mkdir(parents=True, exist_ok=True)
    for i in range(dialogues):
        cid = f"{i:05d}"
        texts = [f"Utterance {n} of dialogue {i}: something happened and I feel it." for n in range(1, 5)]
        turns = [{"turn_id": str(t), "context": "a situation",
                  "dialogue_history": [{"index": k, "role": "speaker" if k % 2 == 0 else "listener",
                                        "utterance": texts[k]} for k in range(2 * t + 1)],
                  "response": texts[2 * t + 1],
                  "chain_of_empathy": {"speaker_emotion": "sad", "event_scenario": "an event",
                                       "emotion_cause": "a cause", "goal_to_response": "to comfort"}}
                 for t in range(2)]
        convs.append({"conversation_id": cid, "topic": "Work", "turns": turns,
                      "speaker_profile": {"age": "young", "gender": "male", "timbre": "high", "ID": 1},
                      "listener_profile": {"age": "young", "gender": "female", "timbre": "mid", "ID": 2}})
        for n in range(1, 5):
            t = np.arange(16000) / 16000
            sf.write(str(root / split / "audio" / f"dia{cid}utt{n}.wav"),
                     (0.3 * np.sin(2 * np.pi * (150 + 40 * n) * t)).astype(np.float32), 16000, subtype="PCM_16")
            w = imageio_ffmpeg.write_frames(str(root / split / "video" / f"dia{cid}utt{n}.mp4"), (96, 96), fps=25,
                                            macro_block_size=2, ffmpeg_log_level="error")
            w.send(None)
            for f in range(25):
                w.send(np.full((96, 96, 3), (8 * f + 40 * n) % 256, np.uint8).tobytes())
            w.close()
    (root / f"{split}.json").write_text(json.dumps(convs))


def _dataset(args, tmp: pathlib.Path) -> tuple[pathlib.Path, str]:
    if args.data:
        return pathlib.Path(args.data), "given"
    root = tmp / "avamerg_mini"
    try:
        from merg_jax.data.mini.generate import Config, make_dataset

        make_dataset(Config(out=root, dialogues=args.dialogues, splits=(1.0, 0.0, 0.0),
                            workers=max(1, min(2, os.cpu_count() or 1)), progress=False))
        return root, f"AvaMERG-mini, {args.dialogues} dialogues, generated"
    except Exception as e:  # the generator is optional here: fall back to the stand-in
        print(f"  make-data failed ({type(e).__name__}: {e}); using synthetic tones and colour ramps",
              file=sys.stderr)
        root = tmp / "synthetic"
        _synthetic_dataset(root, args.dialogues, args.split)
        return root, f"synthetic, {args.dialogues} dialogues"


def measure(config, split: str, tokenizer, *, workers: int, batches: int) -> dict:
    from merg_jax.data.pipeline import make_iterator

    t0 = time.perf_counter()
    it = make_iterator(config, split, tokenizer=tokenizer, shard_index=0, shard_count=1, workers=workers,
                       num_epochs=None)
    try:
        next(it)
        t1 = time.perf_counter()
        samples = 0
        for _ in range(batches):
            samples += int((next(it)["sample_index"] >= 0).sum())
        t2 = time.perf_counter()
    finally:
        it.close()
    return {"workers": workers, "startup_s": t1 - t0, "seconds": t2 - t1, "samples": samples,
            "samples_per_s": samples / (t2 - t1), "skipped": it.skipped}


def run(args, rest: list[str], parser: argparse.ArgumentParser) -> int:
    from merg_jax.config import load_config
    from merg_jax.data.pipeline import PipelineSettings
    from merg_jax.data.tokenizer import load_tokenizer, train_bpe

    prog = "merg-jax bench data"
    bad = [r for r in rest if not r.startswith("--config.")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    for name in ("workers", "batches", "dialogues"):
        if getattr(args, name) < (0 if name == "workers" else 1):
            print(f"{prog}: error: --{name} must be >= {0 if name == 'workers' else 1}", file=sys.stderr)
            return 2
    if args.data and not pathlib.Path(args.data).is_dir():
        print(f"{prog}: error: --data {args.data} is not a directory", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="merg_bench_data_") as tmp:
        print("preparing the dataset ...", file=sys.stderr, flush=True)
        root, what = _dataset(args, pathlib.Path(tmp))
        overrides = [f"--config.data.root={root}", "--config.data.source=raw"] + list(rest)
        if args.batch_size:
            overrides.append(f"--config.data.batch_size={args.batch_size}")
        try:
            config = load_config(args.config, overrides)
            settings = PipelineSettings.from_config(config)
        except (FileNotFoundError, KeyError, ValueError, AttributeError) as e:
            print(f"{prog}: error: {e}", file=sys.stderr)
            return 2
        if settings.tokenizer and pathlib.Path(settings.tokenizer).is_dir():
            tokenizer, tok_what = load_tokenizer(settings.tokenizer), settings.tokenizer
        else:
            from merg_jax.data.avamerg import read_split
            from merg_jax.data.tokenizer_cli import training_texts

            try:
                split = read_split(root, args.split, check_media="none")
            except ValueError as e:
                print(f"{prog}: error: --data {root}: {e}", file=sys.stderr)
                return 2
            tokenizer = train_bpe(training_texts(split), vocab_size=4096)
            tok_what = f"BPE trained here ({tokenizer.vocab_size} tokens)"
        s = settings.spec
        groups = [f"{name} {frames}x{detail}" for name, frames, detail in (
            ("audio", s.audio_frames, f"{s.audio.n_mels} mel"), ("video", s.video_frames, f"{s.video.size}px"),
            ("reply audio", s.reply_audio_frames, f"{s.reply_audio.n_mels} mel"),
            ("reply video", s.reply_video_frames, f"{s.reply_video.size}px")) if frames]
        rows = []
        for workers in (0, args.workers) if args.workers else (0,):
            print(f"  measuring {workers} worker(s) ...", file=sys.stderr, flush=True)
            rows.append(measure(config, args.split, tokenizer, workers=workers, batches=args.batches))
    print(f"merg-jax bench data | {root.name if args.data is None else root} ({what}), split {args.split} | batch "
          f"{settings.batch_size}, seq_len {s.seq_len}, clips {s.max_clips}, {', '.join(groups) or 'text only'} | "
          f"tokenizer: {tok_what} | {os.cpu_count()} CPU cores")
    print("")
    print(f"{'workers':>8}{'startup s':>12}{'samples/s':>12}{'samples':>10}{'skipped':>10}")
    for r in rows:
        print(f"{r['workers']:>8}{r['startup_s']:>12.2f}{r['samples_per_s']:>12.2f}{r['samples']:>10}"
              f"{r['skipped']:>10}")
    ratio = rows[1]["samples_per_s"] / rows[0]["samples_per_s"] if len(rows) == 2 else None
    if ratio is not None:
        print(f"\nratio ({rows[1]['workers']} workers / 0 workers): {ratio:.2f}")
    if args.json:
        out = {"target": "data", "args": {k: v for k, v in vars(args).items() if k not in ("json", "target")},
               "overrides": list(rest), "dataset": what, "root": args.data, "tokenizer": tok_what,
               "cpus": os.cpu_count(), "batch_size": settings.batch_size, "seq_len": s.seq_len,
               "max_clips": s.max_clips, "media": groups, "rows": rows, "ratio": ratio}
        pathlib.Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0
