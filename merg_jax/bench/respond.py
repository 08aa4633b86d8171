"""`merg-jax bench respond`: how long one reply takes — text, reply.wav and reply.mp4 — split by stage.

    merg-jax bench respond --checkpoint DIR --dialogue FILE.json [--media-root DIR] [--repeats 3]
                           [--speech-from content|text] [--face-from content|speech] [--style-from sd|label]
                           [--emotion E] [--portrait IMG] [--out DIR] [--markdown FILE] [--json FILE]

One `Responder` answers the dialogue `1 + repeats` times: the first call compiles its programs, the others show
the warm latency (their median per stage; `Responder.timings` gives each call's stages). The real-time factor is
the warm total over the seconds of reply speech (below 1: the reply is ready faster than it plays).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile

from merg_jax.reply_rendering import add_rendering_args

STAGES = ("read", "reply", "speech", "video", "total")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("respond", help="latency of one reply (text, wav, mp4) by stage, first call and warm",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="training output directory or bundle")
    p.add_argument("--dialogue", required=True, help="dialogue JSON (AvaMERG schema)")
    p.add_argument("--media-root", default=None, help="folder of the dialogue's wav/mp4 files")
    add_rendering_args(p)  # the reply timed as `merg-jax respond` would make it with the same flags
    p.add_argument("--repeats", type=int, default=3, help="warm calls after the first (default %(default)s)")
    p.add_argument("--out", default=None, help="where the replies go (default: a temporary folder)")
    p.add_argument("--markdown", default=None, help="also write the table to this file")
    p.add_argument("--json", default=None, help="also write the figures as JSON to this file")
    return p


def measure(responder, dialogue: str, *, repeats: int, out: pathlib.Path, media_root=None) -> dict:
    """{"first": {stage: s}, "warm": {stage: median s}, "reply_seconds", "rtf", "response"}."""
    calls = []
    for _ in range(1 + repeats):
        result = responder(dialogue, media_root=media_root, out=out)
        calls.append(dict(responder.timings))
    warm = calls[1:] or calls
    median = {s: statistics.median(c[s] for c in warm) for s in STAGES if all(s in c for c in warm)}
    seconds = float((result.get("speech") or {}).get("seconds") or 0.0)
    return {"first": calls[0], "warm": median, "reply_seconds": seconds,
            "rtf": median["total"] / seconds if seconds else None, "response": result["response"],
            "video_frames": (result.get("video") or {}).get("frames")}


def format_markdown(figures: dict, *, header: str) -> str:
    lines = [header, "", "| stage | first call (compiles), s | warm (median), s |", "|---|---:|---:|"]
    for s in STAGES:
        if s in figures["warm"]:
            lines.append(f"| {s} | {figures['first'].get(s, float('nan')):.2f} | {figures['warm'][s]:.2f} |")
    rtf = figures["rtf"]
    lines += ["", f"Reply speech {figures['reply_seconds']:.2f} s, {figures['video_frames'] or 0} video frames; "
              f"real-time factor (warm total / speech) {'–' if rtf is None else f'{rtf:.2f}'}."]
    return "\n".join(lines) + "\n"


def run(args, rest: list[str], parser: argparse.ArgumentParser) -> int:
    import jax

    from merg_jax.host_allocator import describe
    from merg_jax.infer.bundle import ModelLoadError, load_model
    from merg_jax.infer.respond import RespondError, Responder

    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    try:
        responder = Responder(load_model(args.checkpoint), speech_from=args.speech_from, face_from=args.face_from,
                              portrait=args.portrait, style_from=args.style_from, emotion=args.emotion)
        with tempfile.TemporaryDirectory() as tmp:
            out = pathlib.Path(args.out or tmp)
            figures = measure(responder, args.dialogue, repeats=args.repeats, out=out, media_root=args.media_root)
    except (ModelLoadError, RespondError, FileNotFoundError) as e:
        print(f"merg-jax bench respond: error: {e}", file=sys.stderr)
        return 2
    device = jax.devices()[0].device_kind
    text = format_markdown(figures, header=f"One reply from {args.checkpoint} on {device} ({jax.default_backend()}, "
                                           f"jax {jax.__version__}, allocator {describe()}, "
                                           f"{args.repeats} warm calls; speech from {args.speech_from}, face "
                                           f"from {args.face_from}, style from {args.style_from})")
    figures.update(speech_from=args.speech_from, face_from=args.face_from, style_from=args.style_from)
    print(text)
    for path, payload in ((args.markdown, text), (args.json, json.dumps(figures, indent=2) + "\n")):
        if path:
            pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
            pathlib.Path(path).write_text(payload)
    return 0
