"""`merg-jax bench face`: the talking-face generator's speed: renderer, motion sampler, and animation end to end.

    merg-jax bench face [--config configs/empatheia_tiny.py | --checkpoint DIR] [--seconds 4] [--size 0]
                        [--steps 0] [--emotion happy] [--repeats 3] [--seed 0] [--json FILE] [--config.KEY=VALUE ...]

What `merg-jax animate` runs (`merg_jax.infer.face.Animator`), on `--seconds` of speech at the generator's frame
rate (F = round(seconds · fps) frames), one row per part:

- `content`: the speech → the generator's log-mel → the audio content encoder, one vector per video frame;
- `motion`: the diffusion transformer sampling keypoint motion for the F frames, in windows of `window` frames
  that overlap by `overlap` (DDIM, `sample_steps` steps, classifier-free guidance on the style: each step denoises
  the window twice, with and without the style);
- `renderer`: the portrait warped by the keypoints and the motion and decoded, F frames at the configured size (or
  `--size`), in chunks of 25 frames;
- `end to end`: `infer.face.animate(...)`: content, the label style of `--emotion`, motion and frames, the frames
  back on the host as uint8 (not the mp4 encoding).

Each row prints the seconds per call, frames/s and the real-time factor (compute seconds / seconds of video; < 1
is faster than real time); the end-to-end real-time factor comes last. Warm-up (compilation, first calls) is
excluded; each time is the median of `--repeats` calls. The weights are random, from the config's shapes (default
`configs/empatheia_tiny.py`, `--config.empatheia.face.KEY=VALUE` overrides), unless `--checkpoint` names a trained
run or bundle: the speed is the same, the frames are not. The speech is a synthetic voiced signal and the portrait
random pixels: no file is read.

There is no peer: no PyTorch implementation of this generator exists (its design — learnt keypoints plus an
expression code, an occlusion-aware warping renderer, a motion diffusion transformer — follows FOMM and the
diffusion talking heads, but none of those is this model or is installed here), so no ratio is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from merg_jax.bench.timing import median_time


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("face", help="the talking-face generator: renderer and motion frames/s, real-time factor",
                       description=__doc__.split("\n\n")[0],
                       epilog="--config.KEY=VALUE overrides the config (e.g. --config.empatheia.face.size=64).")
    p.add_argument("--config", default="configs/empatheia_tiny.py",
                   help="config whose empatheia.face section sizes the random generator (default %(default)s)")
    p.add_argument("--checkpoint", default=None, help="a trained run or bundle: its face generator instead")
    p.add_argument("--seconds", type=float, default=4.0, help="seconds of speech to animate (default %(default)s)")
    p.add_argument("--size", type=int, default=0, help="output frame size (default 0: the trained size)")
    p.add_argument("--steps", type=int, default=0, help="DDIM steps (default 0: the config's sample_steps)")
    p.add_argument("--emotion", default="happy", help="the style of the end-to-end row (default %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="weights, speech and portrait (default %(default)s)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the numbers to FILE as JSON")
    return p


@dataclasses.dataclass
class Row:
    """One measured part: seconds per call for `frames` frames of a `video_s`-second clip."""

    name: str
    seconds: float
    frames: int
    video_s: float
    detail: str = ""

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds

    @property
    def rtf(self) -> float:
        """Compute seconds per second of video (< 1: faster than real time)."""
        return self.seconds / self.video_s

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "frames_per_s": self.frames_per_s, "rtf": self.rtf}


# ----------------------------------------------------------------------------------------------------------------
# Inputs


def synthetic_speech(seconds: float, sample_rate: int, seed: int = 0) -> np.ndarray:
    """A voiced signal `[seconds · sample_rate]` float32: a 120–180 Hz glottal tone and its harmonics, opened and
    closed at ~4 syllables a second, plus a little noise (the animator rejects silence)."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    f0 = 150.0 + 30.0 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * 4.0 * t), 0.0, None)
    return (0.2 * voice * envelope + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def random_portrait(size: int, seed: int = 0) -> np.ndarray:
    """uint8 `[size, size, 3]` of random pixels (the renderer's cost does not depend on what they show)."""
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def random_face(config, seed: int):
    """The face generator of `config.empatheia.face`, random weights from its initialisers. Drawn with XLA's
    RngBitGenerator (`unsafe_rbg`), not threefry: the same distributions, and an init program of dozens of
    convolution kernels compiles several times faster (`bench.empatheia.random_model`); nothing timed uses it."""
    import jax
    from flax import nnx

    from merg_jax.models.face.config import FaceConfig
    from merg_jax.models.face.generator import FaceGenerator

    section = (config.get("empatheia") or {}).get("face")
    if not section:
        raise ValueError("the config has no empatheia.face section: no face generator to benchmark")
    cfg = FaceConfig.from_dict(section)

    def make():
        return FaceGenerator(cfg, rngs=nnx.Rngs(seed))

    old = jax.config.jax_default_prng_impl
    jax.config.update("jax_default_prng_impl", "unsafe_rbg")
    try:
        graphdef, _ = nnx.split(nnx.eval_shape(make))
        return nnx.merge(graphdef, jax.jit(lambda: nnx.state(make()))())  # one init program, not op by op
    finally:
        jax.config.update("jax_default_prng_impl", old)


# ----------------------------------------------------------------------------------------------------------------
# Rows


def bench_rows(face, args) -> list[Row]:
    """The four rows on one Animator (its jitted programs compile once, in the first row that needs each)."""
    from merg_jax.infer.face import RENDER_CHUNK, Animator, animate

    anim = Animator(face, steps=args.steps or None, seed=args.seed)
    cfg = anim.cfg
    size = args.size or cfg.size
    wave = synthetic_speech(args.seconds, cfg.sample_rate, args.seed)
    portrait = random_portrait(max(size, cfg.size), args.seed)
    content = anim.content_from_speech(wave, cfg.sample_rate)
    frames = content.shape[0]
    video_s = frames / cfg.fps  # the video made: round(seconds · fps) frames
    style = anim.style_from_label(args.emotion)
    motion = anim.motion(content, style)

    rows = []
    t = median_time(lambda: anim.content_from_speech(wave, cfg.sample_rate), args.repeats, warmup=1)
    rows.append(Row("content", t, frames, video_s, (f"{len(wave):,} samples at {cfg.sample_rate} Hz -> log-mel "
                                                    f"({cfg.n_mels} mels, hop {cfg.hop}) -> [{frames}, "
                                                    f"{cfg.content_dim}]")))
    t = median_time(lambda: anim.motion(content, style), args.repeats, warmup=1)
    windows = 1 + max(0, -(-(frames - cfg.window) // (cfg.window - cfg.overlap)))
    rows.append(Row("motion", t, frames, video_s,
                    f"{windows} window(s) of {cfg.window} frames (overlap {cfg.overlap}), {anim.steps} DDIM steps x 2 "
                    f"(guidance {anim.guidance:g}), transformer dim {cfg.dim} x {cfg.layers} layers -> [{frames}, "
                    f"{cfg.motion_dim}]"))
    t = median_time(lambda: anim.render(portrait, motion, size=size), args.repeats, warmup=1)
    rows.append(Row("renderer", t, frames, video_s,
                    f"{frames} frames of {size}x{size} (trained at {cfg.size}), chunks of {RENDER_CHUNK}, "
                    f"{cfg.num_keypoints} keypoints + {cfg.expression_dim}-number code, channels "
                    f"{'/'.join(map(str, cfg.channels))}"))
    out = {}

    def end_to_end():
        out["frames"] = animate(face, portrait, speech=(wave, cfg.sample_rate), emotion=args.emotion,
                                size=size, seed=args.seed, animator=anim)

    t = median_time(end_to_end, args.repeats, warmup=1)
    shape = out["frames"].shape
    if shape != (frames, size, size, 3):
        raise AssertionError(f"animate returned frames {shape}, expected {(frames, size, size, 3)}")
    rows.append(Row("end to end", t, frames, video_s,
                    f"speech -> content, '{args.emotion}' label style, motion, frames (uint8 on the host) at "
                    f"{cfg.fps:g} fps"))
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Report


def format_report(rows: list[Row], args, versions: dict, source: str) -> str:
    lines = [(f"merg-jax bench face | {source} | {args.seconds:g} s of speech, {rows[0].frames} frames at "
              f"{versions['fps']:g} fps | median of {args.repeats} calls, warm-up excluded"),
             (f"jax {versions['jax']} ({versions['backend']}: {versions['device_kind']}) | {versions['cpus']} CPUs | "
              f"no peer: no PyTorch implementation of this generator exists")]
    lines += [f"{r.name}: {r.detail}" for r in rows]
    lines += ["", f"{'part':<12}{'s per call':>12}{'frames/s':>11}{'RTF':>9}"]
    for r in rows:
        lines.append(f"{r.name:<12}{r.seconds:>12.4g}{r.frames_per_s:>11.4g}{r.rtf:>9.4g}")
    lines.append("RTF = compute seconds / seconds of video (< 1: faster than real time)")
    lines.append(f"end-to-end real-time factor: {rows[-1].rtf:.3f}")
    return "\n".join(lines)


def _check(args, rest: list[str]) -> list[str]:
    """The flags' problems, each naming its flag."""
    from merg_jax.labels import EMOTIONS_7

    problems = []
    if not args.seconds > 0:
        problems.append(f"--seconds must be positive, got {args.seconds}")
    if args.repeats < 1:
        problems.append(f"--repeats must be >= 1, got {args.repeats}")
    if args.steps < 0:
        problems.append(f"--steps must be >= 1 (0: the config's sample_steps), got {args.steps}")
    if args.size < 0 or args.size % 2:
        problems.append(f"--size {args.size}: expected an even number of pixels (0: the trained size)")
    if args.emotion not in EMOTIONS_7:
        problems.append(f"--emotion {args.emotion!r} is not one of {', '.join(EMOTIONS_7)}")
    if args.checkpoint and rest:
        problems.append(f"--checkpoint takes its config from the run: drop {' '.join(rest)}")
    return problems


def _face(args, rest: list[str]):
    """(the face generator, what it is): from --checkpoint, or random from --config and its overrides."""
    if args.checkpoint:
        from merg_jax.infer.bundle import load_model

        face = load_model(args.checkpoint).model.face
        if face is None:
            raise ValueError(f"--checkpoint {args.checkpoint}: the model has no face generator (config.empatheia.face)")
        return face, f"trained generator from {args.checkpoint}"
    from merg_jax.config import load_config, split_overrides

    config = load_config(args.config, split_overrides(rest))
    return random_face(config, args.seed), f"{args.config}: random weights (seed {args.seed})"


def run(args, rest: list[str], parser: argparse.ArgumentParser) -> int:
    problems = _check(args, rest)
    if problems:
        parser.print_usage(sys.stderr)
        for p in problems:
            print(f"merg-jax bench face: error: {p}", file=sys.stderr)
        return 2
    import jax

    from merg_jax.infer.face import AnimationError

    try:
        t0 = time.perf_counter()
        face, source = _face(args, rest)
        print(f"made the face generator in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        if args.size and args.size < face.cfg.size:
            raise ValueError(f"--size {args.size} is below the generator's trained size {face.cfg.size}")
        if args.steps > face.cfg.diffusion_steps:
            raise ValueError(f"--steps {args.steps}: expected 1..{face.cfg.diffusion_steps} (diffusion_steps)")
        rows = bench_rows(face, args)
    except (ValueError, KeyError, TypeError, FileNotFoundError, AttributeError, AnimationError) as e:
        parser.print_usage(sys.stderr)
        print(f"merg-jax bench face: error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2
    device = jax.devices()[0]
    versions = {"jax": jax.__version__, "backend": jax.default_backend(),
                "device_kind": getattr(device, "device_kind", device.platform), "fps": face.cfg.fps,
                "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}
    print(format_report(rows, args, versions, source))
    if args.json:
        out = {"target": "face", "args": {k: v for k, v in vars(args).items() if k not in ("json", "target")},
               "overrides": list(rest), "source": source, "versions": versions, "face_config": face.cfg.to_dict(),
               "peer": None, "rows": {r.name: r.to_json() for r in rows},
               "end_to_end_rtf": rows[-1].rtf}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0
