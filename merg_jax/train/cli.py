"""`merg-jax train`: train a model from a config file.

    merg-jax train --config configs/empatheia_tiny.py [--config.train.steps=50 ...]
    merg-jax train --config configs/tiny.py

A config with `stages` trains Empatheia stage by stage on AvaMERG(-mini) (`merg_jax.train.trainer`): orbax
checkpoints in `config.train.output_dir`, and running the same command again resumes. A config without
`stages` (configs/tiny.py) trains the LLM backbone alone on the built-in empathetic-dialogue corpus (byte
tokenizer), prints a generated reply to `config.generate.prompt`, and saves the weights as a Hugging Face LLaMA
directory (plus the tokenizer) in `config.train.output_dir`.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

from merg_jax.config import load_config, split_overrides
from merg_jax.console import log, setup_logging, usage_error

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="merg-jax train",
        description="Train Empatheia stage by stage (a config with `stages`), or the LLM backbone alone on the "
                    "built-in corpus.",
        epilog="Any config value can be overridden: --config.train.steps=20 --config.model.num_layers=2 "
               "--config.train.output_dir=runs/x (also as two arguments: --config.train.steps 20).")
    p.add_argument("--config", default="configs/tiny.py",
                   help="config file (a path, or a name under configs/: tiny, empatheia_7b); default %(default)s")
    p.add_argument("--no-save", action="store_true", help="do not write train.output_dir")
    return p


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
    setup_logging()
    import jax

    from merg_jax.sharding import initialize
    from merg_jax.train.loop import train_llm

    initialize()  # joins the multi-process run when the environment describes one (launch/README.md)

    start = time.perf_counter()
    log.info("merg-jax train | config %s | jax %s on %s", args.config, jax.__version__, jax.default_backend())
    if "stages" in config:
        return _train_stages(config, start)
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


def _train_stages(config, start: float) -> int:
    from merg_jax.data.avamerg import DataError
    from merg_jax.train.trainer import TrainingError, train_stages

    try:
        result = train_stages(config)
    except (TrainingError, DataError, FileNotFoundError) as e:
        return usage_error("merg-jax train", e)
    for stage, row in result.summary.items():
        shown = "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k in ("loss", "val_loss") or k.endswith("_acc")
                          or k.endswith("_acc_tf"))
        log.info("  %-10s %s", stage, shown)
    log.info("done in %.1f s; the model is in %s (merg-jax eval / respond --checkpoint %s)",
             time.perf_counter() - start, config.train.output_dir, config.train.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
