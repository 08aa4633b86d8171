"""`merg-jax bench empatheia`: the Empatheia trainer's own jitted steps, timed per stage: step time, tokens/s, MFU.

    merg-jax bench empatheia [--config configs/empatheia_tiny.py] [--stages coe,content,style] [--batch 0]
                             [--steps 2] [--repeats 3] [--seed 0] [--all-devices] [--peak-size 0]
                             [--json FILE] [--config.KEY=VALUE ...]

Each stage's step is the one `merg-jax train` runs (`train.stage_step.make_train_step` over the model split by the
stage's groups, `train.stages`): `coe` runs the audio and video towers, the projections and the LLM and trains
the stage's groups (the config's `stage.coe.groups`: LoRA and projections in the paper's recipe, LLM and
projections in the tiny one); `content` and `style` run the frozen LLM and the generators' target encoders and
train the Content Synchronizer / Style Disentangler. The model has the config's shapes and random weights (seeded
by `--seed`); the batch is random, shaped exactly as the data pipeline's batch for that stage
(`data.pipeline_features.FeatureSpec.shapes` of the stage's `data` section, checked key by key): full rows of the
Chain-of-Empathy template (`data.templates.encode_example`: system prompt, `max_clips` utterances each with its
`<Aud>`/`<Vid>` slots, the CoE target) over a BPE fitted to random words, random log-mels and frames, full
lengths. No dataset is read.

Per stage: the step time (median of `--repeats` repeats of `--steps` steps, each step blocked on as the trainer
does; compilation and one warm-up step excluded), tokens/s (LLM positions per step, `batch × seq_len`, over the
step time; none for `encoders`, which runs the towers alone) and MFU = FLOPs per step / step time / (matmul
peak × devices). The step runs on one device, the one the peak is measured on, or with `--all-devices` on the
config's mesh over every device (`config.mesh`, as `merg-jax train` runs it).

FLOPs per step are XLA's own count of the compiled step (`Compiled.cost_analysis()["flops"]`). XLA counts the
body of a `while` loop once, whatever its trip count, so when the step scans (the layers of the LLM, the towers,
the CS and the SD with `scan_layers`; micro-batches with `accum_steps`) or runs on several devices (XLA then
counts one device's share), the FLOPs come from a twin of the step compiled for the count alone: layers unrolled,
one micro-batch, one device, lowered from shapes (no weights made). The report says which, and how many loops the
counted program still has (each of those is counted once). With `remat`, the count includes the recomputed
forward passes: XLA counts what runs. The peak is `merg_jax.bench.peak.matmul_peak()`, measured in the same run:
the best square float32 matmul of JAX and of PyTorch on this machine (PyTorch on CPU only).

There is no peer: there is no PyTorch Empatheia to run against (this repository is the implementation), so no
ratio is printed. The reference line is the matmul peak itself, JAX's and PyTorch's, which bounds any step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from merg_jax.bench.timing import median_time

DEFAULT_STAGES = "coe,content,style"
# Stages fed by the dialogue pipeline (`merg_jax.data.pipeline`); the speech and face stages read their own corpora.
DIALOGUE_STAGES = ("encoders", "coe", "content", "style", "style_cls")
# Of those, the stages whose step runs the LLM (`encoders` trains the towers on their clips alone: no tokens/s).
LLM_STAGES = ("coe", "content", "style", "style_cls")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("empatheia", help="the Empatheia trainer's jitted steps per stage: step time, tokens/s, MFU",
                       description=__doc__.split("\n\n")[0],
                       epilog="--config.KEY=VALUE overrides the config (e.g. --config.model.num_layers=2).")
    p.add_argument("--config", default="configs/empatheia_tiny.py", help="Empatheia config (default %(default)s)")
    p.add_argument("--stages", default=DEFAULT_STAGES,
                   help=f"comma-separated, any of {', '.join(DIALOGUE_STAGES)} (default %(default)s)")
    p.add_argument("--batch", type=int, default=0,
                   help="rows per step (default 0: each stage's config.stage.<name>.batch_size or train.batch_size)")
    p.add_argument("--steps", type=int, default=2, help="steps per timed repeat (default %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="weights and batch (default %(default)s)")
    p.add_argument("--all-devices", action="store_true",
                   help="run on config.mesh over every device, as the trainer does (default: one device)")
    p.add_argument("--peak-size", type=int, default=0,
                   help="side of the square matmul that measures the peak (default 0: peak.py's, 2048 on CPU)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the numbers to FILE as JSON")
    return p


# ----------------------------------------------------------------------------------------------------------------
# The synthetic batch

# Syllables of the random words: a BPE fitted to them compresses text about as a real one compresses English.
_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "te", "vi", "do", "pe", "an", "or", "is", "ul", "em", "ba")


def _words(rng: np.random.Generator, n: int) -> str:
    lengths = rng.integers(1, 4, n)
    return " ".join("".join(rng.choice(_SYLLABLES, k)) for k in lengths)


def bench_tokenizer(vocab_size: int, seed: int = 0):
    """A byte-level BPE (with every special token) fitted to the system prompt, the CoE template and random words,
    at most `vocab_size` ids: the tokenizer only decides the special ids and how long the text is."""
    from merg_jax.data.templates import CLAUSES, SYSTEM_PROMPT
    from merg_jax.data.tokenizer import train_bpe

    rng = np.random.default_rng(seed)
    texts = [SYSTEM_PROMPT] * 20 + [" ".join(opener for _, opener in CLAUSES)] * 20
    texts += [_words(rng, 40) for _ in range(200)]
    return train_bpe(texts, vocab_size=vocab_size)


def _text_row(tokenizer, spec, rng: np.random.Generator):
    """An `EncodedExample` that fills a row: `max_clips` utterances (their `<Aud>`/`<Vid>` slots), the CoE target,
    as many words each as fit in `seq_len` without dropping an utterance or cutting the target."""
    from merg_jax.data.templates import encode_example
    from merg_jax.labels import EMOTIONS_32

    def encode(k: int):
        history = [("speaker" if i % 2 == 0 else "listener", _words(rng, k)) for i in range(spec.max_clips)]
        coe = {"event_scenario": _words(rng, 6), "speaker_emotion": str(rng.choice(EMOTIONS_32)),
               "emotion_cause": _words(rng, 6), "goal_to_response": _words(rng, 6)}
        return encode_example(tokenizer, history, _words(rng, k), coe, max_len=spec.seq_len,
                              max_clips=spec.max_clips, chain=spec.chain, media_tokens=spec.media_tokens,
                              system_prompt=spec.system_prompt)

    best = encode(1)
    for k in range(2, spec.seq_len):
        enc = encode(k)
        if enc.dropped or enc.truncated:
            break
        best = enc
    return best


def synthetic_batch(spec, batch: int, tokenizer, seed: int = 0) -> dict[str, np.ndarray]:
    """A random batch with exactly the keys, shapes and dtypes of the pipeline's (`spec.shapes(batch)`: text
    `[B, L]`, clips `[B, C, ...]`, the gold reply's media `[B, ...]`, labels `[B]`), each row laid out as
    `pipeline_features.make_example` lays it out; every clip present, media at full length."""
    from merg_jax.labels import AGES, EMOTIONS_7, EMOTIONS_32, GENDERS, NUM_AVATARS, TIMBRES, TOPICS
    from merg_jax.speech_symbols import num_symbols

    rng = np.random.default_rng(seed)
    out = spec.empty(batch)
    for b in range(batch):
        enc = _text_row(tokenizer, spec, rng)
        n = len(enc.tokens) - 1  # inputs and targets, shifted by one
        out["tokens"][b, :n], out["targets"][b, :n] = enc.tokens[:-1], enc.tokens[1:]
        out["loss_mask"][b, :n] = enc.loss_mask[1:]
        out["media_clip"][b, :n], out["media_kind"][b, :n] = enc.media_clip[:-1], enc.media_kind[:-1]
        out["segment_ids"][b, :n] = 1
        out["positions"][b, :n] = np.arange(n)
        clips = len(enc.clip_history_index)
        out["clip_utterance"][b, :clips] = np.arange(1, clips + 1)
    labels = {"emotion7": len(EMOTIONS_7), "emotion32": len(EMOTIONS_32), "age": len(AGES), "gender": len(GENDERS),
              "timbre": len(TIMBRES), "avatar_id": NUM_AVATARS, "topic": len(TOPICS)}
    for key, classes in labels.items():
        out[key][:] = rng.integers(0, classes, batch)
    out["sample_index"][:] = np.arange(batch)
    used = out["clip_utterance"] > 0
    # The speaker's clips (even history positions here) show the turn's emotion; the listener's are not annotated.
    speaker = used & (np.arange(spec.max_clips)[None] % 2 == 0)
    out["clip_emotion7"][:] = np.where(speaker, out["emotion7"][:, None], -1)
    for group, lengths, mask in (("audio_mel", "audio_len", "audio_mask"), ("video_frames", "video_len", "video_mask")):
        if group in out:
            out[lengths][:] = np.where(used, out[group].shape[2], 0)
            out[mask][:] = used
    if "reply_mel" in out:
        out["reply_mel_len"][:], out["reply_audio_mask"][:] = out["reply_mel"].shape[1], True
    if "reply_frames" in out:
        out["reply_frames_len"][:], out["reply_video_mask"][:] = out["reply_frames"].shape[1], True
    if "reply_symbols" in out:
        out["reply_symbols"][:] = rng.integers(1, num_symbols(), out["reply_symbols"].shape)
        out["reply_symbols_len"][:] = out["reply_symbols"].shape[1]
    for key in ("audio_mel", "reply_mel"):  # log-mels; their values do not change the cost
        if key in out:
            out[key][:] = rng.normal(-4.0, 2.0, out[key].shape).astype(np.float32)
    for key in ("video_frames", "reply_frames", "reply_portrait"):
        if key in out:
            out[key][:] = rng.integers(0, 256, out[key].shape, dtype=np.uint8)
    check_batch(out, spec, batch)
    return out


def check_batch(batch: dict[str, np.ndarray], spec, rows: int) -> None:
    """Raises AssertionError unless `batch` has exactly the pipeline's keys, shapes and dtypes."""
    want = spec.shapes(rows)
    if set(batch) != set(want):
        raise AssertionError(f"synthetic batch keys {sorted(batch)} are not the pipeline's {sorted(want)}")
    bad = [f"{k}: {batch[k].shape} {batch[k].dtype} vs {shape} {dtype}" for k, (shape, dtype) in want.items()
           if batch[k].shape != shape or batch[k].dtype != dtype]
    if bad:
        raise AssertionError("synthetic batch differs from the pipeline's: " + "; ".join(bad))


