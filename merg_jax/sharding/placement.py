"""Placing model state on a mesh by the rule table: sharded initialisation (no full copy on one device)
and re-placement of an existing model."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import jax
from flax import nnx

from merg_jax.sharding.rules import state_shardings

M = TypeVar("M", bound=nnx.Module)


def create_sharded(constructor: Callable[[], M], mesh: jax.sharding.Mesh) -> M:
    """Builds `constructor()` with every parameter created directly in its shard (jit with out_shardings)."""
    graphdef, abstract_state = nnx.split(nnx.eval_shape(constructor))
    shardings = state_shardings(abstract_state, mesh)

    @jax.jit
    def init():
        return jax.lax.with_sharding_constraint(nnx.state(constructor()), shardings)

    with jax.set_mesh(mesh):
        state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def shard_model(model: nnx.Module, mesh: jax.sharding.Mesh) -> nnx.Module:
    """Moves an existing model's state onto `mesh` per the rule table (in place; also returned)."""
    state = nnx.state(model)
    nnx.update(model, jax.device_put(state, state_shardings(state, mesh)))
    return model
