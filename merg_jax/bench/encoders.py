"""`merg-jax bench encoders`: our media encoders against Hugging Face PyTorch `CLIPVisionModel` / `ASTModel`.

    merg-jax bench encoders [--towers vision,audio] [--batch 8] [--layers 4] [--hidden 128] [--heads 4]
                            [--image-size 64] [--patch 8] [--mel-bins 64] [--frames 256] [--audio-patch 16]
                            [--audio-stride 10] [--optimizer adam|sgd] [--learning-rate 1e-4] [--steps 3]
                            [--repeats 5] [--json FILE]

For each tower, with identical weights and inputs on both sides, two numbers for ours and the peer in one run:
- inference images/s (clips/s): one forward pass over `batch` random images (log-mels); ours jitted and blocked
  on, the peer under `torch.inference_mode()`;
- training images/s (clips/s): one step = forward + backward of mean(pooled²) w.r.t. every parameter + an Adam
  (or SGD) update; ours `jax.value_and_grad` + optax in one jitted program, the peer `loss.backward()` +
  `torch.optim`.

The peer is built from a small random config (every tensor random, so a mix-up would show), saved with
`save_pretrained(safe_serialization=True)` and imported with `load_hf_clip_vision` / `load_hf_ast`; the run prints
the largest pooled-embedding difference and both sides' first training loss. Warm-up (JAX compilation, first
PyTorch calls) is excluded; each number is the median over `repeats` timed repeats of `steps` calls, each side
timed in one block. PyTorch keeps its default thread count and attention implementation; a CUDA build of torch
puts the peer on the GPU. `--json FILE` also writes every number to FILE.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from merg_jax.bench.timing import median_time
from merg_jax.bench.preflight import preflight

TOWERS = ("vision", "audio")
UNIT = {"vision": "images/s", "audio": "clips/s"}


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("encoders", help="vision (CLIP) and audio (AST) towers vs Hugging Face PyTorch",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--towers", default="vision,audio", help="comma-separated: vision, audio (default %(default)s)")
    p.add_argument("--batch", type=int, default=8, help="images / clips per call (default %(default)s)")
    p.add_argument("--layers", type=int, default=4, help="transformer layers of both towers (default %(default)s)")
    p.add_argument("--hidden", type=int, default=128, help="hidden size; MLP = 4x (default %(default)s)")
    p.add_argument("--heads", type=int, default=4, help="attention heads (default %(default)s)")
    p.add_argument("--image-size", type=int, default=64, help="vision: square image side (default %(default)s)")
    p.add_argument("--patch", type=int, default=8, help="vision: patch side (default %(default)s)")
    p.add_argument("--mel-bins", type=int, default=64, help="audio: mel bins (default %(default)s)")
    p.add_argument("--frames", type=int, default=256, help="audio: spectrogram frames (default %(default)s)")
    p.add_argument("--audio-patch", type=int, default=16, help="audio: patch side (default %(default)s)")
    p.add_argument("--audio-stride", type=int, default=10,
                   help="audio: frequency and time stride of the patches (default %(default)s)")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="update rule (default %(default)s)")
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--steps", type=int, default=3, help="calls per timed repeat (default %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats; the median is reported (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="FILE", default=None, help="also write the numbers to FILE as JSON")
    return p


# ----------------------------------------------------------------------------------------------------------------
# The peers


def randomize_torch_module(model, seed: int, scale: float = 0.2):
    """Every tensor of a torch module random (in place; returned): torch and HF initialise LayerNorms to 1/0 and
    some biases and embeddings to 0, which would hide a mix-up of those tensors in a parity check. LayerNorm
    weights stay around 1."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            offset = 1.0 if ("norm" in name and name.endswith("weight")) else 0.0
            p.copy_(torch.randn(p.shape, generator=gen) * scale + offset)
    return model


def _peer_config(tower: str, args):
    from transformers import ASTConfig, CLIPVisionConfig

    common = {"hidden_size": args.hidden, "intermediate_size": 4 * args.hidden, "num_hidden_layers": args.layers,
              "num_attention_heads": args.heads}
    if tower == "vision":
        return CLIPVisionConfig(**common, image_size=args.image_size, patch_size=args.patch)
    return ASTConfig(**common, num_mel_bins=args.mel_bins, max_length=args.frames, patch_size=args.audio_patch,
                     frequency_stride=args.audio_stride, time_stride=args.audio_stride)


