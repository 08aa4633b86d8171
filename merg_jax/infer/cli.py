"""`merg-jax generate`: text generation from a local Hugging Face LLaMA directory.

    merg-jax generate --hf DIR [--tokenizer DIR] --prompt TEXT [--prompt TEXT ...]
                      [--max-new-tokens 64] [--temperature 0] [--top-k 0] [--top-p 1] [--seed 0]

Prompts are tokenized with the directory's tokenizer (transformers `AutoTokenizer`, local files only), left-padded
into one batch and decoded together; each row stops at the tokenizer's EOS (and any `eos_token_id` of the
directory's `generation_config.json`). For each prompt the command prints a `>>> prompt` line, then the
generated text.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="merg-jax generate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf", required=True, help="Hugging Face LLaMA directory (config.json + *.safetensors)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the --hf directory)")
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for a batch)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate per prompt (default 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy decoding")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0: off)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--dtype", default=None, help="parameter dtype (default float32)")
    p.add_argument("--compute-dtype", default=None, help="activation dtype (default bfloat16)")
    p.add_argument("--mesh", default=None, help="shard the model over a mesh, e.g. data=1,fsdp=1,tensor=-1")
    p.add_argument("--no-special-tokens", action="store_true", help="do not add BOS (or other special tokens)")
    return p


def stop_token_ids(tokenizer, model_dir: str | Path) -> list[int]:
    """The tokenizer's EOS plus any `eos_token_id` (int or list) in `generation_config.json`."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = Path(model_dir) / "generation_config.json"
    if gen.is_file():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        ids.update(int(e) for e in ([] if eos is None else eos if isinstance(eos, list) else [eos]))
    return sorted(ids)


def encode_batch(tokenizer, prompts: list[str], pad_id: int, add_special_tokens: bool = True):
    """Token ids of each prompt, left-padded: (tokens [B, P] int32, mask [B, P] int32)."""
    from merg_jax.infer.generate import left_pad

    rows = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts]
    empty = [i for i, r in enumerate(rows) if not r]
    if empty:
        raise ValueError(f"--prompt: prompt(s) {empty} encode to no tokens")
    return left_pad(rows, pad_id)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return _run(args)
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"merg-jax generate: error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    import jax
    import numpy as np
    from transformers import AutoTokenizer

    from merg_jax.convert import load_hf_llama  # imported here: the HF importer is a heavy, optional path
    from merg_jax.infer.generate import generate_with_info
    from merg_jax.sharding.mesh import parse_mesh_flag

    tok_dir = args.tokenizer or args.hf
    tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    mesh = parse_mesh_flag(args.mesh)
    t0 = time.perf_counter()
    model, cfg = load_hf_llama(args.hf, mesh=mesh, dtype=args.dtype, compute_dtype=args.compute_dtype)
    print(f"loaded {args.hf} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)

    stops = stop_token_ids(tokenizer, args.hf)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops[0] if stops else 0)
    tokens, mask = encode_batch(tokenizer, args.prompt, pad_id, add_special_tokens=not args.no_special_tokens)
    kw = dict(prompt_mask=mask, pad_id=pad_id, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
              stop_tokens=stops, rng=jax.random.key(args.seed))
    t0 = time.perf_counter()
    if mesh is not None:
        with jax.set_mesh(mesh):
            out = generate_with_info(model, tokens, args.max_new_tokens, **kw)
    else:
        out = generate_with_info(model, tokens, args.max_new_tokens, **kw)
    new_tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    seconds = time.perf_counter() - t0
    print(f"generated {int(lengths.sum())} tokens in {seconds:.2f}s (compilation included)", file=sys.stderr)
    for prompt, row, n in zip(args.prompt, new_tokens, lengths):
        print(f">>> {prompt}")
        print(tokenizer.decode(row[:n].tolist(), skip_special_tokens=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
