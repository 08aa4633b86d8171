"""The optimiser of every training stage, from a `config.train` section.

AdamW (β1, β2, decoupled weight decay on matrices only) with global-norm clipping, and a learning rate that rises
linearly over the first `warmup_frac · steps` steps and then follows a cosine down to 0 at `steps`. Which
parameters it updates is the stage's choice (`trainable_filter`): everything, or only the LoRA adapters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

# Parameters whose name ends with one of these get no weight decay (norm scales and biases).
NO_DECAY_NAMES = ("scale", "bias")


def _get(train: Mapping[str, Any] | Any, key: str, default=None):
    try:
        return train[key]
    except (KeyError, TypeError, AttributeError):
        return getattr(train, key, default)


def warmup_steps(train) -> int:
    steps = int(_get(train, "steps"))
    return min(steps, int(round(float(_get(train, "warmup_frac", 0.0)) * steps)))


def make_schedule(train) -> optax.Schedule:
    """lr(s) = peak·(s+1)/W for s < W (so the first step already moves), then peak·½(1+cos(π(s−W)/(T−W))),
    reaching 0 at s = T."""
    peak = float(_get(train, "learning_rate"))
    total = int(_get(train, "steps"))
    warm = warmup_steps(train)
    decay = max(1, total - warm)

    def schedule(step):
        s = jnp.asarray(step, jnp.float32)
        up = peak * (s + 1.0) / max(1, warm)
        frac = jnp.clip((s - warm) / decay, 0.0, 1.0)
        down = peak * 0.5 * (1.0 + jnp.cos(math.pi * frac))
        return jnp.where(s < warm, up, down)

    return schedule


def decay_mask(params) -> Any:
    """True for the parameters that get weight decay: every one except norm scales and biases."""

    def one(path, _):
        last = path[-1]
        name = getattr(last, "key", getattr(last, "name", str(last)))
        return str(name) not in NO_DECAY_NAMES

    return jax.tree_util.tree_map_with_path(one, params)


def make_optimizer(train) -> optax.GradientTransformation:
    """Global-norm clipping (`grad_clip`, 0/None: off), then AdamW with the warmup–cosine schedule."""
    parts = []
    clip = _get(train, "grad_clip", None)
    if clip:
        parts.append(optax.clip_by_global_norm(float(clip)))
    parts.append(optax.adamw(make_schedule(train), b1=float(_get(train, "b1", 0.9)), b2=float(_get(train, "b2", 0.999)),
                             weight_decay=float(_get(train, "weight_decay", 0.0)), mask=decay_mask))
    return optax.chain(*parts)


def init_optimizer_state(tx: optax.GradientTransformation, params, mesh: jax.sharding.Mesh):
    """`tx.init(params)` with every per-parameter buffer (Adam's moments) sharded like its parameter.

    A plain `jax.jit(tx.init)` leaves the moments replicated on every device: XLA carries no sharding through
    `zeros_like`, so on an FSDP mesh each device would hold the whole optimiser state. Counters are replicated.
    """
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    abstract = jax.eval_shape(tx.init, params)
    shardings = optax.tree_map_params(tx, lambda _, p: p.sharding, abstract, params,
                                      transform_non_params=lambda _: replicated)
    return jax.jit(tx.init, out_shardings=shardings)(params)


def trainable_filter(lora_only: bool) -> type[nnx.Variable]:
    """`nnx.LoRAParam` (adapters only; the base weights stay bit-identical) or `nnx.Param` (everything,
    adapters included: `LoRAParam` is a `Param`)."""
    return nnx.LoRAParam if lora_only else nnx.Param
