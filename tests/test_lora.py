"""LoRA adapters: equal to the base model at start, merge exactly, dropout only with an rng."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llm_testing import copy_params, random_tokens, tiny_model


def _randomize_lora_b(model, seed=0):
    state = nnx.state(model, nnx.LoRAParam)
    keys = iter(jax.random.split(jax.random.key(seed), 64))
    state = jax.tree.map(lambda x: 0.1 * jax.random.normal(next(keys), x.shape, x.dtype), state)
    nnx.update(model, state)


def test_adapted_model_equals_base_at_initialisation():
    base = tiny_model(seed=0)
    adapted = copy_params(base, tiny_model(seed=1, lora_rank=4, lora_targets=("q", "k", "v", "o", "up")))
    lora_leaves = jax.tree.leaves(nnx.state(adapted, nnx.LoRAParam))
    assert len(lora_leaves) == 2 * 5  # A and B for 5 projections (stacked over layers)
    assert any(float(jnp.abs(x).max()) > 0 for x in lora_leaves)  # A is random, B is zero
    tokens = random_tokens(0, 2, 9, base.cfg.vocab_size)
    np.testing.assert_array_equal(adapted(tokens), base(tokens))


def test_merged_and_unmerged_give_the_same_logits():
    model = tiny_model(seed=2, lora_rank=4, lora_targets=("q", "v", "o", "down"))
    _randomize_lora_b(model)
    tokens = random_tokens(1, 2, 9, model.cfg.vocab_size)
    unmerged = model(tokens)
    base = copy_params(model, tiny_model(seed=3))  # the base weights alone differ from the adapted model
    assert float(jnp.abs(base(tokens) - unmerged).max()) > 1e-3
    model.merge_lora()
    np.testing.assert_allclose(model(tokens), unmerged, atol=1e-5)
    assert all(float(jnp.abs(b).max()) == 0 for b in jax.tree.leaves(nnx.state(model, nnx.LoRAParam))
               if b.shape[-2] == 4)  # every B (rank on its second-to-last axis) is zero after merging


def test_lora_dropout_only_with_an_rng():
    model = tiny_model(seed=4, lora_rank=4, lora_dropout=0.5)
    _randomize_lora_b(model)
    tokens = random_tokens(2, 1, 6, model.cfg.vocab_size)
    a = model.forward(tokens, dropout_rng=jax.random.key(0)).logits
    b = model.forward(tokens, dropout_rng=jax.random.key(1)).logits
    assert float(jnp.abs(a - b).max()) > 1e-4
    np.testing.assert_array_equal(model(tokens), model(tokens))


def test_lora_gradients_flow_only_into_the_adapters_when_asked():
    model = tiny_model(seed=5, lora_rank=4)
    tokens = random_tokens(3, 2, 8, model.cfg.vocab_size)

    def loss(m):
        return jnp.mean(m(tokens) ** 2)

    grads = nnx.grad(loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(model)
    kinds = {type(v) for v in jax.tree.leaves(grads, is_leaf=lambda x: isinstance(x, nnx.Variable))}
    assert kinds == {nnx.LoRAParam}
    # B starts at zero, so A's gradient is zero at step 0 and B's is not.
    flat = dict(nnx.to_flat_state(grads))
    b_grad = flat[("layers", "attn", "q_proj", "lora_b")][...]
    assert float(jnp.abs(b_grad).max()) > 0
