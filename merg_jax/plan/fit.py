"""One target's plan: what stage a needs per device, the largest batch that fits, and the step time at an MFU.

    plan = plan_targets(config, [TARGETS["v5p-128"]], reserve=0.10)
    p = plan.targets[0]
    p.fits, p.planned_batch, p.max_global_batch, p.step_time(p.planned_batch)

Per device, at `b` rows per device:

    peak = parameters + Adam moments + gradients + gathered weights + b · max(LLM activations per row,
                                                                             tower working set per row)
    fits when peak ≤ (1 − reserve) · HBM

The reserve (default 10%) is for what no count sees: XLA's fragmentation and scratch, collective buffers, the
runtime. Gathered weights: under FSDP each layer's weights are all-gathered (in the compute dtype, still split over
`tensor`) just before use, and XLA prefetches the next layer's while this one computes, so two layers' worth plus the
LM head are live. The towers run before the LLM and keep nothing, so their working set and the LLM's activations
are never live together: the larger one counts.

Batch: the trainer splits every batch over `data × fsdp` (`merg_jax.train.batching.BATCH_SPEC`), so the global
batch must be a multiple of that; the planned batch is the recipe's `train.batch_size` rounded up to one. Step
time: each device runs its rows' model FLOPs (split `tensor` ways) at `MFU × peak`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from merg_jax.models.llm_config import LlmConfig
from merg_jax.plan.activations import ActivationModel, llm_activations, tower_bytes_per_row
from merg_jax.plan.flops import RowFlops, coe_flops
from merg_jax.plan.hardware import Target
from merg_jax.plan.state import Leaf, StageState, abstract_model, sharded_leaves, stage_settings_of, stage_state

PLANNED_STAGE = "coe"  # stage a: the LLM's forward and backward through LoRA, the largest memory and compute


def _tensor_split(leaf: Leaf, mesh_shape) -> int:
    """How many ways `tensor` splits a leaf (what stays split after FSDP's all-gather)."""
    return math.prod(int(mesh_shape.get("tensor", 1)) for axes in leaf.spec
                     for axis in ((axes,) if isinstance(axes, str) else (axes or ())) if axis == "tensor")


def gathered_weight_bytes(leaves: Sequence[Leaf], ecfg, mesh_shape) -> float:
    """FSDP's live weight copies during the LLM's passes: two layers (this one and the prefetched next) and the LM
    head, in the compute dtype, split only over `tensor`. Zero without an fsdp axis."""
    if int(mesh_shape.get("fsdp", 1)) <= 1:
        return 0.0
    item = np.dtype(ecfg.llm.dtype).itemsize
    layers = ecfg.llm.num_layers
    per_layer = sum(leaf.count / layers * item / _tensor_split(leaf, mesh_shape) for leaf in leaves
                    if leaf.path[:2] == ("llm", "layers"))
    head = sum(leaf.count * item / _tensor_split(leaf, mesh_shape) for leaf in leaves
               if leaf.path[:2] == ("llm", "lm_head"))
    return 2 * per_layer + head


@dataclasses.dataclass(frozen=True)
class TargetPlan:
    target: Target
    stage: str
    state: StageState
    stages: tuple[StageState, ...]  # every stage of config.stages on this target's mesh
    gathered_bytes: float
    activations: ActivationModel
    tower_bytes_per_row: float
    flops: RowFlops
    reserve: float
    mfu: float
    mfu_source: str
    recipe_batch: int
    rows_to_train: int  # the stage's steps × its recipe batch

    @property
    def budget_bytes(self) -> float:
        return (1.0 - self.reserve) * self.target.hbm_bytes

    @property
    def fixed_bytes(self) -> float:
        return self.state.total_bytes + self.gathered_bytes

    @property
    def row_bytes(self) -> float:
        """Per device, per row of the device's share of the batch."""
        return max(self.activations.per_row_bytes, self.tower_bytes_per_row)

    @property
    def max_rows_per_device(self) -> int:
        return max(int((self.budget_bytes - self.fixed_bytes) // self.row_bytes), 0)

    @property
    def max_global_batch(self) -> int:
        return self.max_rows_per_device * self.target.batch_shards

    @property
    def planned_batch(self) -> int:
        """The recipe's batch rounded up to a multiple of `data × fsdp` (the smallest batch the mesh can split)."""
        shards = self.target.batch_shards
        return -(-self.recipe_batch // shards) * shards

    def rows_per_device(self, global_batch: int) -> int:
        return global_batch // self.target.batch_shards

    def peak_bytes(self, global_batch: int) -> float:
        return self.fixed_bytes + self.rows_per_device(global_batch) * self.row_bytes

    @property
    def fits(self) -> bool:
        return self.max_rows_per_device >= self.rows_per_device(self.planned_batch) >= 1

    def step_time(self, global_batch: int) -> float:
        """Seconds per step: each device's share of the model FLOPs (rows split over data × fsdp, each row's
        matmuls over tensor) at MFU × peak."""
        tensor = self.target.mesh.get("tensor", 1)
        per_device = self.rows_per_device(global_batch) * self.flops.model_per_row / tensor
        return per_device / (self.mfu * self.target.peak_flops)

    def stage_time(self, global_batch: int) -> float:
        """Seconds to train the stage's rows (its steps × the recipe batch) at `global_batch` rows per step."""
        return math.ceil(self.rows_to_train / global_batch) * self.step_time(global_batch)


@dataclasses.dataclass(frozen=True)
class Plan:
    config_name: str
    stage: str
    param_count: int
    llm: LlmConfig
    targets: tuple[TargetPlan, ...]


def plan_targets(config, targets: Sequence[Target], *, reserve: float = 0.10, mfu: float | None = None,
                 config_name: str = "") -> Plan:
    """The plan of stage a (coe) of `config` on each target (see the module docstring); `mfu` None: each target's
    published reference figure."""
    from merg_jax.models.empatheia import EmpatheiaConfig

    if not 0.0 <= reserve < 1.0:
        raise ValueError(f"--reserve {reserve}: expected a fraction of memory in [0, 1)")
    if mfu is not None and not 0.0 < mfu <= 1.0:
        raise ValueError(f"--mfu {mfu}: expected a fraction in (0, 1]")
    stages = [s.strip() for s in str(config.get("stages", "") or PLANNED_STAGE).split(",") if s.strip()]
    if PLANNED_STAGE not in stages:
        raise ValueError(f"merg-jax plan plans stage {PLANNED_STAGE!r} (the LLM's backward through LoRA); "
                         f"config.stages={config.get('stages')!r} has none")
    ecfg = EmpatheiaConfig.from_config(config)
    model = abstract_model(config)
    flops = coe_flops(config, ecfg)
    settings, _ = stage_settings_of(config, PLANNED_STAGE)  # train.steps > 0 overrides every stage's steps there
    recipe_batch, steps = int(settings.batch_size), int(settings.steps)
    rows_to_train = steps * recipe_batch
    data = config.data
    clips = int(data.get("max_clips", 0) or 0)
    out = []
    for target in targets:
        mesh = target.mesh
        leaves = sharded_leaves(model, mesh)
        states = tuple(stage_state(config, model, leaves, s) for s in stages)
        act = llm_activations(ecfg.llm, tokens=flops.tokens, mesh_shape=mesh)
        towers = 0.0
        if ecfg.vision is not None and int(data.video.get("frames", 0) or 0):
            steps = int(data.video.frames) // ecfg.vision.tubelet_size
            towers = max(towers, tower_bytes_per_row(ecfg.vision, inputs=clips * steps, tokens=ecfg.vision.num_tokens))
        if ecfg.audio is not None and int(data.audio.get("frames", 0) or 0):
            towers = max(towers, tower_bytes_per_row(ecfg.audio, inputs=clips * ecfg.audio_windows,
                                                     tokens=ecfg.audio.num_tokens))
        out.append(TargetPlan(
            target=target, stage=PLANNED_STAGE, state=states[stages.index(PLANNED_STAGE)], stages=states,
            gathered_bytes=gathered_weight_bytes(leaves, ecfg, mesh), activations=act, tower_bytes_per_row=towers,
            flops=flops, reserve=reserve, mfu=target.reference.mfu if mfu is None else mfu,
            mfu_source=target.reference.what if mfu is None else "--mfu (an assumption)",
            recipe_batch=recipe_batch, rows_to_train=rows_to_train))
    return Plan(config_name=config_name, stage=PLANNED_STAGE, param_count=out[0].state.param_count if out else 0,
                llm=ecfg.llm, targets=tuple(out))


__all__ = ["PLANNED_STAGE", "Plan", "TargetPlan", "gathered_weight_bytes", "plan_targets"]
