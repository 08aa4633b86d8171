"""Checkpoints of the staged trainer: one orbax `CheckpointManager` per stage.

    {output_dir}/checkpoints/{stage}/{step}/model   the whole model state (`nnx.State` as a plain dict)
                                          /opt     the stage's optimiser state
                                          /meta    JSON: stage, step, done, rng, data iterator state(s), config

    ckpt = StageCheckpoints(directory, keep=2, metric="val_loss", mode="min")
    ckpt.save(step, model_state, opt_state, meta, metrics={"val_loss": 1.2})   # asynchronous, atomic
    restored = ckpt.restore_latest(abstract_model_state, abstract_opt_state)   # None, or the newest good one

Saving is asynchronous (the step loop goes on while orbax writes) and atomic: orbax writes into a temporary
directory and renames it when complete, so a run killed mid-save leaves the previous checkpoints intact and the
half-written one invisible. It keeps the last `keep` checkpoints and the best one by the validation `metric`.
Restoring takes abstract targets (`jax.ShapeDtypeStruct`s with the shardings of the mesh to restore onto), so a
checkpoint saved on one mesh restores onto any other. A step directory that cannot be read back (truncated,
corrupted, a file missing) is reported with its path and skipped in favour of the previous good one.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint import checkpoint_managers as policies

log = logging.getLogger(__name__)


class StageCheckpoints:
    """One stage's checkpoints (see the module docstring). `metric` / `mode` ("min" or "max") rank the best."""

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 2, metric: str = "val_loss", mode: str = "min",
                 async_save: bool = True):
        if mode not in ("min", "max"):
            raise ValueError(f"checkpoint metric mode {mode!r}: expected 'min' or 'max'")
        if keep < 1:
            raise ValueError(f"config.checkpoint.keep={keep} must be >= 1")
        self.directory = pathlib.Path(directory).absolute()
        self.metric, self.mode = metric, mode
        preservation = policies.AnyPreservationPolicy([
            policies.LatestN(n=keep),
            # A checkpoint saved between validations has no metrics: LatestN alone decides about it.
            policies.BestN(get_metric_fn=lambda m: float(m[metric]), reverse=(mode == "min"), n=1,
                           keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(preservation_policy=preservation,
                                               enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("model", "opt", "meta"))

    @staticmethod
    def remove_unfinished(directory: str | pathlib.Path) -> list[pathlib.Path]:
        """Deletes the temporary directories of saves a killed run never finished (orbax writes into
        `{step}.orbax-checkpoint-tmp*` and renames it when complete); returns them. Call it from one process, before
        any manager of `directory` exists."""
        import shutil

        gone = sorted(pathlib.Path(directory).glob("*.orbax-checkpoint-tmp*"))
        for path in gone:
            log.info("removing %s: a checkpoint whose save never finished", path)
            shutil.rmtree(path, ignore_errors=True)
        return gone

    # ------------------------------------------------------------------------------------------------ save

    def save(self, step: int, model_state: nnx.State, opt_state: Any, meta: dict[str, Any],
             metrics: dict[str, float] | None = None) -> None:
        """Starts writing checkpoint `step` (returns before it is on disk; `wait` blocks)."""
        if metrics is not None and self.metric not in metrics:
            metrics = None  # nothing to rank this one by
        meta = {**meta, "metrics": metrics}
        args = ocp.args.Composite(model=ocp.args.StandardSave(nnx.to_pure_dict(model_state)),
                                  opt=ocp.args.StandardSave(opt_state), meta=ocp.args.JsonSave(meta))
        self.manager.save(int(step), args=args, metrics=metrics, force=True)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    # ------------------------------------------------------------------------------------------------ read

    def steps(self) -> list[int]:
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def best_step(self) -> int | None:
        """The kept step with the best validation `metric` (None when none has one)."""
        scored = []
        for step in self.steps():
            try:
                value = (self.read_meta(step).get("metrics") or {}).get(self.metric)
            except Exception:  # an unreadable checkpoint is no candidate
                continue
            if value is not None:
                scored.append((float(value), step))
        if not scored:
            return None
        return (min(scored) if self.mode == "min" else max(scored))[1]

    def step_dir(self, step: int) -> pathlib.Path:
        return self.directory / str(step)

    def read_meta(self, step: int) -> dict[str, Any]:
        return dict(self.manager.restore(int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

    def restore(self, step: int, abstract_model_state: nnx.State, abstract_opt_state: Any | None = None
                ) -> tuple[nnx.State, Any, dict[str, Any]]:
        """(model state, optimiser state or None, meta) of checkpoint `step`, placed as the abstract targets say."""
        items = {"model": ocp.args.StandardRestore(nnx.to_pure_dict(abstract_model_state)),
                 "meta": ocp.args.JsonRestore()}
        if abstract_opt_state is not None:
            items["opt"] = ocp.args.StandardRestore(abstract_opt_state)
        out = self.manager.restore(int(step), args=ocp.args.Composite(**items))
        state = jax.tree.map(lambda x: x, abstract_model_state)  # a copy to fill
        nnx.replace_by_pure_dict(state, out["model"])
        return state, (out["opt"] if abstract_opt_state is not None else None), dict(out["meta"])

    def restore_latest(self, abstract_model_state: nnx.State, abstract_opt_state: Any | None = None,
                       *, before: int | None = None):
        """The newest checkpoint that reads back whole (`restore`'s triple, and its step), or None. A checkpoint that
        fails to read is logged with its path and the previous one is tried."""
        for step in reversed(self.steps()):
            if before is not None and step >= before:
                continue
            try:
                return (*self.restore(step, abstract_model_state, abstract_opt_state), step)
            except Exception as e:  # a truncated or corrupt step directory: orbax/tensorstore/JSON errors alike
                log.warning("checkpoint %s cannot be read back (%s: %s); skipping it for the previous one",
                            self.step_dir(step), type(e).__name__, str(e).splitlines()[0][:300])
        return None


__all__ = ["StageCheckpoints"]
