"""`merg-jax bench speech`: speech synthesis speed, ours against Hugging Face PyTorch, one row per component.

    merg-jax bench speech [--rows vocoder,synthesis --checkpoint DIR] [--batch 1] [--seconds 5] [--sampling-rate 16000] [--mels 80]
                          [--channels 256] [--upsample-rates 8,8,4] [--steps 1] [--repeats 5] [--seed 0]
                          [--json FILE]

Row `vocoder`: our `HifiGan` against transformers' `SpeechT5HifiGan` on the same weights (a random V3-shaped
generator — ResBlock1 with V3's kernels 3/5/7 and dilations (1,2)/(2,6)/(3,12), upsampling kernels 2 × rate —
saved with `save_pretrained` and imported with `load_hf_hifigan`), vocoding a random log-mel of `seconds` of
audio: T = ceil(seconds · sampling_rate / hop) frames (hop = prod(upsample rates); 5 s at 16 kHz, hop 256: 313
frames × 80 mels). Ours is one jitted function of the split state, blocked on; the peer runs under
`torch.inference_mode()`. Each prints the seconds per call and the real-time factor (compute seconds / seconds of
audio produced; < 1 is faster than real time), and the ratio ours / peer of the times (< 1: ours is faster) last.

Both sides get the same CPUs: PyTorch is set to as many threads as the CPUs this process may run on, which is
what XLA's CPU backend uses (restrict both with `taskset -c 0-3 merg-jax bench speech`). Warm-up (compilation,
first calls) is excluded; each time is the median over `repeats` timed repeats of `steps` calls, each side timed
in one block. `--json FILE` also writes every number to FILE.

Adding a row: write `bench_ROW(args) -> Row` and register it in `ROWS`; a row without a peer leaves `peer_s`
None (its ratio prints as "-").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from merg_jax.bench.timing import median_time
from merg_jax.bench.preflight import preflight

# HiFi-GAN V3's multi-receptive-field stacks (its ResBlock2 kernels and dilations, here in ResBlock1, the only
# kind SpeechT5HifiGan has).
V3_RESBLOCK_KERNELS = (3, 5, 7)
V3_RESBLOCK_DILATIONS = ((1, 2), (2, 6), (3, 12))


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("speech", help="speech synthesis (the HiFi-GAN vocoder) vs Hugging Face PyTorch",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="vocoder",
                   help=f"comma-separated: {', '.join(ROWS)} (default %(default)s; synthesis needs --checkpoint)")
    p.add_argument("--checkpoint", default=None,
                   help="synthesis row: a trained run or bundle whose speech generator speaks --seconds of text")
    p.add_argument("--batch", type=int, default=1, help="utterances per call (default %(default)s)")
    p.add_argument("--seconds", type=float, default=5.0, help="audio per utterance (default %(default)s)")
    p.add_argument("--sampling-rate", type=int, default=16000, help="Hz (default %(default)s)")
    p.add_argument("--mels", type=int, default=80, help="mel bands (default %(default)s)")
    p.add_argument("--channels", type=int, default=256,
                   help="vocoder: upsample_initial_channel, halved per stage (V3: 256; default %(default)s)")
    p.add_argument("--upsample-rates", default="8,8,4",
                   help="vocoder: comma-separated; kernels are 2 x rate, hop = product (default %(default)s)")
    p.add_argument("--steps", type=int, default=1, help="calls per timed repeat (default %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats; the median is reported (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="FILE", default=None, help="also write the numbers to FILE as JSON")
    return p


@dataclasses.dataclass
class Row:
    """One measured component: seconds per call of ours and the peer (None: no peer), the seconds of audio one
    call produces, and what the report should say about it (`detail`, `checks`: name → number)."""

    name: str
    ours_s: float
    peer_s: float | None
    audio_s: float
    detail: str = ""
    checks: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def ours_rtf(self) -> float:
        return self.ours_s / self.audio_s

    @property
    def peer_rtf(self) -> float | None:
        return None if self.peer_s is None else self.peer_s / self.audio_s

    @property
    def ratio(self) -> float | None:
        """ours / peer time: < 1 means ours is faster."""
        return None if self.peer_s is None else self.ours_s / self.peer_s

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "ours_rtf": self.ours_rtf, "peer_rtf": self.peer_rtf,
                "ratio": self.ratio}


def _rates(args) -> tuple[int, ...]:
    return tuple(int(r) for r in args.upsample_rates.split(",") if r.strip())


def frames(args) -> int:
    """Mel frames for `seconds` of audio at the vocoder's hop."""
    return math.ceil(args.seconds * args.sampling_rate / math.prod(_rates(args)))


