"""Per-device bytes of the model state — parameters, optimiser moments, gradients — from the REAL sharding rules.

    model = abstract_model(config)                        # nnx.eval_shape: shapes only, no memory
    leaves = sharded_leaves(model, {"data": 1, "fsdp": 64, "tensor": 1})
    s = stage_state(config, model, leaves, "coe")         # StageState: bytes per device of each part

Every variable's logical axis names (`out_sharding`, set by `merg_jax.models.layers.param`) go through the one rule
table (`merg_jax.sharding.rules.logical_to_spec` with the target's mesh shape, as the trainer places them): a
dimension is split over the mesh axes its rule names when they divide it, else replicated. A leaf's bytes per
device are its bytes over the product of the mesh axis sizes in its PartitionSpec; no device is needed.

Only what a stage trains (`config.stage.<name>.groups`, default `param_groups.STAGES`) has a gradient and Adam
moments; the frozen rest is parameters alone. The moments are counted on the real optimiser
(`merg_jax.train.optimizer.make_optimizer`, `jax.eval_shape` of its `init`), each sharded like its parameter, as the
rule table intends. (Today the trainer's `jax.jit(tx.init)(trainable)` gets them back replicated — XLA does not carry
a sharding through `zeros_like` — which for stage a's 16.8M LoRA and projection weights costs 134 MB per device;
`out_shardings` on that jit would give the counted layout.)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec

from merg_jax.models.param_groups import group_filter, group_of
from merg_jax.sharding.rules import logical_to_spec


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One variable of the model: where it lives, its logical names and what the rule table makes of them."""

    path: tuple[str, ...]
    group: str  # param_groups group ("" for a non-parameter variable)
    shape: tuple[int, ...]
    dtype: str
    names: tuple[str | None, ...] | None
    spec: PartitionSpec
    shards: int  # product of the mesh axis sizes the spec splits over

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.count * np.dtype(self.dtype).itemsize

    @property
    def bytes_per_device(self) -> float:
        return self.nbytes / self.shards


def spec_shards(spec: PartitionSpec, mesh_shape: Mapping[str, int]) -> int:
    """How many pieces a PartitionSpec cuts an array into: the product of the sizes of the mesh axes it names."""
    n = 1
    for axes in spec:
        for axis in (axes,) if isinstance(axes, str) else (axes or ()):
            n *= int(mesh_shape.get(axis, 1))
    return n


def abstract_model(config) -> nnx.Module:
    """The config's Empatheia, built with `nnx.eval_shape` (as `merg-jax describe-model` and the trainer's
    `abstract_model` do): every parameter a ShapeDtypeStruct carrying its logical axis names."""
    from merg_jax.models.empatheia import Empatheia, EmpatheiaConfig

    if "empatheia" not in config:
        raise ValueError("merg-jax plan: the config has no `empatheia` section (plan an Empatheia recipe, e.g. "
                         "configs/empatheia_7b.py)")
    cfg = EmpatheiaConfig.from_config(config)
    return nnx.eval_shape(lambda: Empatheia(cfg, rngs=nnx.Rngs(0)))


def sharded_leaves(model: nnx.Module, mesh_shape: Mapping[str, int]) -> list[Leaf]:
    """Every variable of `model` with its PartitionSpec on a mesh of `mesh_shape` ({"data": 1, "fsdp": 64, ...})."""
    out = []
    for path, var in nnx.to_flat_state(nnx.state(model)):
        names = var.get_metadata().get("out_sharding")
        names = tuple(names) if names is not None else None
        spec = logical_to_spec(names, shape=var.shape, mesh_shape=dict(mesh_shape)) if names else PartitionSpec()
        group = group_of(path, var) if isinstance(var, nnx.Param) else ""
        out.append(Leaf(tuple(map(str, path)), group, tuple(var.shape), str(np.dtype(var.dtype)), names, spec,
                        spec_shards(spec, mesh_shape)))
    return out