def _build_pair(tower: str, args, tmp: str):
    """(ours, peer): the peer built from a random config and randomised, ours imported from its safetensors."""
    import torch
    from transformers import ASTModel, CLIPVisionModel
    from transformers.utils import logging as hf_logging

    from merg_jax.convert import load_hf_ast, load_hf_clip_vision

    torch.manual_seed(args.seed)
    peer = (CLIPVisionModel if tower == "vision" else ASTModel)(_peer_config(tower, args))
    randomize_torch_module(peer, args.seed)
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one small shard: its "Writing model shards" bar is noise in the report
    try:
        peer.save_pretrained(tmp, safe_serialization=True)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    ours, _ = (load_hf_clip_vision if tower == "vision" else load_hf_ast)(tmp)
    return ours, peer


def _inputs(tower: str, args):
    """The same random batch for both sides: (ours: NHWC images / [B, T, F] log-mels, the peer's: NCHW / same)."""
    import numpy as np

    rng = np.random.default_rng(args.seed + 1)
    if tower == "vision":
        nchw = rng.standard_normal((args.batch, 3, args.image_size, args.image_size)).astype(np.float32)
        return np.ascontiguousarray(nchw.transpose(0, 2, 3, 1)), nchw
    mel = rng.standard_normal((args.batch, args.frames, args.mel_bins)).astype(np.float32)
    return mel, mel


# ----------------------------------------------------------------------------------------------------------------
# Timing


def _ours_programs(model, args):
    """Jitted pure functions over the split state: (infer(params, x) -> pooled, step(params, opt, x) -> (params,
    opt, loss), params, opt_state). Split once, so no call pays `nnx.jit`'s per-call graph traversal — the
    functional form a trainer loop uses."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(args.learning_rate) if args.optimizer == "adam" else optax.sgd(args.learning_rate)

    def loss_fn(p, x):
        return jnp.mean(jnp.square(nnx.merge(graphdef, p, rest)(x).pooled.astype(jnp.float32)))

    def step(p, opt_state, x):
        loss, grads = jax.value_and_grad(loss_fn)(p, x)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    infer = jax.jit(lambda p, x: nnx.merge(graphdef, p, rest)(x).pooled)
    # Parameters and optimizer state are donated: updated in place, as a training loop would.
    return infer, jax.jit(step, donate_argnums=(0, 1)), params, tx.init(params)


def bench_tower(tower: str, args) -> dict:
    """One tower, both sides: {"infer": {"ours", "peer"} per second, "train": ..., "max_pooled_diff",
    "first_loss": (ours, peer), "num_params", "tokens"}."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        model, peer = _build_pair(tower, args, tmp)
    x_np, t_np = _inputs(tower, args)
    # A CUDA build of torch runs the peer on the GPU (ours runs on JAX's default device); CPU otherwise.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peer = peer.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    x, tx_in = jnp.asarray(x_np), torch.from_numpy(t_np).to(device)
    key = "pixel_values" if tower == "vision" else "input_values"
    infer, step, params, opt_state = _ours_programs(model, args)

    # The same function? Compare before any training step changes either side's weights.
    peer.eval()
    ours_pooled = np.asarray(infer(params, x))
    with torch.inference_mode():
        peer_pooled = peer(**{key: tx_in}).pooler_output.cpu().numpy()
    max_diff = float(np.abs(ours_pooled - peer_pooled).max())

    def ours_infer():
        for _ in range(args.steps):
            jax.block_until_ready(infer(params, x))

    def peer_infer():
        with torch.inference_mode():
            for _ in range(args.steps):
                peer(**{key: tx_in})
        sync()

    # Each side timed in one block, not alternated: alternating measured both slower (each side's thread pool
    # wakes cold, or the other's threads are still spinning).
    ours_infer()  # warm-up: compiles
    t_ours_infer = median_time(ours_infer, args.repeats) / args.steps
    peer_infer()  # warm-up
    t_peer_infer = median_time(peer_infer, args.repeats) / args.steps

    state = {"params": params, "opt": opt_state}

    def ours_step():
        state["params"], state["opt"], loss = step(state["params"], state["opt"], x)
        return jax.block_until_ready((state["params"], loss))[1]

    peer.train()  # every dropout rate is 0 in these configs: train mode runs the same function
    opt = (torch.optim.Adam if args.optimizer == "adam" else torch.optim.SGD)(peer.parameters(),
                                                                               lr=args.learning_rate)

    def peer_step():
        loss = peer(**{key: tx_in}).pooler_output.float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        return loss.detach()

    first_loss = (float(ours_step()), float(peer_step()))  # warm-up (compiles); both from the same weights
    ours_step()
    t_ours_train = median_time(lambda: [ours_step() for _ in range(args.steps)], args.repeats) / args.steps
    peer_step()
    t_peer_train = median_time(lambda: [peer_step() for _ in range(args.steps)], args.repeats) / args.steps

    cfg = model.cfg
    return {
        "infer": {"ours": args.batch / t_ours_infer, "peer": args.batch / t_peer_infer},
        "train": {"ours": args.batch / t_ours_train, "peer": args.batch / t_peer_train},
        "max_pooled_diff": max_diff, "first_loss": first_loss,
        "num_params": sum(p.numel() for p in peer.parameters()), "tokens": cfg.num_tokens,
        "peer_device": str(device),
    }


