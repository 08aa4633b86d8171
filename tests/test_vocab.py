"""models.vocab.resize_vocab: new rows are the mean of the old, the old tokens' logits are untouched."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from merg_jax.models.vocab import resize_vocab
from tests.llm_testing import random_tokens, tiny_model


@pytest.mark.parametrize("tie", [True, False])
def test_resize_keeps_old_rows_and_adds_mean_rows(tie):
    model = tiny_model(tie_embeddings=tie, lora_rank=2)
    old_vocab = model.cfg.vocab_size
    tokens = random_tokens(0, 2, 9, old_vocab)
    before = np.asarray(model(tokens))
    grown = resize_vocab(model, old_vocab + 7)
    assert grown.cfg.vocab_size == old_vocab + 7
    emb_old, emb_new = np.asarray(model.embed.embedding[...]), np.asarray(grown.embed.embedding[...])
    np.testing.assert_array_equal(emb_new[:old_vocab], emb_old)
    np.testing.assert_allclose(emb_new[old_vocab:], np.broadcast_to(emb_old.mean(0), (7, emb_old.shape[1])),
                               rtol=1e-6)
    after = np.asarray(grown(tokens))
    assert after.shape == (2, 9, old_vocab + 7)
    np.testing.assert_allclose(after[..., :old_vocab], before, atol=1e-5)
    # a new token's logit is the mean of the old tokens' logits (a linear head over the mean row/column)
    np.testing.assert_allclose(after[..., old_vocab:], np.repeat(before.mean(-1, keepdims=True), 7, -1),
                               atol=1e-4)
    # the new ids embed as the mean row and run
    assert np.isfinite(np.asarray(grown(jax.numpy.full((1, 3), old_vocab + 6)))).all()
    # LoRA adapters come along untouched
    np.testing.assert_array_equal(np.asarray(grown.layers.attn.q_proj.lora_a[...]),
                                  np.asarray(model.layers.attn.q_proj.lora_a[...]))
    assert resize_vocab(model, old_vocab) is model
    with pytest.raises(ValueError, match="smaller"):
        resize_vocab(model, old_vocab - 1)


def test_resize_on_a_mesh_shards_the_new_table():
    from merg_jax.sharding import create_sharded, make_mesh

    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    mesh = make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    from merg_jax.models import Llm
    from tests.llm_testing import tiny_config

    cfg = tiny_config(vocab_size=96, tie_embeddings=False)
    model = create_sharded(lambda: Llm(cfg, rngs=nnx.Rngs(0)), mesh)
    grown = resize_vocab(model, 128)
    assert grown.embed.embedding[...].sharding.spec == model.embed.embedding[...].sharding.spec
    assert grown.lm_head.kernel[...].shape == (cfg.hidden_size, 128)