def random_model(cfg, mesh, seed: int):
    """The Empatheia of `cfg` with random weights from its initialisers, each created in its shard (the trainer's
    `create_sharded`). Drawn with XLA's RngBitGenerator (`unsafe_rbg`), not threefry: the same distributions, and
    the init program of the tiny recipe (speech and face generators included) compiles about 3x faster (30 s
    instead of 100 s on 2 cores). The steps get no key from it: a stage that needs one gets a threefry key."""
    import jax
    from flax import nnx

    from merg_jax.models.empatheia import Empatheia
    from merg_jax.sharding import create_sharded

    old = jax.config.jax_default_prng_impl
    jax.config.update("jax_default_prng_impl", "unsafe_rbg")
    try:
        return create_sharded(lambda: Empatheia(cfg, rngs=nnx.Rngs(seed)), mesh)
    finally:
        jax.config.update("jax_default_prng_impl", old)


# ----------------------------------------------------------------------------------------------------------------
# FLOPs


def xla_flops(compiled) -> float | None:
    """XLA's FLOP count of a compiled program (`cost_analysis()` is a dict in this JAX, a list of one dict per
    program in older ones; None where the backend gives none)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops is not None and flops >= 0 else None


_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.-]+) \(.*\{$")
_CALLED = re.compile(r"(?:calls|to_apply|body|condition)=%?([\w.-]+)|branch_computations=\{([^}]*)\}")
_MATMUL = re.compile(r" (?:dot|convolution)\(|custom_call_target=\"[^\"]*matmul")


def while_loops(compiled) -> int:
    """`while` loops of a compiled program that hold a matrix product (`dot`, `convolution`, a matmul custom call)
    in their body or in any computation it calls: `cost_analysis` counts each body once, so such a loop (scanned
    layers) leaves the count short by its other iterations. Loops without one are left out: the RoPE table writer
    (`models/rope.py`) does one multiplication per position per iteration, under 1e-4 of a step's count."""
    bodies: dict[str, list[str]] = {}
    current = None
    for line in compiled.as_text().splitlines():
        if (m := _COMPUTATION.match(line)) is not None:
            current = bodies.setdefault(m.group(1), [])
        elif line.startswith("}"):
            current = None
        elif current is not None:
            current.append(line)

    def holds_matmul(name: str, seen: set[str]) -> bool:
        if name in seen or name not in bodies:
            return False
        seen.add(name)
        for line in bodies[name]:
            if _MATMUL.search(line):
                return True
            for single, several in _CALLED.findall(line):
                called = [single] if single else [c.strip().lstrip("%") for c in several.split(",")]
                if any(holds_matmul(c, seen) for c in called):
                    return True
        return False

    loops = [m.group(1) for lines in bodies.values() for line in lines if " while(" in line
             for m in [re.search(r"body=%?([\w.-]+)", line)] if m is not None]
    return sum(holds_matmul(body, set()) for body in loops)


