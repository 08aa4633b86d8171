"""`merg_jax.bench.matmul_floor`: every layout it times computes the product it stands for (against NumPy), and the
products it lists for a training step are PaLM's FLOP count by hand (`bench llm`'s floor is tested end to end in
tests/test_bench.py)."""

import importlib.util

import numpy as np
import pytest

from merg_jax.bench.matmul_floor import Product, jax_matmul, layouts, stored_shapes, torch_matmul, train_products
from merg_jax.models.llm_config import LlmConfig

HAS_TORCH = importlib.util.find_spec("torch") is not None


@pytest.mark.parametrize("batch", [1, 3])
def test_every_layout_computes_the_product(batch):
    p = Product("x", 5, 7, 4, batch=batch)
    found = set(layouts(p))
    assert len(found) == 8 and {(m, n) for m, _, n, _, _ in found} == {(5, 4), (4, 5)}
    rng = np.random.default_rng(0)
    for m, k, n, a_t, b_t in found:
        lead = (batch,) if batch > 1 else ()
        a, b = rng.standard_normal((*lead, m, k)), rng.standard_normal((*lead, k, n))
        want = a @ b
        stored_a = np.swapaxes(a, -1, -2).copy() if a_t else a
        stored_b = np.swapaxes(b, -1, -2).copy() if b_t else b
        assert (stored_a.shape, stored_b.shape) == stored_shapes(m, k, n, a_t, b_t, batch)
        got = jax_matmul(a_t, b_t, batch > 1)(stored_a.astype(np.float32), stored_b.astype(np.float32))
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, err_msg=str((m, k, n, a_t, b_t)))
        if HAS_TORCH:
            import torch

            got = torch_matmul(torch.from_numpy(stored_a), torch.from_numpy(stored_b), a_t, b_t)
            np.testing.assert_allclose(got.numpy(), want, atol=1e-10)


def test_the_step_products_are_palms_count_by_hand():
    # hidden 96, 3 q heads and 1 kv head of 32, MLP 200, vocab 300, 2 layers; batch 2 x 24 tokens
    cfg = LlmConfig(vocab_size=300, hidden_size=96, num_layers=2, num_heads=3, num_kv_heads=1, head_dim=32,
                    intermediate_size=200, max_position_embeddings=64)
    d, f, v, h, kv, hd, layers, b, length = 96, 200, 300, 3, 1, 32, 2, 2, 24
    t = b * length
    weights = layers * (d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * f) + d * v  # the LM head included
    products = train_products(cfg, b, length)
    assert sum(p.flops for p in products) == 6 * weights * t + 12 * layers * h * hd * length * t
    # q and o are 96 -> 96 here: their forward and gradient products share shapes and are timed once
    assert sum(p.count for p in products) == 3 * (7 * layers + 1) + 6 * layers
    assert len({(p.m, p.k, p.n, p.batch) for p in products}) == len(products)
    attention = [p for p in products if p.name.startswith("attention")]
    assert {(p.m, p.k, p.n, p.batch, p.count) for p in attention} == {
        (length, hd, length, b * h, 2 * layers), (length, length, hd, b * h, 4 * layers)}


def test_causal_query_blocks_take_a_quarter_off_the_attention_products():
    # from 128 tokens the causal core runs 2 query blocks: the second meets every key, the first only its own half
    cfg = LlmConfig(vocab_size=300, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=2, head_dim=32,
                    intermediate_size=128, max_position_embeddings=512)
    b, length, h, hd, layers = 1, 256, 2, 32, 2
    attention = [p for p in train_products(cfg, b, length) if p.name.startswith("attention")]
    palm = 12 * layers * h * hd * length * (b * length)
    assert sum(p.flops for p in attention) == palm * 3 / 4
    assert {(p.m, p.k, p.n, p.count) for p in attention} == {
        (128, hd, 128, 2 * layers), (128, 128, hd, 4 * layers),   # block 1: 128 queries x 128 keys
        (128, hd, 256, 2 * layers), (128, 256, hd, 2 * layers), (256, 128, hd, 2 * layers)}  # block 2
