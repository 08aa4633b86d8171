"""`merg-jax export`: a serving bundle from a training output directory (no optimiser state).

    merg-jax export --checkpoint runs/empatheia_tiny --out bundles/tiny [--dtype float32|bfloat16] [--overwrite]

The bundle (merg_jax/infer/bundle.py) holds the config, the tokenizer and the parameters; `merg-jax eval` and
`merg-jax respond` load it like a training directory.
"""

from __future__ import annotations

import argparse
import sys

PROG = "merg-jax export"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="training output directory (or a bundle to convert)")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="parameter dtype")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    from merg_jax.console import setup_logging, usage_error

    setup_logging()
    try:
        from merg_jax.infer.bundle import load_model, save_bundle

        loaded = load_model(args.checkpoint)
        out = save_bundle(loaded, args.out, dtype=args.dtype, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError, OSError) as e:
        return usage_error(PROG, e)
    print(f"exported {loaded.source} as a {args.dtype} bundle: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