def stage_settings_of(config, stage: str):
    """The trainer's settings of `stage` (`merg_jax.train.trainer.stage_settings`: `config.train` with
    `config.stage.<stage>` applied, `groups` defaulted) and the groups it trains."""
    from merg_jax.train.stages import STAGES
    from merg_jax.train.trainer import stage_groups, stage_settings

    settings = stage_settings(config, STAGES[stage])
    return settings, stage_groups(settings)


@dataclasses.dataclass(frozen=True)
class StageState:
    """Per-device bytes of the model state while one stage trains."""

    stage: str
    groups: tuple[str, ...]
    param_count: int  # every parameter of the model
    trainable_count: int
    params_bytes: float  # every parameter (frozen ones too), per device
    trainable_bytes: float  # the trained ones (part of params_bytes), per device
    optimizer_bytes: float  # Adam's moments and counters, per device
    gradient_bytes: float  # one gradient per trained parameter (two with accumulation: the sum and the micro-batch)

    @property
    def total_bytes(self) -> float:
        return self.params_bytes + self.optimizer_bytes + self.gradient_bytes


def path_names(path) -> tuple[str, ...]:
    """A pytree key path as plain names, without the trailing `.value` of an nnx Variable."""
    out = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                out.append(str(getattr(key, attr)))
                break
    while out and out[-1] in ("value", "raw_value"):
        out.pop()
    return tuple(out)


def optimizer_bytes(config, stage: str, model: nnx.Module, leaves: Sequence[Leaf]) -> float:
    """Per-device bytes of the real optimiser's state for what `stage` trains: each moment sharded like the
    parameter it belongs to (matched by path), counters and other scalars on every device."""
    from merg_jax.train.optimizer import make_optimizer

    settings, groups = stage_settings_of(config, stage)
    trainable = nnx.state(model, group_filter(*groups))
    opt = jax.eval_shape(make_optimizer(settings).init, trainable)
    by_path = {leaf.path: leaf for leaf in leaves}
    total = 0.0
    for path, x in jax.tree_util.tree_flatten_with_path(opt)[0]:
        leaf = moment_owner(path, tuple(x.shape), by_path)
        nbytes = math.prod(x.shape) * np.dtype(x.dtype).itemsize
        total += nbytes / leaf.shards if leaf is not None else nbytes
    return total


def moment_owner(path, shape: tuple[int, ...], by_path: Mapping[tuple[str, ...], Any]):
    """The entry of `by_path` (keyed by parameter path) an optimiser-state leaf belongs to: its path ends in the
    parameter's (…, "mu", *P), with the same shape; None for counters and other scalars."""
    names = path_names(path)
    for i in range(len(names)):
        owner = by_path.get(names[i:])
        if owner is not None:
            return owner if tuple(getattr(owner, "shape", shape)) == tuple(shape) else None
    return None


def stage_state(config, model: nnx.Module, leaves: Sequence[Leaf], stage: str) -> StageState:
    """What one stage keeps on every device: all parameters, and for the trained groups a gradient and the
    optimiser's moments."""
    settings, groups = stage_settings_of(config, stage)
    params = [leaf for leaf in leaves if leaf.group]
    trained = [leaf for leaf in params if leaf.group in groups]
    trainable_bytes = sum(leaf.bytes_per_device for leaf in trained)
    accum = int(settings.get("accum_steps", 1) or 1)
    return StageState(
        stage=stage, groups=groups,
        param_count=sum(leaf.count for leaf in params), trainable_count=sum(leaf.count for leaf in trained),
        params_bytes=sum(leaf.bytes_per_device for leaf in leaves),  # non-parameter variables too (buffers)
        trainable_bytes=trainable_bytes,
        optimizer_bytes=optimizer_bytes(config, stage, model, leaves),
        gradient_bytes=trainable_bytes * (2 if accum > 1 else 1))


__all__ = ["Leaf", "StageState", "abstract_model", "moment_owner", "optimizer_bytes", "path_names", "sharded_leaves",
           "spec_shards", "stage_settings_of", "stage_state"]
