"""`merg-jax train`: the main job.

    merg-jax train --config configs/tiny.py [--config.train.steps=50 ...]

Trains the LLM of the config on the built-in empathetic-dialogue corpus (byte tokenizer), prints progress,
generates a reply to `config.generate.prompt`, and saves the weights as a Hugging Face LLaMA directory (plus
the tokenizer, so the reply can be decoded again) in `config.train.output_dir`.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys
import tempfile
import time

from merg_jax.config import load_config

log = logging.getLogger("merg_jax")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="merg-jax train",
        description="Train the LLM backbone on the built-in corpus, show a generated reply, save the weights.",
        epilog="Any config value can be overridden: --config.train.steps=20 --config.model.num_layers=2 "
               "--config.train.output_dir=runs/x (also as two arguments: --config.train.steps 20).")
    p.add_argument("--config", default="configs/tiny.py",
                   help="config file (a path, or a name under configs/: tiny, empatheia_7b); default %(default)s")
    p.add_argument("--no-save", action="store_true", help="do not write train.output_dir")
    return p


def split_overrides(rest: list[str]) -> list[str]:
    """`--config.a.b=1` and `--config.a.b 1` → `["config.a.b=1"]`; anything else is an error."""
    out, i = [], 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("--config."):
            raise ValueError(f"unrecognised argument {arg!r} (overrides look like --config.train.steps=10)")
        if "=" in arg:
            out.append(arg)
            i += 1
        elif i + 1 < len(rest):
            out.append(f"{arg}={rest[i + 1]}")
            i += 2
        else:
            raise ValueError(f"config override {arg!r} has no value")
    return out


def _setup_logging() -> None:
    if not any(getattr(h, "_merg_cli", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._merg_cli = True
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def save_run(model, config, output_dir: str | pathlib.Path) -> pathlib.Path:
    """The trained weights as a HF LLaMA directory, with the byte tokenizer (merg and HF formats), its token ids
    in config.json, and the run's config (`merg_config.json`)."""
    from merg_jax.convert import save_hf_llama
    from merg_jax.data import ByteTokenizer

    tok = ByteTokenizer()
    out = pathlib.Path(output_dir)
    with tempfile.TemporaryDirectory() as aux:
        tok.save(aux)  # tokenizer files, copied over by save_hf_llama
        ids = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
        (pathlib.Path(aux) / "config.json").write_text(json.dumps(ids))
        (pathlib.Path(aux) / "generation_config.json").write_text(json.dumps({**ids, "do_sample": False}, indent=2))
        save_hf_llama(model, out, copy_from=aux, overwrite=True)
    tok.save(out, hf=False)  # merg_tokenizer.json
    (out / "merg_config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    return out


def reply_to(model, prompt: str, gen) -> str:
    """Greedy/sampled reply to one prompt with the byte tokenizer, stopping at `</s>`."""
    import numpy as np

    from merg_jax.data import ByteTokenizer
    from merg_jax.infer import generate

    tok = ByteTokenizer()
    ids = tok.encode(prompt, add_bos=True)
    max_new = min(int(gen.max_new_tokens), model.cfg.max_position_embeddings - len(ids))
    out = generate(model, np.asarray([ids], np.int32), max_new, pad_id=tok.pad_id,
                   temperature=float(gen.temperature), top_k=int(gen.top_k), top_p=float(gen.top_p),
                   stop_tokens=(tok.eos_id,), rng=int(gen.get("seed", 0)))
    return tok.decode(np.asarray(out)[0]).strip()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    try:
        config = load_config(args.config, split_overrides(rest))
    except (ValueError, KeyError, TypeError, FileNotFoundError, AttributeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        parser.print_usage(sys.stderr)
        print(f"merg-jax train: error: {msg}", file=sys.stderr)
        return 2
    _setup_logging()
    import jax

    from merg_jax.sharding import initialize
    from merg_jax.train.loop import train_llm

    initialize()  # joins the multi-process run when the environment describes one (launch/README.md)

    start = time.perf_counter()
    log.info("merg-jax train | config %s | jax %s on %s", args.config, jax.__version__, jax.default_backend())
    model, history = train_llm(config)
    first, last = history[0]["loss"], history[-1]["loss"]
    log.info("trained %d steps in %.1f s: loss %.4f -> %.4f", len(history), time.perf_counter() - start, first, last)

    if jax.process_count() > 1:
        # Exporting and sampling need the whole model on one host; multi-host checkpoints are orbax's job.
        log.info("process %d of %d: done (multi-process runs neither export nor sample)", jax.process_index(),
                 jax.process_count())
        return 0
    prompt = config.generate.prompt
    log.info("prompt: %s", prompt)
    log.info("reply:  %s", reply_to(model, prompt, config.generate))
    if not args.no_save:
        out = save_run(model, config, config.train.output_dir)
        log.info("saved the model (Hugging Face LLaMA format) and tokenizer to %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
