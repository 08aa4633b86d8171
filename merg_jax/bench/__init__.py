"""`merg-jax bench TARGET`: ours and the peer side by side in one run, with the ratio.

Targets: `llm` (training step and decoding vs Hugging Face PyTorch LLaMA), `attention` (blockwise vs XLA and the
naive reference on CPU; the Pallas GPU kernel vs cuDNN and XLA on a GPU), `data` (the grain pipeline's samples/s
with 0 and N workers), `encoders` (the CLIP vision and AST audio towers' inference and training step vs Hugging
Face PyTorch `CLIPVisionModel` / `ASTModel`), `speech` (the HiFi-GAN vocoder vs Hugging Face PyTorch
`SpeechT5HifiGan`: seconds per call and real-time factor), `kernels` (the attention kernels' errors against the naive
reference and cuDNN), `respond` (one reply's latency by stage, first call and warm), `empatheia` (the Empatheia
trainer's jitted steps for the coe, content and style stages: step time, tokens/s and MFU against the machine's
matmul peak; no PyTorch Empatheia exists, so no peer), `face` (the talking-face generator's renderer and motion
sampler in frames/s and the real-time factor of animating N seconds; no PyTorch peer exists).

Every target takes `--json FILE` and writes there every number it prints.
"""

from __future__ import annotations

import argparse
import sys

from merg_jax.bench import attention, data, empatheia, encoders, face, kernels, llm, respond, speech

TARGETS = {"llm": llm, "attention": attention, "kernels": kernels, "data": data, "encoders": encoders,
           "speech": speech, "respond": respond, "empatheia": empatheia, "face": face}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="merg-jax bench", description="Benchmarks: ours and the peer side by side.")
    sub = p.add_subparsers(dest="target", required=True, metavar="TARGET")
    for module in TARGETS.values():
        module.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    return TARGETS[args.target].run(args, rest, parser)


if __name__ == "__main__":
    sys.exit(main())
