"""Attention at length (O(L) memory of the blockwise fallback) and inside shard_map on a device mesh."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from attention_cases import relative_error
from merg_jax.kernels import attention
from merg_jax.sharding import make_mesh


def _temp_bytes(fn, *args) -> int:
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.slow
def test_blockwise_at_16k_runs_in_an_eighth_of_the_naive_memory():
    length, heads, dim = 16384, 8, 64
    spec = jax.ShapeDtypeStruct((1, length, heads, dim), jnp.float32)

    def fwd(impl):
        return lambda q, k, v: attention(q, k, v, causal=True, impl=impl)

    def bwd(impl):
        return jax.grad(lambda q, k, v: fwd(impl)(q, k, v).sum(), argnums=(0, 1, 2))

    naive_fwd, naive_bwd = _temp_bytes(fwd("xla"), spec, spec, spec), _temp_bytes(bwd("xla"), spec, spec, spec)
    block_fwd, block_bwd = (_temp_bytes(fwd("blockwise"), spec, spec, spec),
                            _temp_bytes(bwd("blockwise"), spec, spec, spec))
    assert naive_fwd >= heads * length * length * 4  # the score matrix alone
    assert block_fwd < naive_fwd / 8 and block_bwd < naive_bwd / 8, (block_fwd, naive_fwd, block_bwd, naive_bwd)

    # and it really runs, forward and backward, with finite results
    x = jax.random.normal(jax.random.key(0), (1, length, heads, dim), jnp.float32)
    out, grads = jax.jit(jax.value_and_grad(lambda q: fwd("blockwise")(q, x, x).mean()))(x)
    assert np.isfinite(float(out)) and np.isfinite(np.asarray(grads)).all()
    # spot check a few rows against the definition computed for those rows only
    rows = np.array([0, 1, 4097, length - 1])
    full = jax.jit(fwd("blockwise"))(x, x, x)[0, rows]
    scores = jnp.einsum("qhd,khd->hqk", x[0, rows], x[0]) / np.sqrt(dim)
    scores = jnp.where(jnp.arange(length)[None, None, :] <= rows[None, :, None], scores, -jnp.inf)
    expected = jnp.einsum("hqk,khd->qhd", jax.nn.softmax(scores, axis=-1), x[0])
    np.testing.assert_allclose(full, expected, atol=2e-5)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (tests/conftest.py sets XLA_FLAGS)")
@pytest.mark.parametrize("impl", ["xla", "blockwise", "pallas_tpu", "pallas_gpu"])
def test_attention_inside_shard_map(impl):
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    b, length, h, hk, d = 4, 24, 4, 2, 8
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (b, length, h, d))
    k = jax.random.normal(keys[1], (b, length, hk, d))
    v = jax.random.normal(keys[2], (b, length, hk, d))
    seg = jnp.asarray(np.repeat([[1] * 10 + [2] * 14], b, axis=0))
    act = P(("data", "fsdp"), None, "tensor", None)
    ids = P(("data", "fsdp"), None)

    # The Pallas interpreter's internal dynamic_slice trips shard_map's varying-axes check (a JAX limitation
    # it names itself, with check_vma=False as the workaround); the compiled kernels declare their outputs'
    # varying axes (merg_jax.kernels.vma) and need no workaround.
    check_vma = not impl.startswith("pallas")

    @functools.partial(jax.shard_map, mesh=mesh, in_specs=(act, act, act, ids), out_specs=act, check_vma=check_vma)
    def sharded(q, k, v, seg):
        return attention(q, k, v, causal=True, q_segment_ids=seg, impl=impl, block_sizes=16 if impl.startswith("pallas") else 8)

    def loss(fn, q, k, v):
        return (fn(q, k, v, seg) ** 2).sum()

    plain = lambda q, k, v, s: attention(q, k, v, causal=True, q_segment_ids=s, impl="reference")  # noqa: E731
    with jax.set_mesh(mesh):
        args = [jax.device_put(x, NamedSharding(mesh, act)) for x in (q, k, v)]
        out = jax.jit(sharded)(*args, jax.device_put(seg, NamedSharding(mesh, ids)))
        grads = jax.jit(jax.grad(functools.partial(loss, sharded), argnums=(0, 1, 2)))(*args)
    assert out.sharding.spec == act
    np.testing.assert_allclose(out, plain(q, k, v, seg), atol=1e-5)
    ref_grads = jax.grad(functools.partial(loss, plain), argnums=(0, 1, 2))(q, k, v)
    for g, r in zip(grads, ref_grads):
        assert relative_error(g, r) <= 1e-4
