"""`merg-jax describe-model`: the Empatheia model of a config, built abstractly (`nnx.eval_shape`, no memory),
with its parameter count per group and what each training stage trains.

    merg-jax describe-model --config configs/empatheia_7b.py
"""

from __future__ import annotations

import argparse
import sys

from merg_jax.config import load_config
from merg_jax.models.param_groups import GROUPS, STAGES, param_counts


def describe(config) -> tuple[dict[str, int], str]:
    """(counts per group, a printable table) of the config's Empatheia model."""
    from flax import nnx

    from merg_jax.models.empatheia import Empatheia, EmpatheiaConfig

    cfg = EmpatheiaConfig.from_config(config)
    counts = param_counts(nnx.eval_shape(lambda: Empatheia(cfg, rngs=nnx.Rngs(0))))
    total = sum(counts.values())
    trained_by = {g: [s for s, groups in STAGES.items() if g in groups] for g in GROUPS}
    lines = [f"{'group':<14}{'parameters':>16}{'share':>9}  trained in stage", "-" * 60]
    for g in GROUPS:
        share = counts[g] / total if total else 0.0
        lines.append(f"{g:<14}{counts[g]:>16,}{share:>8.2%}  {', '.join(trained_by[g]) or '(frozen)'}")
    lines += ["-" * 60, f"{'total':<14}{total:>16,}"]
    return counts, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from merg_jax.config import split_overrides

    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="merg-jax describe-model", description=__doc__.split("\n\n")[0],
                                epilog="Overrides as for train: --config.empatheia.projection.kind=resampler ...")
    p.add_argument("--config", default="configs/tiny.py", help="config file (default %(default)s)")
    args, rest = p.parse_known_args(argv)
    try:
        config = load_config(args.config, split_overrides(rest))
        if "empatheia" not in config:
            raise ValueError(f"{args.config} has no `empatheia` section (see configs/tiny.py)")
        _, table = describe(config)
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
        p.print_usage(sys.stderr)
        print(f"merg-jax describe-model: error: {e}", file=sys.stderr)
        return 2
    print(f"Empatheia of {args.config}\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