def unrolled(cfg):
    """A config dataclass tree with every `scan_layers` set False (loops unrolled, so XLA counts every layer)."""
    if not dataclasses.is_dataclass(cfg):
        return cfg
    changes = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name == "scan_layers":
            changes[f.name] = False
        elif dataclasses.is_dataclass(value):
            changes[f.name] = unrolled(value)
    return dataclasses.replace(cfg, **changes)


def counted_flops(stage, cfg, trainable_filter, tx, batch: dict[str, np.ndarray], rng,
                  targets) -> tuple[float | None, int]:
    """(FLOPs of one step of the whole batch, `while` loops left in the counted program): the stage's step built on
    an abstract, unrolled copy of the model, one micro-batch, one device; lowered from shapes and compiled."""
    import jax
    from flax import nnx

    from merg_jax.models.empatheia import Empatheia
    from merg_jax.sharding import single_device_mesh
    from merg_jax.train.stage_step import make_train_step, split_for_stage

    twin = nnx.eval_shape(lambda: Empatheia(unrolled(cfg), rngs=nnx.Rngs(0)))
    graphdef, trainable, frozen = split_for_stage(twin, trainable_filter)
    opt_state = jax.eval_shape(tx.init, trainable)
    shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
    step = make_train_step(stage, graphdef, tx, accum_steps=1, targets=targets, donate=False)
    with jax.set_mesh(single_device_mesh()):
        compiled = step.lower(trainable, frozen, opt_state, shapes, rng).compile()
    return xla_flops(compiled), while_loops(compiled)