def _time_pair(ours: Callable[[], None], peer: Callable[[], None] | None, args) -> tuple[float, float | None]:
    """(ours, peer) seconds per call: one warm-up, then the median of `repeats` repeats of `steps` calls; each
    side in one block (alternating wakes each side's thread pool cold)."""

    def block(fn):
        def run():
            for _ in range(args.steps):
                fn()
        return run

    ours()  # warm-up: compiles
    t_ours = median_time(block(ours), args.repeats) / args.steps
    if peer is None:
        return t_ours, None
    peer()
    return t_ours, median_time(block(peer), args.repeats) / args.steps


# ----------------------------------------------------------------------------------------------------------------
# Rows


def vocoder_config(args):
    """The benchmarked generator: HiFi-GAN V3's shape at `--channels`, as a transformers config."""
    from transformers import SpeechT5HifiGanConfig

    rates = _rates(args)
    return SpeechT5HifiGanConfig(model_in_dim=args.mels, sampling_rate=args.sampling_rate,
                                 upsample_initial_channel=args.channels, upsample_rates=list(rates),
                                 upsample_kernel_sizes=[2 * r for r in rates],
                                 resblock_kernel_sizes=list(V3_RESBLOCK_KERNELS),
                                 resblock_dilation_sizes=[list(d) for d in V3_RESBLOCK_DILATIONS],
                                 normalize_before=True)


def _peer_vocoder(args, tmp: str):
    """(ours, peer): a random SpeechT5HifiGan (weights and mean/scale), saved and imported with load_hf_hifigan."""
    import torch
    from transformers import SpeechT5HifiGan
    from transformers.utils import logging as hf_logging

    from merg_jax.bench.encoders import randomize_torch_module
    from merg_jax.convert import load_hf_hifigan

    torch.manual_seed(args.seed)
    peer = SpeechT5HifiGan(vocoder_config(args)).eval()
    # Weights std ∝ 1/sqrt(width) (fan-ins grow with --channels): the wave stays well inside tanh's linear range
    # (std ~0.04) at any width, so the parity check below compares real values, not ±1.
    randomize_torch_module(peer, args.seed, scale=0.6 / math.sqrt(args.channels))
    with torch.no_grad():
        peer.mean.normal_(generator=torch.Generator().manual_seed(args.seed + 1))
        peer.scale.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(args.seed + 2))
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one small shard: its "Writing model shards" bar is noise in the report
    try:
        peer.save_pretrained(tmp)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return load_hf_hifigan(tmp), peer


