"""`merg-jax respond`: a trained model answers one dialogue turn and writes `DIR/reply.json` (and `DIR/reply.wav`,
`DIR/reply.mp4`).

    merg-jax respond --checkpoint DIR --dialogue FILE.json [--turn N] [--conversation ID] [--media-root DIR]
                     [--speech-from content|text] [--face-from content|speech] [--style-from sd|label]
                     [--emotion E] [--portrait IMG] --out DIR

The dialogue is in the AvaMERG JSON schema (one conversation, or a list: the first, or --conversation ID); the
answered turn is --turn (a turn_id; default the last), whose `response` may be absent. Media
(dia{conversation_id}utt{n}.wav/.mp4 under --media-root, default the dialogue's folder) are optional per
utterance. Bad input gets one line on stderr and exit status 2. reply.json's fields: merg_jax/infer/respond.py.
"""

from __future__ import annotations

import argparse
import json
import sys

from merg_jax.reply_rendering import add_rendering_args

PROG = "merg-jax respond"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="training output directory or bundle")
    p.add_argument("--dialogue", required=True, help="dialogue JSON (AvaMERG schema)")
    p.add_argument("--turn", default=None, help="turn_id to answer (default: the last turn)")
    p.add_argument("--conversation", default=None, help="conversation_id, when the file holds several")
    p.add_argument("--media-root", default=None, help="folder of the dialogue's wav/mp4 files")
    add_rendering_args(p)
    p.add_argument("--out", required=True, help="output directory (reply.json, reply.wav, reply.mp4)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    from merg_jax.console import setup_logging, usage_error

    setup_logging()
    try:
        from merg_jax.infer.bundle import load_model
        from merg_jax.infer.respond import Responder, read_turn

        # The dialogue is read before the model is loaded: a malformed file is refused at once.
        read_turn(args.dialogue, turn=args.turn, conversation=args.conversation, media_root=args.media_root,
                  check_media="none")
        responder = Responder(load_model(args.checkpoint), speech_from=args.speech_from, face_from=args.face_from,
                              portrait=args.portrait, style_from=args.style_from, emotion=args.emotion)
        reply = responder(args.dialogue, turn=args.turn, conversation=args.conversation, media_root=args.media_root,
                          out=args.out)
    except (ValueError, FileNotFoundError, OSError) as e:
        return usage_error(PROG, e)
    print(json.dumps({k: reply[k] for k in ("emotion", "response", "chain_of_empathy")}, indent=2,
                     ensure_ascii=False))
    wav = (reply.get("speech") or {}).get("wav")
    mp4 = (reply.get("video") or {}).get("mp4")
    print(f"wrote {args.out}/reply.json" + (f", {args.out}/{wav} ({reply['speech']['seconds']} s)" if wav else "")
          + (f", {args.out}/{mp4} ({reply['video']['frames']} frames)" if mp4 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