# ----------------------------------------------------------------------------------------------------------------
# One stage


@dataclasses.dataclass
class StageResult:
    """One stage's measurement. step_s: median seconds per step; flops: per step, all devices (None: the backend
    counts none); flops_from: "compiled step" or "unrolled twin"; loops_left: `while` loops holding matrix products in
    the counted program (each counted once; `while_loops`)."""

    stage: str
    batch: int
    seq_len: int
    accum_steps: int
    groups: str
    trainable_params: int
    total_params: int
    compile_s: float
    step_s: float
    first_loss: float
    flops: float | None
    flops_from: str
    loops_left: int
    devices: int
    peak: float

    @property
    def tokens(self) -> int:
        """LLM positions per step: every row's `seq_len` (padding included: the step computes them all); 0 for a
        stage that does not run the LLM."""
        return self.batch * self.seq_len if self.stage in LLM_STAGES else 0

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.step_s if self.tokens else None

    @property
    def achieved(self) -> float | None:
        """FLOP/s over all devices."""
        return None if self.flops is None else self.flops / self.step_s

    @property
    def mfu(self) -> float | None:
        return None if self.flops is None else self.flops / self.step_s / (self.peak * self.devices)

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "tokens": self.tokens, "tokens_per_s": self.tokens_per_s,
                "flops_per_s": self.achieved, "mfu": self.mfu}


