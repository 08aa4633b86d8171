"""Every attention implementation against the naive reference, over randomised masks and shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from attention_cases import random_case, relative_error
from merg_jax.kernels import attention
from merg_jax.kernels.reference import reference_attention

IMPLS = {"xla": {}, "blockwise": {"block_sizes": (8, 16)}}


def _run(impl, case, q=None, k=None, v=None):
    kw = dict(case.kwargs, scale=case.scale, impl=impl, **IMPLS.get(impl, {}))
    return attention(case.q if q is None else q, case.k if k is None else k, case.v if v is None else v, **kw)


@pytest.mark.parametrize("impl", sorted(IMPLS))
@settings(max_examples=12, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000))
def test_float32_forward_and_gradients_match_reference(impl, seed):
    case = random_case(seed)
    cot = jax.random.normal(jax.random.key(seed + 1), case.q.shape[:3] + case.v.shape[-1:])

    @jax.jit
    def value_and_grads(q, k, v):
        ref, ref_vjp = jax.vjp(lambda q, k, v: reference_attention(q, k, v, case.info, case.scale), q, k, v)
        out, vjp = jax.vjp(lambda q, k, v: _run(impl, case, q, k, v), q, k, v)
        return out, ref, vjp(cot), ref_vjp(cot)

    out, ref, grads, ref_grads = value_and_grads(case.q, case.k, case.v)
    np.testing.assert_allclose(out, ref, atol=1e-5, err_msg=repr(case))
    # Rounding noise scales with the largest gradient of the three, so a gradient that is exactly zero (q and k
    # with one key per row) is judged against that scale (and never below 1e-2: every row may be masked).
    floor = 1e-2 * max([1.0] + [float(jnp.abs(g).max()) for g in ref_grads])
    for name, g, g_ref in zip("qkv", grads, ref_grads):
        assert np.isfinite(np.asarray(g)).all()
        assert relative_error(g, g_ref, floor) <= 1e-4, (name, case)


@pytest.mark.parametrize("impl", sorted(IMPLS))
@settings(max_examples=6, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000))
def test_bfloat16_matches_reference(impl, seed):
    case = random_case(seed, dtype=jnp.bfloat16)
    ref = reference_attention(case.q, case.k, case.v, case.info, case.scale)
    out = jax.jit(lambda q, k, v: _run(impl, case, q, k, v))(case.q, case.k, case.v)
    assert out.dtype == jnp.bfloat16
    assert relative_error(out, ref) <= 2e-2, case


@pytest.mark.parametrize("impl", ["reference"] + sorted(IMPLS))
def test_fully_masked_rows_give_zeros_in_value_and_gradient(impl):
    q = jax.random.normal(jax.random.key(0), (1, 6, 2, 8))
    k = jax.random.normal(jax.random.key(1), (1, 5, 2, 8))
    q_seg = jnp.array([[1, 1, 7, 7, 2, 2]])  # segment 7 has no keys
    kv_seg = jnp.array([[1, 1, 2, 2, 2]])

    def f(q, k, v):
        kw = IMPLS.get(impl, {})
        return attention(q, k, v, q_segment_ids=q_seg, kv_segment_ids=kv_seg, impl=impl, **kw)

    out, vjp = jax.vjp(f, q, k, k)
    assert np.isfinite(np.asarray(out)).all()
    np.testing.assert_array_equal(out[:, 2:4], 0.0)
    dq, dk, dv = vjp(jnp.ones_like(out))
    assert all(np.isfinite(np.asarray(g)).all() for g in (dq, dk, dv))
    np.testing.assert_array_equal(dq[:, 2:4], 0.0)


def test_argument_errors_name_the_argument():
    q = jnp.zeros((1, 4, 2, 8))
    with pytest.raises(ValueError, match="q_segment_ids given without kv_segment_ids"):
        attention(q, q[:, :3], q[:, :3], q_segment_ids=jnp.zeros((1, 4), int))
    with pytest.raises(ValueError, match="kv_positions has shape"):
        attention(q, q, q, causal=True, kv_positions=jnp.zeros((1, 3), int))
    with pytest.raises(ValueError, match="not a multiple of 3"):
        attention(q, jnp.zeros((1, 4, 3, 8)), jnp.zeros((1, 4, 3, 8)))
    with pytest.raises(ValueError, match="unknown impl"):
        attention(q, q, q, impl="magic")


@pytest.mark.parametrize("length,segments", [(256, False), (200, True), (128, True)])
def test_causal_query_blocks_match_reference(length, segments):
    """Plain causal masks take the blocked path (queries in blocks, each against the keys before its end)."""
    from merg_jax.kernels.dense import causal_query_block

    assert causal_query_block(length) < length  # the split is taken at these lengths
    keys = jax.random.split(jax.random.key(length), 4)
    q = jax.random.normal(keys[0], (2, length, 4, 16))
    k, v = (jax.random.normal(kk, (2, length, 2, 16)) for kk in keys[1:3])
    cot = jax.random.normal(keys[3], q.shape)
    seg = jnp.asarray(np.repeat([[1, 2]], length // 2 + 1, axis=1)[:, :length].repeat(2, 0)) if segments else None

    def run(impl):
        f = lambda q, k, v: attention(q, k, v, causal=True, q_segment_ids=seg, impl=impl)  # noqa: E731
        out, vjp = jax.vjp(f, q, k, v)
        return out, vjp(cot)

    out, grads = jax.jit(lambda: run("xla"))()
    ref, ref_grads = jax.jit(lambda: run("reference"))()
    np.testing.assert_allclose(out, ref, atol=1e-5)
    for g, g_ref in zip(grads, ref_grads):
        np.testing.assert_allclose(g, g_ref, atol=1e-4, rtol=1e-4)


def test_causal_query_blocks_skip_the_masked_scores():
    """At L = 256 the blocked core skips a quarter of the score and value products (two blocks of 128)."""
    from merg_jax.kernels.dense import dense_attention
    from merg_jax.kernels.mask import make_mask_info

    q = jnp.zeros((1, 256, 2, 32))
    info = make_mask_info(1, 256, 256, causal=True)

    assert info.in_order

    def flops(info):
        f = jax.jit(lambda q: dense_attention(q, q, q, info, 1.0))
        return f.lower(q).compile().cost_analysis()["flops"]

    products = 2 * 2 * 2 * 256 * 256 * 32  # two products of 2·L·L·D per head
    saved = flops(info._replace(in_order=False)) - flops(info)
    assert 0.24 * products <= saved <= 0.3 * products, (saved, products)
