"""`merg-jax bench llm`: our LLM against Hugging Face PyTorch `LlamaForCausalLM`, identical weights and shapes.

    merg-jax bench llm [--config configs/tiny.py] [--batch 8] [--seq-len 128] [--steps 5] [--repeats 5]
                       [--decode-batches 1,8] [--decode-tokens 32] [--prompt-len 16] [--json FILE]
                       [--config.model.num_layers=2 ...]

Each number for ours and the peer in one run:
- training tokens/s: one step = forward + backward + global-norm clipping + AdamW update, on `batch × seq_len`
  random tokens, next-token cross-entropy over every position; and each side's model-FLOPs utilisation (MFU):
  `train_flops_per_token · tokens/s / peak`, where the peak is the best float32 matmul rate of JAX and PyTorch
  measured in the same run (`merg_jax.bench.peak`) and the FLOPs are PaLM's count (`train_flops_per_token`);
  and the step's matmul floor (`merg_jax.bench.matmul_floor`): its products, each timed alone at its fastest,
  summed — how far above it each side's step runs, and so the highest ratio any implementation could reach;
- decode tokens/s, at each of `--decode-batches`: greedy generation with a KV cache of `decode_tokens` new
  tokens after a `prompt_len` prompt, prefill included, `batch × decode_tokens / time`.

Ours is built from the config; its weights are exported with `save_hf_llama` and loaded by
`LlamaForCausalLM.from_pretrained`, so both run the same function (the run prints the largest logit
difference and how many greedy tokens agree). Warm-up (JAX compilation, first PyTorch calls) is excluded; each
number is the median over `repeats` timed repeats, ours and the peer's taken in turn (round by round) so that a
slow spell of the shared machine lands on both sides. PyTorch keeps its default thread count.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys
import tempfile

NO_TORCH = ("merg-jax bench llm: the peer side needs PyTorch, which is not installed. Install the CPU build "
            "(`pip install torch==2.13.0`) and run again.")


def add_parser(sub) -> argparse.ArgumentParser:
    llm = sub.add_parser("llm", help="LLM training step and greedy decoding vs Hugging Face PyTorch LLaMA",
                         description=__doc__.split("\n\n")[0],
                         epilog="--config.KEY=VALUE overrides the config (e.g. --config.model.num_layers=2).")
    llm.add_argument("--config", default="configs/tiny.py", help="model config (default %(default)s)")
    llm.add_argument("--batch", type=int, default=8, help="batch size of both measurements (default %(default)s)")
    llm.add_argument("--seq-len", type=int, default=128, help="training sequence length (default %(default)s)")
    llm.add_argument("--steps", type=int, default=5, help="training steps per timed repeat (default %(default)s)")
    llm.add_argument("--repeats", type=int, default=5,
                     help="timed repeats, ours and the peer's in turn; the median is reported (default %(default)s)")
    llm.add_argument("--decode-tokens", type=int, default=32, help="new tokens per decode (default %(default)s)")
    llm.add_argument("--prompt-len", type=int, default=16, help="prompt length for decoding (default %(default)s)")
    llm.add_argument("--decode-batches", default="1,8",
                     help="comma-separated batch sizes of the decode measurement (default %(default)s)")
    llm.add_argument("--seed", type=int, default=0)
    llm.add_argument("--json", metavar="FILE", default=None, help="also write every number to FILE as JSON")
    return llm


def train_flops_per_token(cfg, seq_len: int) -> float:
    """Model FLOPs of one training token (forward + backward), PaLM's count (Chowdhery et al. 2022, app. B):
    6·N for the matmuls of the N weights a token passes through, plus 12·layers·heads·head_dim·seq_len for the
    attention scores and values (no credit taken for causal skipping). N excludes the input embedding table
    (a lookup, no matmul) but includes the output projection (the tied table when tied)."""
    n = cfg.num_params() - (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.hidden_size)
    return 6.0 * n + 12.0 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len


def bench_llm(config, *, batch: int = 8, seq_len: int = 128, steps: int = 5, repeats: int = 5,
              decode_batches: tuple[int, ...] = (1, 8), decode_tokens: int = 32, prompt_len: int = 16,
              seed: int = 0) -> dict:
    """Runs both sides; returns the numbers (tokens/s, MFU, checks, shapes) as a dict."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from flax import nnx
    from transformers import LlamaForCausalLM

    from merg_jax import host_allocator
    from merg_jax.bench.matmul_floor import matmul_floor
    from merg_jax.bench.peak import matmul_peak
    from merg_jax.bench.timing import interleaved_median_times
    from merg_jax.config import llm_config
    from merg_jax.convert import save_hf_llama
    from merg_jax.infer import generate
    from merg_jax.infer.generate import uses_panel_matmul
    from merg_jax.kernels import panel_matmul
    from merg_jax.sharding import single_device_mesh
    from merg_jax.train.loop import build_model
    from merg_jax.train.optimizer import make_optimizer
    from merg_jax.train.step import train_step

    cfg = llm_config(config)
    if seq_len > cfg.max_position_embeddings or prompt_len + decode_tokens > cfg.max_position_embeddings:
        raise ValueError(f"--seq-len {seq_len} / --prompt-len + --decode-tokens {prompt_len + decode_tokens} exceed "
                         f"model.max_position_embeddings={cfg.max_position_embeddings}")
    tc = config.train.to_dict()
    tc.update(steps=10**6, warmup_frac=0.0)  # a constant-ish learning rate; the schedule costs the same
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, cfg.vocab_size, (batch, seq_len + 1), dtype=np.int64)
    prompts = {b: rng.integers(0, cfg.vocab_size, (b, prompt_len), dtype=np.int64) for b in decode_batches}

    # --- ours
    mesh = single_device_mesh()
    model = build_model(cfg, mesh, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        save_hf_llama(model, tmp, overwrite=True)
        peer = LlamaForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    peer_device = next(peer.parameters()).device

    jbatch = {"tokens": jnp.asarray(tokens[:, :-1], jnp.int32), "targets": jnp.asarray(tokens[:, 1:], jnp.int32),
              "loss_mask": jnp.ones((batch, seq_len), jnp.float32)}
    # The same function? Compare logits before any training step changes our weights.
    ours_logits = np.asarray(model(jbatch["tokens"]))
    peer.eval()
    with torch.no_grad():
        peer_logits = peer(torch.from_numpy(tokens[:, :-1])).logits.float().numpy()
    max_logit_diff = float(np.abs(ours_logits - peer_logits).max())

    # Greedy decoding first (training changes the weights).
    decode, agree, total = {}, 0, 0
    for b, prompt in prompts.items():
        jprompt, tprompt = jnp.asarray(prompt, jnp.int32), torch.from_numpy(prompt)

        def ours_decode():
            return jax.block_until_ready(generate(model, jprompt, decode_tokens))

        def peer_decode():
            with torch.no_grad():
                return peer.generate(tprompt, attention_mask=torch.ones_like(tprompt), max_new_tokens=decode_tokens,
                                     min_new_tokens=decode_tokens, do_sample=False, use_cache=True,
                                     pad_token_id=0)

        with jax.set_mesh(mesh):
            ours_tokens = np.asarray(ours_decode())  # warm-up: compiles
            peer_tokens = peer_decode()[:, prompt_len:].numpy()  # warm-up
            t = interleaved_median_times({"ours": ours_decode, "peer": peer_decode}, repeats)
        t_ours, t_peer = t["ours"], t["peer"]
        agree += int((ours_tokens == peer_tokens).sum()) if ours_tokens.shape == peer_tokens.shape else 0
        total += int(ours_tokens.size)
        decode[b] = {"ours": b * decode_tokens / t_ours, "peer": b * decode_tokens / t_peer}
    decode_products = ("panel_matmul" if uses_panel_matmul(model)
                       else f"XLA dot ({panel_matmul.unavailable_reason() or 'not a float32 model on one CPU'})")

    # Training steps.
    peer.train()
    opt = torch.optim.AdamW(peer.parameters(), lr=float(tc["learning_rate"]), betas=(tc["b1"], tc["b2"]),
                            eps=1e-8, weight_decay=float(tc["weight_decay"]))
    tin = torch.from_numpy(tokens[:, :-1]).to(peer_device)
    tgt = torch.from_numpy(tokens[:, 1:]).to(peer_device)
    clip = float(tc.get("grad_clip") or 0.0)

    def peer_step():
        logits = peer(tin).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tgt.reshape(-1))
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(peer.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def peer_train():
        for _ in range(steps):
            peer_step()

    with jax.set_mesh(mesh):
        optimizer = nnx.Optimizer(model, make_optimizer(tc), wrt=nnx.Param)

        def ours_train():
            for _ in range(steps):
                jax.block_until_ready(train_step(model, optimizer, jbatch))

        for _ in range(2):  # warm-up: compiles; first PyTorch calls
            jax.block_until_ready(train_step(model, optimizer, jbatch))
            peer_step()
        t = interleaved_median_times({"ours": ours_train, "peer": peer_train}, repeats)
    t_ours_train, t_peer_train = t["ours"] / steps, t["peer"] / steps

    peak = matmul_peak()  # after both sides ran: the same machine state, the same run
    floor = matmul_floor(cfg, batch, seq_len)
    flops_per_token = train_flops_per_token(cfg, seq_len)
    train = {"ours": batch * seq_len / t_ours_train, "peer": batch * seq_len / t_peer_train}
    return {
        "train_tokens_per_s": train,
        "train_mfu": {side: tps * flops_per_token / peak["peak"] for side, tps in train.items()},
        "train_flops_per_token": flops_per_token, "matmul_peak_flops": peak,
        "train_matmul_floor": {**floor, "ours_step_over_floor": t_ours_train / floor["seconds"],
                               "peer_step_over_floor": t_peer_train / floor["seconds"]},
        "decode_tokens_per_s": {str(b): v for b, v in decode.items()}, "decode_products": decode_products,
        "max_logit_diff": max_logit_diff, "greedy_agree": agree, "greedy_total": total,
        "num_params": cfg.num_params(), "torch_threads": torch.get_num_threads(),
        "jax_backend": jax.default_backend(), "jax_version": jax.__version__, "torch_version": torch.__version__,
        "allocator": host_allocator.describe(),
    }


def format_report(r: dict, *, config_name: str, cfg, args) -> str:
    peak, floor = r["matmul_peak_flops"], r["train_matmul_floor"]
    torch_peak = "n/a" if peak["torch"] is None else f"{peak['torch'] / 1e9:,.0f}"
    lines = [
        f"merg-jax bench llm | {config_name}: {r['num_params']:,} parameters (hidden {cfg.hidden_size}, "
        f"{cfg.num_layers} layers, vocab {cfg.vocab_size}, {cfg.dtype})",
        f"train: batch {args.batch} x {args.seq_len} tokens, forward+backward+clip+AdamW | decode: batch "
        f"{args.decode_batches}, prompt {args.prompt_len} + {args.decode_tokens} new tokens, greedy, KV cache, "
        f"products by {r['decode_products']}",
        f"median of {args.repeats} repeats, ours and peer in turn ({args.steps} train steps each), warm-up excluded "
        f"| jax {r['jax_version']} ({r['jax_backend']}), torch {r['torch_version']} ({r['torch_threads']} threads), "
        f"allocator {r['allocator']}",
        f"same weights: max |logits ours - peer| = {r['max_logit_diff']:.2e}, greedy tokens equal "
        f"{r['greedy_agree']}/{r['greedy_total']}",
        f"matmul peak ({peak['n']}^2 {peak['dtype']}, same run): jax {peak['jax'] / 1e9:,.0f} GFLOP/s, torch "
        f"{torch_peak} GFLOP/s; train FLOPs per token {r['train_flops_per_token'] / 1e6:,.1f} M (6N + attention)",
        f"matmul floor: the step's {len(floor['products'])} distinct products ({floor['flops'] / 1e9:,.2f} GFLOP), "
        f"each timed alone at its fastest of JAX/PyTorch and 8 layouts, take {floor['seconds'] * 1e3:,.1f} ms; "
        f"steps over it: ours {floor['ours_step_over_floor']:.2f}x, peer {floor['peer_step_over_floor']:.2f}x "
        f"(no step with these products beats the peer by more than {floor['peer_step_over_floor']:.2f}x)",
        "",
        f"{'metric':<22}{'ours (JAX)':>14}{'peer (HF torch)':>18}{'ours/peer':>12}",
    ]

    def row(label, ours, peer, fmt="{:,.0f}"):
        lines.append(f"{label:<22}{fmt.format(ours):>14}{fmt.format(peer):>18}{ours / peer:>12.2f}")

    row("train tokens/s", r["train_tokens_per_s"]["ours"], r["train_tokens_per_s"]["peer"])
    row("train MFU", 100 * r["train_mfu"]["ours"], 100 * r["train_mfu"]["peer"], "{:.1f}%")
    for b, v in r["decode_tokens_per_s"].items():
        row(f"decode tokens/s (B={b})", v["ours"], v["peer"])
    return "\n".join(lines)


def run(args, rest: list[str], parser: argparse.ArgumentParser) -> int:
    from merg_jax.config import llm_config, load_config
    from merg_jax.config import split_overrides

    try:
        config = load_config(args.config, split_overrides(rest))
        cfg = llm_config(config)
    except (ValueError, KeyError, TypeError, FileNotFoundError, AttributeError) as e:
        parser.print_usage(sys.stderr)
        print(f"merg-jax bench: error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2
    for name in ("batch", "seq_len", "steps", "repeats", "decode_tokens", "prompt_len"):
        if getattr(args, name) < 1:
            print(f"merg-jax bench: error: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    try:
        decode_batches = tuple(int(b) for b in args.decode_batches.split(","))
        if not decode_batches or min(decode_batches) < 1:
            raise ValueError
    except ValueError:
        print(f"merg-jax bench: error: --decode-batches {args.decode_batches!r} must be comma-separated integers "
              ">= 1 (e.g. 1,8)", file=sys.stderr)
        return 2
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        print(NO_TORCH, file=sys.stderr)
        return 2
    r = bench_llm(config, batch=args.batch, seq_len=args.seq_len, steps=args.steps, repeats=args.repeats,
                  decode_batches=decode_batches, decode_tokens=args.decode_tokens, prompt_len=args.prompt_len,
                  seed=args.seed)
    print(format_report(r, config_name=args.config, cfg=cfg, args=args))
    if args.json:
        out = {"target": "llm", "config": args.config, "overrides": rest,
               "args": {k: v for k, v in vars(args).items() if k not in ("json", "target")}, **r}
        pathlib.Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0