def stage_inputs(stage, model, config, tokenizer, mesh, args):
    """(the stage's settings, its batch size, its `FeatureSpec`, the host batch of the keys its step reads, its
    target encoders or None): what `merg-jax train` would feed the stage's step, made up."""
    from merg_jax.data.pipeline import PipelineSettings
    from merg_jax.train.trainer import stage_data_config, stage_settings

    settings = stage_settings(config, stage)
    if args.batch:
        settings.batch_size = args.batch
    rows, accum = int(settings.batch_size), int(settings.get("accum_steps", 1))
    flag = "--batch" if args.batch else f"config.stage.{stage.name}.batch_size (or --batch)"
    if rows % accum:
        raise ValueError(f"stage {stage.name}: {flag}={rows} is not a multiple of accum_steps={accum}")
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    if rows % data_parallel:
        raise ValueError(f"stage {stage.name}: {flag}={rows} does not split over the mesh's {data_parallel} "
                         "data-parallel devices (config.mesh)")
    spec = PipelineSettings.from_config(stage_data_config(config, stage, settings)).spec
    host = synthetic_batch(spec, rows, tokenizer, seed=args.seed)
    targets = None
    if stage.needs_targets:
        from merg_jax.train.targets import make_targets

        targets = make_targets(config, model.cfg)
    # The trainer's selection: the stage's keys and its target encoders' (the rest never reaches the device).
    keys = [k for k in (*stage.batch_keys, *(targets.batch_keys if targets is not None else ())) if k in host]
    return settings, rows, spec, {k: host[k] for k in dict.fromkeys(keys)}, targets


def time_step(compiled, trainable, frozen, opt_state, batch, rng, args) -> tuple[float, float, object]:
    """(first loss, median seconds per step, the trainable state after the steps). The step donates `trainable`
    and `opt_state`: each call's outputs feed the next, as in the training loop."""
    import jax

    state = {"trainable": trainable, "opt": opt_state}

    def one_step():
        state["trainable"], state["opt"], metrics = compiled(state["trainable"], frozen, state["opt"], batch, rng)
        return jax.block_until_ready(metrics)  # as the trainer: every step blocked on (it reads the metrics)

    first_loss = float(one_step()["loss"])  # warm-up: the first run of a fresh executable

    def block():
        for _ in range(args.steps):
            one_step()

    return first_loss, median_time(block, args.repeats) / args.steps, state["trainable"]


