"""Cross-entropy with integer labels whose backward pass is one fused elementwise program.

`optax.softmax_cross_entropy_with_integer_labels` picks the label's logit with `take_along_axis`, whose gradient
is a scatter into a zero `[..., V]` array: XLA:CPU runs that scatter element by element (the whole gradient of a
33.5M-parameter model's loss took ~10% of its step in it). Here the label's logit is a masked sum over the
vocabulary, so the gradient, `softmax(logits) - one_hot(label)`, fuses into one pass over `[N, V]`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def cross_entropy_with_integer_labels(logits: Float[Array, "... V"],
                                      labels: Int[Array, "..."]) -> Float[Array, "..."]:
    """−log softmax(logits)[label] in float32, per position (labels must lie in [0, V))."""
    logits = logits.astype(jnp.float32)
    vocab = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    label_logit = jnp.sum(jnp.where(vocab == labels[..., None].astype(jnp.int32), logits, 0.0), axis=-1)
    return jax.nn.logsumexp(logits, axis=-1) - label_logit
