"""RoPE tables and rotation against a naive NumPy reference; the tables stay batch-sharded; made once per step."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from llm_testing import random_tokens, tiny_model
from merg_jax.models.rope import LOOP_MIN_LENGTH, apply_rope, inverse_frequencies, rope_tables
from merg_jax.sharding import make_mesh

needs_8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (tests/conftest.py sets XLA_FLAGS)")


def naive_rope(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """Pair (i, i + K/2) of every head rotated by positions × theta^(-2i/K), one pair at a time, in float64."""
    k = x.shape[-1]
    out = np.empty(x.shape, np.float64)
    for i in range(k // 2):
        angle = positions[:, :, None] * theta ** (-2.0 * i / k)  # [B, L, 1]
        a, b = x[..., i], x[..., i + k // 2]
        out[..., i] = a * np.cos(angle) - b * np.sin(angle)
        out[..., i + k // 2] = b * np.cos(angle) + a * np.sin(angle)
    return out


@pytest.mark.parametrize("length", [1, LOOP_MIN_LENGTH - 1, LOOP_MIN_LENGTH, 40])
def test_rotation_matches_the_naive_pairwise_one(length):
    """Both ways of making the tables: fused for short chunks, a loop over the frequencies for long ones."""
    rng = np.random.default_rng(length)
    x = rng.standard_normal((2, length, 3, 16)).astype(np.float32)
    positions = rng.integers(0, 2000, (2, length))  # arbitrary, as packing and the KV cache give them
    cos, sin = rope_tables(jnp.asarray(positions), inverse_frequencies(16, 10000.0), jnp.float32)
    assert cos.shape == sin.shape == (2, length, 1, 16)
    got = apply_rope(jnp.asarray(x), cos, sin)
    # float32 angles of up to 2,000 radians carry ~1e-4 of absolute error; the rotation itself is exact
    np.testing.assert_allclose(np.asarray(got), naive_rope(x, positions, 10000.0), atol=5e-4)


def test_tables_are_cast_to_the_compute_dtype():
    positions = jnp.arange(32).reshape(1, -1)
    cos, sin = rope_tables(positions, inverse_frequencies(8, 10000.0), jnp.bfloat16)
    assert cos.dtype == sin.dtype == jnp.bfloat16
    want = np.cos(np.arange(32)[:, None] * 10000.0 ** (-np.arange(0, 8, 2) / 8))
    np.testing.assert_allclose(np.asarray(cos[0, :, 0, :4], np.float32), want, atol=1e-2)


@needs_8
def test_loop_made_tables_stay_sharded_over_the_batch():
    """The loop runs over frequencies, so a batch-sharded `positions` gives batch-sharded tables (a loop over batch
    rows would gather them, and every device would hold all of them)."""
    mesh = make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    positions = jnp.arange(8 * 64).reshape(8, 64)
    make = jax.jit(lambda p: rope_tables(p, inverse_frequencies(16, 10000.0), jnp.float32))
    with jax.set_mesh(mesh):
        sharded = jax.device_put(positions, NamedSharding(mesh, P(("data", "fsdp"))))
        cos, sin = make(sharded)
        program = make.lower(sharded).compile().as_text()
    assert "all-gather" not in program and "f32[1,64,1,2,8]" in program  # each device loops over its own row
    for table in (cos, sin):
        assert table.addressable_shards[0].data.shape == (1, 64, 1, 16)
    np.testing.assert_allclose(np.asarray(cos), np.asarray(rope_tables(positions, inverse_frequencies(16, 10000.0),
                                                                       jnp.float32)[0]), atol=1e-5)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_the_training_step_computes_the_tables_once(scan_layers):
    """A performance property, read off the optimized HLO: cos is evaluated in one place (the loop over
    frequencies), not fused into each layer's rotation of q and k. At these sizes, tables made in one elementwise
    expression, even once per forward pass, were fused into all 16 consumers (4 layers × q, k × forward, backward)."""
    model = tiny_model(num_layers=4, scan_layers=scan_layers)
    tokens = random_tokens(0, 2, 24, model.cfg.vocab_size)
    hlo = nnx.jit(nnx.grad(lambda m, t: m(t).sum())).lower(model, tokens).compile().as_text()
    evaluations = re.findall(r"= f32\[[\d,]+\]\S* cosine\(", hlo)
    assert len(evaluations) == 1, evaluations
