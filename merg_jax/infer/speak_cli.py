"""`merg-jax speak`: the trained speech generator says a text, in the style of a reference clip or of a label.

    merg-jax speak --checkpoint DIR --text TEXT (--reference WAV | --emotion E [--gender G --age A --timbre T])
                   [--speed X] [--griffin-lim] --out FILE.wav

Any length of text (split at sentences, joined without clicks). A label picks the mean training style of that
emotion and profile. Bad input (empty text, an unreadable reference, an unknown label, a model without a speech
generator) gets one line on stderr and exit status 2. Writes 16-bit PCM at the generator's sample rate.
"""

from __future__ import annotations

import argparse
import sys
import time

from merg_jax import labels

PROG = "merg-jax speak"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="training output directory or bundle")
    p.add_argument("--text", required=True, help="what to say")
    style = p.add_mutually_exclusive_group(required=True)
    style.add_argument("--reference", help="a speech clip whose style to take (wav, or anything soundfile reads)")
    style.add_argument("--emotion", help=f"speak with the mean training style of this emotion: {labels.EMOTIONS_7}")
    p.add_argument("--gender", choices=labels.GENDERS, help="with --emotion")
    p.add_argument("--age", choices=labels.AGES, help="with --emotion")
    p.add_argument("--timbre", choices=labels.TIMBRES, help="with --emotion")
    p.add_argument("--speed", type=float, default=1.0, help="speaking rate factor (default 1.0)")
    p.add_argument("--griffin-lim", action="store_true",
                   help="vocode with Griffin-Lim instead of the trained vocoder (the fallback before it is trained)")
    p.add_argument("--out", required=True, help="output .wav")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    from merg_jax.console import setup_logging, usage_error

    setup_logging()
    if not args.text.strip():
        return usage_error(PROG, "--text is empty: nothing to say")
    if args.speed <= 0:
        return usage_error(PROG, f"--speed={args.speed}: must be > 0")
    if args.emotion is None and (args.gender or args.age or args.timbre):
        return usage_error(PROG, "--gender/--age/--timbre go with --emotion")
    try:
        from merg_jax.infer.bundle import load_model
        from merg_jax.infer.speech import Synthesizer, write_wav

        model = load_model(args.checkpoint).model
        synth = Synthesizer(model.speech, vocoder="griffin_lim" if args.griffin_lim else "neural")
        style = (synth.style_from_reference(args.reference) if args.reference else
                 synth.style_from_label(args.emotion, args.gender, args.age, args.timbre))
        t0 = time.perf_counter()
        wave = synth.speak(args.text, style, speed=args.speed)
        seconds = time.perf_counter() - t0
        write_wav(args.out, wave, synth.sample_rate)
    except (ValueError, FileNotFoundError, OSError) as e:
        return usage_error(PROG, e)
    print(f"wrote {args.out}: {wave.size / synth.sample_rate:.2f} s of speech in {seconds:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
