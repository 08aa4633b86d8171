"""`merg-jax convert-hf`: import a local Hugging Face LLaMA directory into merg_jax / export one.

    merg-jax convert-hf import SRC_HF_DIR [--out DIR] [--dtype float32] [--mesh fsdp=-1]
    merg-jax convert-hf export SRC --out DIR [--dtype bfloat16] [--max-shard-size 5GB]

`import` loads every tensor of SRC into an `Llm` (the same path training and inference take), prints the
parameter count per group, runs a short forward pass as a check, and with `--out` writes the imported
parameters as an HF-layout directory (bit-exact when the dtype is kept). That directory is the interchange format
until merg_jax's orbax checkpoints exist; `export` is meant to write those checkpoints as HF directories and
today accepts an HF directory as SRC (re-saved with another dtype or shard size, tokenizer files carried over).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

_GROUPS = (  # (group, predicate on the state path) in print order; the first match wins
    ("embed", lambda p: p[0] == "embed"),
    ("lora", lambda p: str(p[-1]).startswith("lora_")),
    ("attention", lambda p: p[:2] == ("layers", "attn")),
    ("mlp", lambda p: p[:2] == ("layers", "mlp")),
    ("norms", lambda p: "norm" in str(p[0]) or (p[0] == "layers" and "norm" in str(p[1]))),
    ("lm_head", lambda p: p[0] == "lm_head"),
)


def parameter_summary(model) -> dict[str, tuple[int, int]]:
    """{group: (parameter count, bytes)} over the model's state, groups as in `_GROUPS` (+ `other`)."""
    from flax import nnx

    out: dict[str, list[int]] = {}
    for path, var in nnx.to_flat_state(nnx.state(model)):
        path = tuple(str(p) for p in path)
        group = next((g for g, match in _GROUPS if match(path)), "other")
        value = var.get_value()
        entry = out.setdefault(group, [0, 0])
        entry[0] += value.size
        entry[1] += value.size * value.dtype.itemsize
    return {g: (n, b) for g, (n, b) in out.items()}


def _print_summary(model, cfg) -> None:
    summary = parameter_summary(model)
    print(f"config: {cfg.num_layers} layers, hidden {cfg.hidden_size}, mlp {cfg.intermediate_size}, "
          f"heads {cfg.num_heads} (kv {cfg.num_kv_heads}, head_dim {cfg.head_dim}), vocab {cfg.vocab_size}, "
          f"tied={cfg.tie_embeddings}, rope_theta={cfg.rope_theta}, llama3 scaling={cfg.rope_llama3_scaling}, "
          f"param dtype {cfg.param_dtype}")
    order = [g for g, _ in _GROUPS] + ["other"]
    for g in sorted(summary, key=order.index):
        n, b = summary[g]
        print(f"  {g:<10} {n:>15,d} params  {b / 2**20:>12.1f} MiB")
    total = sum(n for n, _ in summary.values())
    print(f"  {'total':<10} {total:>15,d} params  {sum(b for _, b in summary.values()) / 2**20:>12.1f} MiB"
          f"  (config predicts {cfg.num_params():,d})")


def forward_check(model, length: int = 8) -> bool:
    """Runs tokens 0..length-1 through the model; prints the logits' statistics; True when all are finite."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    tokens = (jnp.arange(length, dtype=jnp.int32) % model.cfg.vocab_size)[None]
    logits = nnx.jit(lambda m, t: m(t))(model, tokens)
    logits = jax.device_get(logits)
    finite = bool(jnp.isfinite(logits).all())
    print(f"forward check: tokens {list(range(length))} → logits {tuple(logits.shape)}, finite={finite}, "
          f"max |logit| {float(abs(logits).max()):.3f}, next-token argmax {int(logits[0, -1].argmax())}")
    return finite


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="merg-jax convert-hf", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", required=True)
    imp = sub.add_parser("import", help="load a HF LLaMA directory, summarise and check it, optionally write it out")
    imp.add_argument("src", help="Hugging Face model directory (config.json + *.safetensors)")
    imp.add_argument("--out", help="write the imported parameters here (HF layout)")
    imp.add_argument("--dtype", default="float32", help="parameter dtype in merg_jax (default float32)")
    imp.add_argument("--compute-dtype", default=None, help="activation dtype for the check (default bfloat16)")
    imp.add_argument("--mesh", default=None, help="load sharded onto a mesh, e.g. data=1,fsdp=-1,tensor=1")
    imp.add_argument("--no-forward", action="store_true", help="skip the forward-pass check")
    imp.add_argument("--max-shard-size", default="5GB", help="with --out: shard size, e.g. 5GB")
    imp.add_argument("--overwrite", action="store_true", help="with --out: replace a non-empty directory")
    exp = sub.add_parser("export", help="write a model as a HF LlamaForCausalLM directory")
    exp.add_argument("src", help="the model: today a Hugging Face LLaMA directory")
    exp.add_argument("--out", required=True, help="output directory (created atomically)")
    exp.add_argument("--dtype", default=None, help="saved dtype, e.g. bfloat16 (default: as loaded)")
    exp.add_argument("--max-shard-size", default="5GB", help="shard size, e.g. 5GB, 500MB")
    exp.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    return p


def _import(args) -> int:
    from merg_jax.convert.hf_llama import load_hf_llama, save_hf_llama
    from merg_jax.sharding.mesh import parse_mesh_flag

    t0 = time.perf_counter()
    model, cfg = load_hf_llama(args.src, dtype=args.dtype, compute_dtype=args.compute_dtype,
                               mesh=parse_mesh_flag(args.mesh))
    print(f"loaded {args.src} in {time.perf_counter() - t0:.1f}s")
    _print_summary(model, cfg)
    ok = True if args.no_forward else forward_check(model)
    if args.out:
        save_hf_llama(model, args.out, max_shard_size=args.max_shard_size, copy_from=args.src,
                      overwrite=args.overwrite)
        print(f"wrote {args.out}")
    if not ok:
        print("merg-jax convert-hf: error: the forward check produced non-finite logits", file=sys.stderr)
        return 1
    return 0


def _export(args) -> int:
    from merg_jax.convert.hf_llama import CONFIG_FILE, load_hf_llama, save_hf_llama

    src = Path(args.src)
    if not (src / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{src / CONFIG_FILE}: not found — export reads a Hugging Face LLaMA directory "
                                f"(exporting merg_jax orbax checkpoints comes with the training checkpoints)")
    # Load in the files' own precision unless asked otherwise, so the export is bit-exact by default.
    model, _ = load_hf_llama(src, dtype=args.dtype or _stored_dtype(src))
    save_hf_llama(model, args.out, dtype=args.dtype, max_shard_size=args.max_shard_size, copy_from=src,
                  overwrite=args.overwrite)
    print(f"wrote {args.out}")
    return 0


def _stored_dtype(src: Path) -> str:
    """The widest floating dtype among the checkpoint's tensors (float32 beats bfloat16 beats float16)."""
    import numpy as np

    from merg_jax.convert.hf_llama import checkpoint_tensors

    dtypes = {np.dtype(t.dtype) for t in checkpoint_tensors(src).values()}
    return max(dtypes, key=lambda d: (d.itemsize, d.name == "bfloat16")).name


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return _import(args) if args.action == "import" else _export(args)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"merg-jax convert-hf {args.action}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