def format_report(results: dict[str, dict], args, versions: dict) -> str:
    shapes = {"vision": f"vision = CLIPVisionModel, batch {args.batch} x {args.image_size}x{args.image_size} px, "
                        f"patch {args.patch}",
              "audio": f"audio = ASTModel, batch {args.batch} x {args.frames} frames x {args.mel_bins} mel bins, "
                       f"patch {args.audio_patch} stride {args.audio_stride}"}
    lines = [(f"merg-jax bench encoders | {args.layers} layers, hidden {args.hidden}, {args.heads} heads, MLP "
              f"{4 * args.hidden}, float32 | train = fwd+bwd of mean(pooled^2) + {args.optimizer} update"),
             (f"median of {args.repeats} repeats ({args.steps} calls each), warm-up excluded | jax {versions['jax']} "
              f"({versions['backend']}), torch {versions['torch']} ({versions['device']}, "
              f"{versions['threads']} threads)")]
    for tower, r in results.items():
        lines.append(f"{shapes[tower]}: {r['num_params']:,} parameters, {r['tokens']} tokens")
        lines.append(f"{tower} same weights: max |pooled ours - peer| = {r['max_pooled_diff']:.2e}, first train loss "
                     f"ours {r['first_loss'][0]:.6g} / peer {r['first_loss'][1]:.6g}")
    lines += ["", f"{'metric':<26}{'ours (JAX)':>14}{'peer (HF torch)':>18}{'ours/peer':>12}"]
    for tower, r in results.items():
        for phase in ("infer", "train"):
            ours, peer = r[phase]["ours"], r[phase]["peer"]
            label = f"{tower} {phase} {UNIT[tower]}"
            lines.append(f"{label:<26}{ours:>14,.1f}{peer:>18,.1f}{ours / peer:>12.2f}")
    return "\n".join(lines)


def _check(args) -> list[str]:
    """The flags' problems, each naming its flag (the peers' configs would fail later and less clearly)."""
    towers = [t.strip() for t in args.towers.split(",") if t.strip()]
    problems = [f"--towers: unknown tower {t!r} (choose from {', '.join(TOWERS)})" for t in towers if t not in TOWERS]
    if not towers:
        problems.append("--towers: give at least one of vision, audio")
    for name in ("batch", "layers", "hidden", "heads", "image_size", "patch", "mel_bins", "frames", "audio_patch",
                 "audio_stride", "steps", "repeats"):
        if getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if problems:
        return problems
    if args.hidden % args.heads:
        problems.append(f"--hidden {args.hidden} must be a multiple of --heads {args.heads}")
    if "vision" in towers and args.image_size % args.patch:
        problems.append(f"--image-size {args.image_size} must be a multiple of --patch {args.patch}")
    if "audio" in towers:
        for name in ("mel_bins", "frames"):
            if getattr(args, name) < args.audio_patch:
                problems.append(f"--{name.replace('_', '-')} {getattr(args, name)} must be >= --audio-patch "
                                f"{args.audio_patch}")
    if not args.learning_rate > 0:
        problems.append(f"--learning-rate must be positive, got {args.learning_rate}")
    return problems


def run(args, rest: list[str], parser: argparse.ArgumentParser) -> int:
    code = preflight("encoders", args, rest, parser, _check(args))
    if code is not None:
        return code
    import jax
    import torch

    towers = [t.strip() for t in args.towers.split(",") if t.strip()]
    results = {}
    for tower in dict.fromkeys(towers):
        results[tower] = bench_tower(tower, args)
        print(f"  measured {tower}", file=sys.stderr, flush=True)
    versions = {"jax": jax.__version__, "backend": jax.default_backend(), "torch": torch.__version__,
                "threads": torch.get_num_threads(), "device": next(iter(results.values()))["peer_device"]}
    print(format_report(results, args, versions))
    if args.json:
        towers = {tower: {**r, "ratio": {phase: r[phase]["ours"] / r[phase]["peer"] for phase in ("infer", "train")},
                          "unit": UNIT[tower]} for tower, r in results.items()}
        out = {"target": "encoders", "args": {k: v for k, v in vars(args).items() if k not in ("json", "target")},
               "versions": versions, "towers": towers}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0
