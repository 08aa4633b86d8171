"""The `merg-jax` command. Each subcommand lives with the code it drives and is imported only when used."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "demo": ("merg_jax.app.demo_cli", "the main job in 15 minutes: data, every stage trained, scores, two answers "
                                      "(text, voice, avatar)"),
    "serve": ("merg_jax.app.serve", "a local web page to talk with a trained model (Gradio; pip install -e '.[demo]')"),
    "train": ("merg_jax.train.cli", "train a model from a config file: Empatheia stage by stage, or the LLM alone"),
    "eval": ("merg_jax.eval.cli", "answer every turn of a split and score the replies with the paper's metrics"),
    "respond": ("merg_jax.infer.respond_cli", "answer one dialogue turn: Chain of Empathy, reply (reply.json)"),
    "speak": ("merg_jax.infer.speak_cli", "the trained speech generator says a text in a reference's or a label's style"),
    "animate": ("merg_jax.infer.animate_cli", "the trained face generator animates a portrait with speech (mp4)"),
    "export": ("merg_jax.infer.export_cli", "a serving bundle (config, tokenizer, parameters) from a training run"),
    "generate": ("merg_jax.infer.cli", "generate text from a trained or imported model"),
    "convert-hf": ("merg_jax.convert.cli", "import a local Hugging Face LLaMA directory / export to one"),
    "make-data": ("merg_jax.data.mini.cli", "generate AvaMERG-mini: dialogues, espeak-ng speech, avatar videos"),
    "inspect-data": ("merg_jax.data.inspect", "counts, label distributions, durations and problems of a dataset"),
    "train-tokenizer": ("merg_jax.data.tokenizer_cli", "train a byte-level BPE tokenizer on a training split"),
    "describe-model": ("merg_jax.models.describe", "parameter counts of a config's Empatheia model, by group and stage"),
    "plan": ("merg_jax.plan.cli", "the scale plan: per-device memory, largest batch, step time on TPU/GPU targets"),
    "bench": ("merg_jax.bench", "benchmarks, ours beside the peer (llm, attention, kernels, data, encoders, speech, "
                                "respond, empatheia, face)"),
}


def usage() -> str:
    lines = ["usage: merg-jax COMMAND [args]  (merg-jax COMMAND --help for its flags)", "", "commands:"]
    lines += [f"  {name:<15} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the command line, not a caller in this process: set up the process before JAX loads
        from merg_jax import compile_cache
        from merg_jax.host_allocator import reexecute_with_fast_allocator

        try:
            reexecute_with_fast_allocator()
            compile_cache.configure()
        except ValueError as e:
            print(f"merg-jax: error: {e}", file=sys.stderr)
            return 2
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"merg-jax: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