def bench_vocoder(args) -> Row:
    """Our HifiGan vs SpeechT5HifiGan on one random log-mel batch `[batch, frames, mels]`."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from flax import nnx

    with tempfile.TemporaryDirectory() as tmp:
        model, peer = _peer_vocoder(args, tmp)
    t = frames(args)
    mel_np = np.random.default_rng(args.seed + 3).standard_normal((args.batch, t, args.mels)).astype(np.float32)
    mel, mel_t = jnp.asarray(mel_np), torch.from_numpy(mel_np)
    # Split once: no call pays nnx.jit's graph traversal (the functional form a serving loop uses).
    graphdef, state = nnx.split(model)
    vocode = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))

    wave = np.asarray(vocode(state, mel))
    with torch.inference_mode():
        ref = peer(mel_t).numpy()
    if wave.shape != ref.shape:
        raise AssertionError(f"vocoder: our output {wave.shape} is not the peer's {ref.shape}")

    def peer_call():
        with torch.inference_mode():
            peer(mel_t)

    t_ours, t_peer = _time_pair(lambda: jax.block_until_ready(vocode(state, mel)), peer_call, args)
    cfg = model.config
    n_params = sum(p.numel() for p in peer.parameters())
    detail = (f"HiFi-GAN V3-shaped (ResBlock1), {cfg.upsample_initial_channel} channels, rates "
              f"{'x'.join(map(str, cfg.upsample_rates))} (hop {cfg.hop_length}), {n_params:,} parameters | batch "
              f"{args.batch} x {t} frames x {args.mels} mels -> {wave.shape[-1]:,} samples")
    return Row("vocoder", t_ours, t_peer, args.batch * wave.shape[-1] / args.sampling_rate, detail,
               {"max_abs_diff": float(np.abs(wave - ref).max()), "peer_wave_std": float(ref.std()),
                "num_params": n_params})


SYNTHESIS_TEXT = ("Thank you for telling me. That sounds really hard, and I am glad you shared it. "
                  "What would help you most right now? I am here to listen.")


def bench_synthesis(args) -> Row:
    """The trained speech generator (`--checkpoint`) speaking text of about `--seconds`, batch 1, end to end: text
    front end, content encoder, durations, pitch, energy, mel decoder, vocoder (`infer.speech.Synthesizer`). No
    peer: the figure is the real-time factor."""
    import numpy as np

    from merg_jax.infer.bundle import load_model
    from merg_jax.infer.speech import Synthesizer

    synth = Synthesizer(load_model(args.checkpoint).model.speech)
    style = synth.style_from_label("happy")
    words = SYNTHESIS_TEXT.split()
    text = SYNTHESIS_TEXT
    wave = synth.speak(text, style)
    # Fit the text to about --seconds: the same words, cut or repeated.
    want = max(1, round(len(words) * args.seconds / max(wave.size / synth.sample_rate, 1e-3)))
    text = " ".join((words * (want // len(words) + 1))[:want]).rstrip(",") + "."
    wave = synth.speak(text, style)
    t_ours, _ = _time_pair(lambda: synth.speak(text, style), None, args)
    detail = (f"configs' speech generator from {args.checkpoint}: {len(text.split())} words -> "
              f"{wave.size / synth.sample_rate:.2f} s at {synth.sample_rate} Hz, vocoder {synth.cfg.vocoder}")
    return Row("synthesis", t_ours, None, wave.size / synth.sample_rate, detail,
               {"peak": float(np.abs(wave).max())})


# Rows in report order. Each: args -> Row, building its own models and inputs.
ROWS: dict[str, Callable[[argparse.Namespace], Row]] = {"vocoder": bench_vocoder, "synthesis": bench_synthesis}


# ----------------------------------------------------------------------------------------------------------------
# Report


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def format_report(rows: list[Row], args, versions: dict) -> str:
    lines = [(f"merg-jax bench speech | {args.seconds:g} s of {args.sampling_rate} Hz audio per utterance, float32 | "
              f"median of {args.repeats} repeats ({args.steps} calls each), warm-up excluded"),
             (f"jax {versions['jax']} ({versions['backend']}), torch {versions['torch']} (cpu, {versions['threads']} "
              f"threads) | {versions['cpus']} CPUs")]
    for r in rows:
        lines.append(f"{r.name}: {r.detail}")
        if "max_abs_diff" in r.checks:
            lines.append(f"{r.name} same weights: max |wave ours - peer| = {r.checks['max_abs_diff']:.2e} (peer wave "
                         f"std {r.checks['peer_wave_std']:.3g})")
    lines += ["", f"{'row':<12}{'ours s':>11}{'peer s':>11}{'ours RTF':>11}{'peer RTF':>11}{'ours/peer':>11}"]
    for r in rows:
        # 4 significant digits: a tiny run's milliseconds keep their precision (the ratio is checked against them)
        lines.append(f"{r.name:<12}{r.ours_s:>11.4g}{_num(r.peer_s, '.4g'):>11}{r.ours_rtf:>11.4g}"
                     f"{_num(r.peer_rtf, '.4g'):>11}{_num(r.ratio, '.2f'):>11}")
    lines.append("RTF = compute seconds / seconds of audio (< 1: faster than real time); ours/peer < 1: ours faster")
    return "\n".join(lines)


def _check(args) -> list[str]:
    """The flags' problems, each naming its flag."""
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    problems = [f"--rows: unknown row {r!r} (choose from {', '.join(ROWS)})" for r in rows if r not in ROWS]
    if "synthesis" in rows and not args.checkpoint:
        problems.append("--rows synthesis: give --checkpoint (a trained run or bundle with a speech generator)")
    if not rows:
        problems.append(f"--rows: give at least one of {', '.join(ROWS)}")
    for name in ("batch", "sampling_rate", "mels", "channels", "steps", "repeats"):
        if getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.seconds > 0:
        problems.append(f"--seconds must be positive, got {args.seconds}")
    try:
        rates = _rates(args)
        if not rates or min(rates) < 1:
            raise ValueError
    except ValueError:
        problems.append(f"--upsample-rates: expected comma-separated positive integers, got {args.upsample_rates!r}")
    else:
        if args.channels % (2 ** len(rates)):
            problems.append(f"--channels {args.channels} must be divisible by 2^{len(rates)} (halved per stage of "
                            f"--upsample-rates {args.upsample_rates})")
    return problems


def run(args, rest: list[str], parser: argparse.ArgumentParser) -> int:
    code = preflight("speech", args, rest, parser, _check(args))
    if code is not None:
        return code
    import jax
    import torch

    # XLA:CPU sizes its pool by the CPUs this process may run on; PyTorch by default counts physical cores and
    # ignores the affinity mask. Give the peer the same number.
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cpus)
    try:
        rows = []
        for name in dict.fromkeys(r.strip() for r in args.rows.split(",") if r.strip()):
            rows.append(ROWS[name](args))
            print(f"  measured {name}", file=sys.stderr, flush=True)
        versions = {"jax": jax.__version__, "backend": jax.default_backend(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cpus": cpus}
    finally:
        torch.set_num_threads(threads_before)  # called in-process (tests), leave the caller's setting
    print(format_report(rows, args, versions))
    if args.json:
        out = {"target": "speech", "args": {k: v for k, v in vars(args).items() if k not in ("json", "target")},
               "versions": versions, "rows": {r.name: r.to_json() for r in rows}}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0
