"""The language-model loss and the jitted training step.

The step takes the model, its `nnx.Optimizer` (which knows the trainable parameters: `optimizer.wrt`) and a
batch (`merg_jax.train.batching.BATCH_KEYS`), differentiates the masked next-token cross-entropy with respect to
the trainable parameters only, and applies one optimiser update in place. Run it under `jax.set_mesh(mesh)` with
the model and batch already placed on that mesh: the step follows their shardings.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jaxtyping import Array, Float, Int

from merg_jax.kernels.cross_entropy import cross_entropy_with_integer_labels
from merg_jax.models import Llm


def lm_loss(logits: Float[Array, "B L V"], targets: Int[Array, "B L"],
            loss_mask: Float[Array, "B L"]) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """Mean next-token cross-entropy over the masked positions, in float32. Returns (loss, number of tokens)."""
    ce = cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    w = loss_mask.astype(jnp.float32)
    n = jnp.sum(w)
    return jnp.sum(ce * w) / jnp.maximum(n, 1.0), n


def batch_loss(model: Llm, batch: dict[str, Any], dropout_rng: jax.Array | None = None):
    out = model.forward(batch["tokens"], positions=batch.get("positions"), segment_ids=batch.get("segment_ids"),
                        dropout_rng=dropout_rng)
    return lm_loss(out.logits, batch["targets"], batch["loss_mask"])


def _train_step(model: Llm, optimizer: nnx.Optimizer, batch: dict[str, Any],
                dropout_rng: jax.Array | None = None) -> dict[str, jax.Array]:
    def loss_fn(m):
        return batch_loss(m, batch, dropout_rng)

    (loss, num_tokens), grads = nnx.value_and_grad(
        loss_fn, argnums=nnx.DiffState(0, optimizer.wrt), has_aux=True)(model)
    grad_norm = optax.tree_utils.tree_norm(grads)
    optimizer.update(model, grads)
    return {"loss": loss, "grad_norm": grad_norm, "num_tokens": num_tokens}


# Model and optimizer state are donated: updated in place, no second copy of the weights and Adam moments.
train_step = nnx.jit(_train_step, donate_argnums=(0, 1))
train_step.__doc__ = """One optimiser step, jitted: returns {loss, grad_norm (before clipping), num_tokens}."""


@nnx.jit
def eval_loss(model: Llm, batch: dict[str, Any]) -> jax.Array:
    """The masked LM loss of a batch, no update."""
    return batch_loss(model, batch)[0]