def bench_stage(stage, model, config, tokenizer, mesh, args, peak: float):
    """Times one stage's jitted step on a synthetic batch; returns (StageResult, the model after the steps: the
    trained part was donated to the step, so the caller must carry on with the returned one)."""
    import jax
    from flax import nnx

    from merg_jax.models.param_groups import stage_filter
    from merg_jax.train.batching import place_local_batch
    from merg_jax.train.optimizer import init_optimizer_state, make_optimizer
    from merg_jax.train.stage_step import make_train_step, split_for_stage
    from merg_jax.train.trainer import stage_groups, step_uses_rng

    settings, rows, spec, host, targets = stage_inputs(stage, model, config, tokenizer, mesh, args)
    accum = int(settings.get("accum_steps", 1))
    filt = stage_filter(stage.name, stage_groups(settings))
    tx = make_optimizer(settings)
    graphdef, trainable, frozen = split_for_stage(model, filt)
    n_train = sum(x.size for x in jax.tree.leaves(trainable))
    n_all = n_train + sum(x.size for x in jax.tree.leaves(frozen))
    rng = jax.random.key(args.seed) if step_uses_rng(stage, model.cfg) else None
    with jax.set_mesh(mesh):
        batch = place_local_batch(host, mesh)
        opt_state = init_optimizer_state(tx, trainable, mesh)
        step_fn = make_train_step(stage, graphdef, tx, accum_steps=accum, targets=targets)
        t0 = time.perf_counter()
        compiled = step_fn.lower(trainable, frozen, opt_state, batch, rng).compile()
        compile_s = time.perf_counter() - t0
        first_loss, step_s, trainable = time_step(compiled, trainable, frozen, opt_state, batch, rng, args)
    loops, devices = while_loops(compiled), len(mesh.devices.flat)
    if loops or devices > 1:
        flops, loops = counted_flops(stage, model.cfg, filt, tx, host, rng, targets)
        source = "unrolled twin"
    else:
        flops, source = xla_flops(compiled), "compiled step"
    result = StageResult(stage=stage.name, batch=rows, seq_len=spec.seq_len, accum_steps=accum,
                         groups=str(settings.groups), trainable_params=int(n_train), total_params=int(n_all),
                         compile_s=compile_s, step_s=step_s, first_loss=first_loss, flops=flops, flops_from=source,
                         loops_left=loops, devices=devices, peak=peak)
    return result, nnx.merge(graphdef, trainable, frozen)


# ----------------------------------------------------------------------------------------------------------------
# Report


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def format_report(results: list[StageResult], args, peak: dict, versions: dict) -> str:
    lines = [(f"merg-jax bench empatheia | {args.config} | random weights (seed {args.seed}), synthetic batch of the "
              f"pipeline's shapes | median of {args.repeats} repeats ({args.steps} steps each), compile and warm-up "
              f"excluded"),
             (f"jax {versions['jax']} ({versions['backend']}, {versions['devices']} device(s): "
              f"{versions['device_kind']}) | {versions['cpus']} CPUs")]
    for r in results:
        lines.append(f"{r.stage}: batch {r.batch} x {r.seq_len} tokens"
                     f"{f' in {r.accum_steps} micro-batches' if r.accum_steps > 1 else ''}, trains {r.groups} "
                     f"({r.trainable_params:,} of {r.total_params:,} parameters), compiled in {r.compile_s:.1f} s, "
                     f"first loss {r.first_loss:.4g}, FLOPs from the {r.flops_from}"
                     f"{f' ({r.loops_left} loops of matmuls left, each counted once)' if r.loops_left else ''}")
    torch_peak = "-" if peak["torch"] is None else f"{peak['torch'] / 1e9:,.1f}"
    lines.append(f"reference (no PyTorch Empatheia exists, so no peer): matmul peak, {peak['n']}x{peak['n']} "
                 f"{peak['dtype']}: JAX {peak['jax'] / 1e9:,.1f} GFLOP/s, PyTorch {torch_peak} GFLOP/s; MFU uses the "
                 f"higher, {peak['peak'] / 1e9:,.1f} GFLOP/s per device")
    lines += ["", f"{'stage':<10}{'step ms':>11}{'tokens/s':>12}{'GFLOP/step':>12}{'GFLOP/s':>10}{'MFU':>8}"]
    for r in results:
        gflops = None if r.flops is None else r.flops / 1e9
        rate = None if r.achieved is None else r.achieved / 1e9
        lines.append(f"{r.stage:<10}{r.step_s * 1e3:>11.4g}{_num(r.tokens_per_s, ',.0f'):>12}{_num(gflops, '.4g'):>12}"
                     f"{_num(rate, '.4g'):>10}{_num(r.mfu, '.3f'):>8}")
    lines.append("tokens/s = batch x seq_len / step time; MFU = XLA's FLOPs per step / step time / (peak x devices)")
    return "\n".join(lines)


