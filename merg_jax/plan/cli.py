"""`merg-jax plan`: does a recipe fit a TPU slice or a GPU node, with which batch, and how fast does it step?

    merg-jax plan [--config configs/empatheia_7b.py] [--targets v5p-128,v5e-256,8xh100] [--mfu 0.5]
                  [--reserve 0.10] [--json plan.json] [--markdown docs/scaling.md] [--no-crosscheck]
                  [--config.KEY=VALUE ...]

For each target (`merg_jax.plan.hardware`): per-device bytes of parameters, Adam moments and gradients from the
real sharding rules, activations per row under the config's remat policy, the largest global batch that fits in
HBM minus `--reserve`, and the step time at an MFU (`--mfu`, default each target's MaxText figure). Unless
`--no-crosscheck`, the activation count is checked against XLA's compiled memory analysis of scaled-down copies of
the recipe on 8 fake CPU devices (a subprocess, about a minute). No accelerator is needed.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import subprocess
import sys

from merg_jax.console import usage_error

DEFAULT_TARGETS = "v5p-128,v5e-256,8xh100"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="merg-jax plan", description=__doc__.split("\n\n")[0],
                                epilog="Overrides as for train: --config.train.seq_len=1024 --config.model.remat=full")
    p.add_argument("--config", default="configs/empatheia_7b.py", help="config file (default %(default)s)")
    p.add_argument("--targets", default=DEFAULT_TARGETS, help="comma-separated targets (default %(default)s)")
    p.add_argument("--mfu", type=float, default=None,
                   help="model FLOPs utilisation for every target, 0-1 (default: each target's MaxText figure)")
    p.add_argument("--reserve", type=float, default=0.10,
                   help="fraction of HBM kept free for XLA and the runtime (default %(default)s)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the plan as JSON")
    p.add_argument("--markdown", default=None, metavar="FILE", help="write the plan as markdown (docs/scaling.md)")
    p.add_argument("--crosscheck", action=argparse.BooleanOptionalAction, default=True,
                   help="compile scaled-down copies on 8 fake CPU devices to check the activation count "
                        "(default on)")
    return p


def main(argv: list[str] | None = None) -> int:
    from merg_jax.config import load_config, split_overrides
    from merg_jax.plan.crosscheck import run_crosscheck
    from merg_jax.plan.fit import plan_targets
    from merg_jax.plan.hardware import parse_targets
    from merg_jax.plan.report import markdown, table, to_json

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    try:
        targets = parse_targets(args.targets)
        overrides = split_overrides(rest)
        config = load_config(args.config, overrides)
        plan = plan_targets(config, targets, reserve=args.reserve, mfu=args.mfu, config_name=args.config)
    except (ValueError, KeyError, TypeError, FileNotFoundError, AttributeError) as e:
        parser.print_usage(sys.stderr)
        return usage_error("merg-jax plan", e)
    try:
        crosscheck = run_crosscheck(args.config, overrides) if args.crosscheck else None
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"merg-jax plan: {e}\n(--no-crosscheck plans without it)", file=sys.stderr)
        return 1
    command = shlex.join(["merg-jax", "plan", *argv])
    print(table(plan, crosscheck))
    if args.json:
        path = pathlib.Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(to_json(plan, crosscheck, command), indent=2) + "\n")
        print(f"wrote {path}")
    if args.markdown:
        path = pathlib.Path(args.markdown)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(markdown(plan, crosscheck, command))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
