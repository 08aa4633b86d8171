"""`merg-jax animate`: the trained face generator animates a portrait with speech, in the style of a reference clip,
of an emotion label, or with no style at all.

    merg-jax animate --checkpoint DIR --portrait IMG --audio WAV [--reference MP4 [--reference-neutral IMG] |
                     --emotion E [--intensity X]] [--size S] [--steps N] [--seed N] --out FILE.mp4

Any length of speech (motion in overlapping windows that join without jumps). Writes H.264 mp4 at the generator's
frame rate with the audio muxed in (AAC). A reference clip's motion is read against a neutral image of its face,
`--reference-neutral` (default: the portrait, right when the reference shows the same person). Bad input (an
unreadable portrait, silent or empty audio, a wrong size, a model without a face generator) gets one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from merg_jax import labels

PROG = "merg-jax animate"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="training output directory or bundle")
    p.add_argument("--portrait", required=True, help="the face to animate (any image PIL reads; centre square)")
    p.add_argument("--audio", required=True, help="the speech (wav, or anything soundfile reads)")
    style = p.add_mutually_exclusive_group()
    style.add_argument("--reference", help="a talking-face clip whose style to take (mp4)")
    style.add_argument("--emotion", help=f"the style of this emotion: {labels.EMOTIONS_7}")
    p.add_argument("--reference-neutral", help="with --reference: a neutral image of the reference's face")
    p.add_argument("--intensity", type=float, default=1.0, help="with --emotion: 0 neutral … 1 as trained … 2")
    p.add_argument("--size", type=int, default=0, help="output frame size (default: the trained size)")
    p.add_argument("--steps", type=int, default=0, help="DDIM steps (default: the config's sample_steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output .mp4")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    from merg_jax.console import setup_logging, usage_error

    setup_logging()
    if args.reference_neutral and not args.reference:
        return usage_error(PROG, "--reference-neutral goes with --reference")
    if args.intensity != 1.0 and not args.emotion:
        return usage_error(PROG, "--intensity goes with --emotion")
    if args.size < 0 or args.size % 2:
        return usage_error(PROG, f"--size={args.size}: expected an even number of pixels")
    if args.steps < 0:
        return usage_error(PROG, f"--steps={args.steps}: must be ≥ 1")
    try:
        from merg_jax.data import media
        from merg_jax.data.face_corpus import read_image
        from merg_jax.data.mp4_writer import write_mp4
        from merg_jax.infer.bundle import load_model
        from merg_jax.infer.face import Animator, animate
        from merg_jax.infer.speech import write_wav

        portrait = read_image(args.portrait)
        wave, sr = media.read_wav(args.audio)
        reference = media.read_video(args.reference)[0] if args.reference else None
        neutral = read_image(args.reference_neutral) if args.reference_neutral else None
        model = load_model(args.checkpoint).model
        anim = Animator(model.face, steps=args.steps or None, seed=args.seed)
        t0 = time.perf_counter()
        frames = animate(model.face, portrait, speech=(wave, sr), reference=reference, reference_neutral=neutral,
                         emotion=args.emotion, intensity=args.intensity, size=args.size or None, seed=args.seed,
                         animator=anim)
        seconds = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            wav = f"{tmp}/audio.wav"
            write_wav(wav, wave, sr)
            write_mp4(args.out, frames, int(round(anim.fps)), audio=wav)
    except (ValueError, FileNotFoundError, OSError) as e:
        return usage_error(PROG, e)
    duration = len(frames) / anim.fps
    print(f"wrote {args.out}: {len(frames)} frames ({duration:.2f} s) of {frames.shape[1]}×{frames.shape[2]} in "
          f"{seconds:.2f} s (real-time factor {seconds / duration:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
