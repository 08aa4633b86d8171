"""Logical axis names and the one rule table that maps them onto mesh axes.

Models name the *logical* axes of every parameter (through `merg_jax.models.layers.param`) and of the
activations they constrain (`constrain`). Nothing in a model names a mesh axis: this table alone decides the
layout, MaxText-style, so a new mesh shape or strategy is a change here, not in model code.

Mesh axes: `data` (pure data parallel), `fsdp` (data parallel with parameters sharded over it, ZeRO-3 style),
`tensor` (Megatron tensor parallel: heads and MLP columns).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import jax
from jax.sharding import NamedSharding, PartitionSpec

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

DEFAULT_RULES: Rules = (
    # activations
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    # batch and kv heads merged into one axis, batch major (the KV cache's rows): the mesh axes split it in this
    # order, so whole batch rows go to data/fsdp and, with one row per shard, tensor splits the heads
    ("act_batch_kv_heads", ("data", "fsdp", "tensor")),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    # parameters
    ("layers", None),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),  # flattened heads*head_dim of q and o projections
    ("kv_heads", "tensor"),  # flattened kv_heads*head_dim of k and v projections
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("lora_rank", None),
    ("norm", None),
)

_active_rules: list[Rules] = [DEFAULT_RULES]


def current_rules() -> Rules:
    return _active_rules[-1]


@contextlib.contextmanager
def use_rules(rules: Rules | Sequence[Sequence]) -> Iterator[None]:
    """Overrides the rule table inside the context (e.g. from `config.sharding.rules`)."""
    _active_rules.append(normalize_rules(rules))
    try:
        yield
    finally:
        _active_rules.pop()


def normalize_rules(rules) -> Rules:
    out = []
    for rule in rules:
        if len(rule) != 2:
            raise ValueError(f"sharding rule {rule!r} must be a (logical_name, mesh_axes) pair")
        name, axes = rule
        if isinstance(axes, list):
            axes = tuple(axes)
        out.append((str(name), axes))
    return tuple(out)


def _axis_size(mesh_shape: dict[str, int], axes: MeshAxes) -> int:
    if axes is None:
        return 1
    if isinstance(axes, str):
        axes = (axes,)
    return math.prod(mesh_shape.get(a, 1) for a in axes)


def logical_to_spec(
    names: Sequence[str | None] | None,
    *,
    shape: Sequence[int] | None = None,
    mesh_shape: dict[str, int] | None = None,
    rules: Rules | None = None,
) -> PartitionSpec:
    """Maps logical axis names to a `PartitionSpec`.

    A mesh axis is used at most once per spec (the first logical axis that claims it wins). When `shape` and
    `mesh_shape` are given, a dimension that the mesh axes do not divide is replicated instead (e.g. one KV
    head on a 2-way tensor mesh): that is always correct, only less sharded, and it keeps tiny test configs and
    odd head counts working on any mesh.
    """
    if names is None:
        return PartitionSpec()
    rules = current_rules() if rules is None else rules
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for i, name in enumerate(names):
        axes = table.get(name) if name is not None else None
        if name is not None and name not in table:
            raise KeyError(f"logical axis {name!r} has no rule in the sharding rule table {sorted(table)}")
        if axes is not None:
            axes_t = (axes,) if isinstance(axes, str) else tuple(axes)
            if mesh_shape is not None:
                axes_t = tuple(a for a in axes_t if a in mesh_shape and mesh_shape[a] > 1)
            axes_t = tuple(a for a in axes_t if a not in used)
            if shape is not None and mesh_shape is not None and shape[i] % _axis_size(mesh_shape, axes_t) != 0:
                axes_t = ()
            used.update(axes_t)
            axes = None if not axes_t else (axes_t[0] if len(axes_t) == 1 else axes_t)
        spec.append(axes)
    return PartitionSpec(*spec)


def _mesh_shape(mesh) -> dict[str, int]:
    return dict(zip(mesh.axis_names, mesh.axis_sizes if hasattr(mesh, "axis_sizes") else mesh.devices.shape))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """`with_sharding_constraint` by logical names; a no-op when no mesh is set (`jax.set_mesh`)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    spec = logical_to_spec(names, shape=x.shape, mesh_shape=_mesh_shape(mesh))
    return jax.lax.with_sharding_constraint(x, spec)


def named_sharding(mesh: jax.sharding.Mesh, names, shape=None) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names, shape=shape, mesh_shape=_mesh_shape(mesh)))


def state_shardings(abstract_state, mesh: jax.sharding.Mesh):
    """NamedShardings for an (abstract) `nnx.State`, from each variable's logical `out_sharding` names."""
    from flax import nnx

    def one(var):
        names = var.get_metadata().get("out_sharding") if isinstance(var, nnx.Variable) else None
        shape = var.shape if hasattr(var, "shape") else None
        return var.replace(named_sharding(mesh, names, shape)) if isinstance(var, nnx.Variable) else (
            NamedSharding(mesh, PartitionSpec()))

    return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
