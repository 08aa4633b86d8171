"""The scatter-free cross-entropy against optax's (the independent reference): values and gradients."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

from merg_jax.kernels.cross_entropy import cross_entropy_with_integer_labels


def test_value_and_gradient_match_optax():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(3, 5, 37)) * 4, jnp.float32)
    labels = jnp.asarray(rng.integers(0, 37, (3, 5)), jnp.int32)
    weights = jnp.asarray(rng.random((3, 5)), jnp.float32)

    def ours(x):
        return jnp.sum(cross_entropy_with_integer_labels(x, labels) * weights)

    def ref(x):
        return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(x, labels) * weights)

    np.testing.assert_allclose(cross_entropy_with_integer_labels(logits, labels),
                               optax.softmax_cross_entropy_with_integer_labels(logits, labels), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(jax.grad(ours)(logits), jax.grad(ref)(logits), rtol=1e-5, atol=1e-6)
    # bfloat16 logits are promoted: the loss is float32 and close to the float32 one.
    ce16 = cross_entropy_with_integer_labels(logits.astype(jnp.bfloat16), labels)
    assert ce16.dtype == jnp.float32
    np.testing.assert_allclose(ce16, optax.softmax_cross_entropy_with_integer_labels(logits, labels), atol=0.1)


def test_the_gradient_has_no_scatter():
    """The point of the function: its backward pass is elementwise (optax's scatters into [N, V])."""
    logits = jnp.zeros((64, 500), jnp.float32)
    labels = jnp.zeros((64,), jnp.int32)
    ours = jax.jit(jax.grad(lambda x: cross_entropy_with_integer_labels(x, labels).sum()))
    ref = jax.jit(jax.grad(lambda x: optax.softmax_cross_entropy_with_integer_labels(x, labels).sum()))
    def scatters(fn):  # scatter instructions in the compiled program (not names in its metadata)
        return len(re.findall(r" scatter\(", fn.lower(logits).compile().as_text()))

    assert scatters(ours) == 0
    assert scatters(ref) > 0  # the check itself can see a scatter