def _stage_names(args) -> list[str]:
    return list(dict.fromkeys(s.strip() for s in args.stages.split(",") if s.strip()))


def _check(args) -> list[str]:
    """The flags' problems, each naming its flag."""
    names = _stage_names(args)
    problems = [f"--stages: {n!r} is not a stage this benchmark runs (choose from {', '.join(DIALOGUE_STAGES)})"
                for n in names if n not in DIALOGUE_STAGES]
    if not names:
        problems.append(f"--stages: give at least one of {', '.join(DIALOGUE_STAGES)}")
    for name in ("steps", "repeats"):
        if getattr(args, name) < 1:
            problems.append(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ("batch", "peak_size"):
        if getattr(args, name) < 0:
            problems.append(f"--{name.replace('_', '-')} must be >= 0 (0: the default), got {getattr(args, name)}")
    return problems


def _load(args, rest: list[str]):
    """The config as the trainer sees it (compute dtype and speech symbols resolved), every stage's steps set (the
    learning-rate schedule's length is all they change here)."""
    from merg_jax.config import load_config, split_overrides
    from merg_jax.train.trainer import with_compute_dtype, with_resolved_symbols

    config = load_config(args.config, split_overrides(rest))
    if not config.get("empatheia"):
        raise ValueError(f"--config {args.config}: no `empatheia` section (an LLM-only config: use `merg-jax bench "
                         "llm`)")
    config.train.steps = 10**6
    return with_resolved_symbols(with_compute_dtype(config))


def run(args, rest: list[str], parser: argparse.ArgumentParser) -> int:
    problems = _check(args)
    if problems:
        parser.print_usage(sys.stderr)
        for p in problems:
            print(f"merg-jax bench empatheia: error: {p}", file=sys.stderr)
        return 2
    try:
        config = _load(args, rest)
        from merg_jax.models.empatheia import EmpatheiaConfig

        tokenizer = bench_tokenizer(min(int(config.model.vocab_size),
                                        int(config.data.get("tokenizer_vocab_size", 0) or 4096)), args.seed)
        cfg = EmpatheiaConfig.from_config(config, tokenizer)
    except (ValueError, KeyError, TypeError, FileNotFoundError, AttributeError) as e:
        parser.print_usage(sys.stderr)
        print(f"merg-jax bench empatheia: error: {e.args[0] if isinstance(e, KeyError) and e.args else e}",
              file=sys.stderr)
        return 2
    import jax

    from merg_jax.bench.peak import matmul_peak
    from merg_jax.sharding import make_mesh, single_device_mesh
    from merg_jax.train.stages import STAGES

    mesh = make_mesh(config.mesh) if args.all_devices else single_device_mesh()
    print("measuring the matmul peak ...", file=sys.stderr, flush=True)
    peak = matmul_peak(args.peak_size or None)
    t0 = time.perf_counter()
    model = random_model(cfg, mesh, args.seed)
    print(f"built the model in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    results = []
    for name in _stage_names(args):
        t0 = time.perf_counter()
        try:
            result, model = bench_stage(STAGES[name], model, config, tokenizer, mesh, args, peak["peak"])
        except ValueError as e:  # the stage's settings do not fit the batch or the mesh: named in the message
            print(f"merg-jax bench empatheia: error: {e}", file=sys.stderr)
            return 2
        results.append(result)
        print(f"  measured {name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    device = jax.devices()[0]
    versions = {"jax": jax.__version__, "backend": jax.default_backend(), "devices": len(mesh.devices.flat),
                "device_kind": getattr(device, "device_kind", device.platform),
                "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}
    print(format_report(results, args, peak, versions))
    if args.json:
        out = {"target": "empatheia", "args": {k: v for k, v in vars(args).items() if k not in ("json", "target")},
               "overrides": list(rest), "versions": versions, "peak": peak, "peer": None,
               "stages": {r.stage: r.to_json() for r in results}}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0
