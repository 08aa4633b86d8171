"""The jitted update of one training stage: gradient accumulation, a non-finite guard, one optax update.

    model_def, trainable, frozen = split_for_stage(model, stage_filter)
    step = make_train_step(stage, model_def, tx, accum_steps=2, targets=targets)
    trainable, opt_state, metrics = step(trainable, frozen, opt_state, batch, rng)

The model is split into the parameters the stage trains (`trainable`, an `nnx.State`, donated and updated) and
everything else (`frozen`, read only). The batch `[B, ...]` is cut into `accum_steps` micro-batches of rows
`a, a + A, a + 2A, ...` (so each micro-batch keeps the batch's sharding over devices); their gradients are summed,
each weighted by its `StageLoss.weight` (tokens for the LM loss), and divided by the total weight, so the update
equals the full batch's. A step whose loss or gradient norm is not finite changes nothing (parameters and
optimiser state are selected back bit for bit) and reports `finite = 0`; the loop counts those and stops after
too many in a row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from merg_jax.train.stages import Stage, StageLoss


def split_for_stage(model: nnx.Module, trainable_filter) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, the parameters `trainable_filter` selects, everything else)."""
    return nnx.split(model, trainable_filter, ...)


def _micro_batches(batch: Mapping[str, Any], accum: int) -> dict[str, jax.Array]:
    """`[B, ...]` → `[A, B/A, ...]` holding rows a, a+A, ... in micro-batch a."""

    def cut(x):
        x = jnp.asarray(x)
        if x.shape[0] % accum:
            raise ValueError(f"train.accum_steps={accum} does not divide the batch of {x.shape[0]} rows")
        return jnp.moveaxis(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 1, 0)

    return {k: cut(v) for k, v in batch.items()}


def make_train_step(stage: Stage, graphdef: nnx.GraphDef, tx: optax.GradientTransformation, *, accum_steps: int = 1,
                    targets=None, donate: bool = True):
    """The jitted `step(trainable, frozen, opt_state, batch, rng) -> (trainable, opt_state, metrics)`.

    metrics: loss, weight, grad_norm (before clipping), finite (1.0 / 0.0) and the stage's own metrics, averaged
    over micro-batches by weight. rng: a dropout key, or None.
    """
    accum = int(accum_steps)
    if accum < 1:
        raise ValueError(f"train.accum_steps={accum_steps} must be >= 1")

    def weighted_loss(trainable, frozen, micro, rng):
        model = nnx.merge(graphdef, trainable, frozen)
        out: StageLoss = stage.loss(model, micro, rng, targets)
        return out.loss * out.weight, out

    grad_fn = jax.value_and_grad(weighted_loss, has_aux=True)

    def step(trainable, frozen, opt_state, batch, rng):
        if accum == 1:
            (_, out), grads = grad_fn(trainable, frozen, batch, rng)
            total = out.weight
            loss = out.loss
            metrics = out.metrics
            grads = jax.tree.map(lambda g: g / jnp.maximum(total, 1e-9), grads)
        else:
            micro = _micro_batches(batch, accum)

            def body(carry, xs):
                g_sum, l_sum, w_sum, m_sum = carry
                mb, a = xs
                r = None if rng is None else jax.random.fold_in(rng, a)
                (_, out), g = grad_fn(trainable, frozen, mb, r)
                m_sum = jax.tree.map(lambda s, m: s + m * out.weight, m_sum, out.metrics)
                return (jax.tree.map(jnp.add, g_sum, g), l_sum + out.loss * out.weight, w_sum + out.weight,
                        m_sum), None

            first = jax.tree.map(lambda x: x[0], micro)
            shapes = jax.eval_shape(lambda: stage.loss(nnx.merge(graphdef, trainable, frozen), first, rng,
                                                       targets).metrics)
            zeros_m = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes)
            zeros_g = jax.tree.map(jnp.zeros_like, trainable)
            (g_sum, l_sum, total, m_sum), _ = jax.lax.scan(
                body, (zeros_g, jnp.zeros(()), jnp.zeros(()), zeros_m), (micro, jnp.arange(accum)))
            denom = jnp.maximum(total, 1e-9)
            grads = jax.tree.map(lambda g: g / denom, g_sum)
            loss = l_sum / denom
            metrics = jax.tree.map(lambda m: m / denom, m_sum)
        grad_norm = optax.tree_utils.tree_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt_state = tx.update(grads, opt_state, trainable)
        new_trainable = optax.apply_updates(trainable, updates)
        # Select, not multiply: a skipped step leaves parameters and moments bit-identical.
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        trainable = jax.tree.map(keep, new_trainable, trainable)
        opt_state = jax.tree.map(keep, new_opt_state, opt_state)
        out = {"loss": loss, "weight": total, "grad_norm": grad_norm, "finite": finite.astype(jnp.float32),
               **metrics}
        return trainable, opt_state, out

    return jax.jit(step, donate_argnums=(0, 2) if donate else ())


def make_eval_step(stage: Stage, graphdef: nnx.GraphDef, *, targets=None):
    """The jitted `evaluate(trainable, frozen, batch) -> {loss, weight, **metrics}` (no dropout, no update)."""

    def evaluate(trainable, frozen, batch):
        out = stage.loss(nnx.merge(graphdef, trainable, frozen), batch, None, targets)
        return {"loss": out.loss, "weight": out.weight, **out.metrics}

    return jax.jit(evaluate)


__all__ = ["make_eval_step", "make_train_step", "split_for_stage"]
