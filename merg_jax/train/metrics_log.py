"""Training metrics on disk: `{output_dir}/metrics.jsonl` (one JSON object per logged step) and TensorBoard event
files under `{output_dir}/tensorboard/` (tensorboardX).

    writer = MetricsWriter(output_dir)
    writer.rewind(stage="coe", step=200)     # on resume: forget what was logged after the restored checkpoint
    writer.write({"stage": "coe", "step": 201, "loss": 2.3, ...})
    writer.close()

Every line has at least `stage`, `step` and `loss`; `step` counts the stage's own optimiser steps from 1. A line is
flushed as soon as it is written, so a crash loses at most the line being written; `rewind` drops a torn last line
and, when a run resumes from an earlier checkpoint, the lines of the steps it will redo, so the file of a resumed
run reads like the file of an uninterrupted one. Only process 0 writes (`enabled=False` elsewhere).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import tempfile
from typing import Any

JSONL = "metrics.jsonl"


def read_metrics(output_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The objects of `metrics.jsonl`, skipping a torn (unparsable) line."""
    path = pathlib.Path(output_dir) / JSONL
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf; "nan" / "inf" keep the fact
    return value


class MetricsWriter:
    def __init__(self, output_dir: str | os.PathLike, *, enabled: bool = True, tensorboard: bool = True):
        self.dir = pathlib.Path(output_dir)
        self.enabled = enabled
        self._file = None
        self._tb = None
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(logdir=str(self.dir / "tensorboard"), flush_secs=30)

    def rewind(self, stage: str, step: int, later_stages: tuple[str, ...] = ()) -> None:
        """Keeps the lines up to `step` of `stage` (and those of other stages), drops the rest (atomic rewrite)."""
        if not self.enabled:
            return
        path = self.dir / JSONL
        rows = read_metrics(self.dir)
        keep = [r for r in rows if not ((r.get("stage") == stage and int(r.get("step", 0)) > step)
                                        or r.get("stage") in later_stages)]
        fd, tmp = tempfile.mkstemp(prefix=".metrics.", suffix=".tmp", dir=self.dir)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in keep)
        os.replace(tmp, path)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        for key in ("stage", "step", "loss"):
            if key not in row:
                raise ValueError(f"MetricsWriter.write: a metrics row needs {key!r}, got {sorted(row)}")
        if self._file is None:
            self._file = open(self.dir / JSONL, "a", encoding="utf-8")
        self._file.write(json.dumps({k: _plain(v) for k, v in row.items()}) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = int(row.get("global_step", row["step"]))
            for key, value in row.items():
                if key in ("stage", "step", "global_step") or not isinstance(value, (int, float)):
                    continue
                self._tb.add_scalar(f"{row['stage']}/{key}", float(value), step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


__all__ = ["JSONL", "MetricsWriter", "read_metrics"]
