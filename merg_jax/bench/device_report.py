"""The markdown report of launch/gpu_check.sh, for docs/benchmarks.md, from the files its steps wrote in DIR:

    python -m merg_jax.bench.device_report DIR > DIR/report.md

DIR/device.txt (the card, from nvidia-smi), kernels.md (`merg-jax bench kernels`), attention.txt (`merg-jax bench
attention`), run/metrics.jsonl (a short `merg-jax train`: the median step time of each stage, first step
excluded, as that one compiles) and respond.md (`merg-jax bench respond`). A missing piece is named in the report,
not skipped silently.
"""

from __future__ import annotations

import datetime
import pathlib
import statistics
import sys


def step_times(run: pathlib.Path) -> list[tuple[str, int, float, float]]:
    """[(stage, logged steps, first step s, median later step s)] from a training run's metrics.jsonl."""
    from merg_jax.train.metrics_log import read_metrics

    by_stage: dict[str, list[tuple[int, float]]] = {}
    for row in read_metrics(run):
        if row.get("split") != "valid" and "step_time" in row:
            by_stage.setdefault(row["stage"], []).append((int(row["step"]), float(row["step_time"])))
    out = []
    for stage, rows in by_stage.items():
        rows.sort()
        later = [t for _, t in rows[1:]] or [rows[0][1]]
        out.append((stage, len(rows), rows[0][1], statistics.median(later)))
    return out


def report(folder: str | pathlib.Path) -> str:
    d = pathlib.Path(folder)

    def piece(name: str) -> str | None:
        path = d / name
        return path.read_text().strip() if path.exists() else None

    device = piece("device.txt") or "unknown device"
    lines = [f"## GPU check: {device.splitlines()[0]}", "",
             f"`launch/gpu_check.sh`, {datetime.date.today().isoformat()}. Device: {device}", ""]
    kernels = piece("kernels.md")
    lines += ["### Attention kernels: errors", "", kernels or "(kernels.md missing: `merg-jax bench kernels` failed)",
              ""]
    attention = piece("attention.txt")
    lines += ["### Attention kernels: speed", "", "```", attention or "(attention.txt missing)", "```", ""]
    lines += ["### Training step (configs/empatheia_tiny.py on AvaMERG-mini)", ""]
    metrics = d / "run" / "metrics.jsonl"
    if metrics.exists():
        lines += ["| stage | logged steps | first step (compiles), s | later steps (median), s |", "|---|---:|---:|---:|"]
        lines += [f"| {s} | {n} | {first:.2f} | {median:.4f} |" for s, n, first, median in step_times(d / "run")]
    else:
        lines.append("(run/metrics.jsonl missing: the training run failed)")
    lines += ["", "### One reply", "", piece("respond.md") or "(respond.md missing: `merg-jax bench respond` failed)"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not pathlib.Path(argv[0]).is_dir():
        print("usage: python -m merg_jax.bench.device_report DIR (the folder launch/gpu_check.sh wrote)",
              file=sys.stderr)
        return 2
    sys.stdout.write(report(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
