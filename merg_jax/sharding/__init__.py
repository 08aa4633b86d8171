"""Meshes, the logical-axis rule table and multi-host start-up."""

from merg_jax.sharding.distributed import initialize, is_multiprocess_env
from merg_jax.sharding.placement import create_sharded, shard_model
from merg_jax.sharding.mesh import AXES, make_mesh, parse_mesh_flag, resolve_axis_sizes, single_device_mesh
from merg_jax.sharding.rules import (
    DEFAULT_RULES,
    constrain,
    current_rules,
    logical_to_spec,
    named_sharding,
    state_shardings,
    use_rules,
)

__all__ = [
    "AXES", "DEFAULT_RULES", "constrain", "create_sharded", "shard_model", "current_rules", "initialize", "is_multiprocess_env",
    "logical_to_spec", "make_mesh", "parse_mesh_flag", "named_sharding", "resolve_axis_sizes", "single_device_mesh",
    "state_shardings", "use_rules",
]
