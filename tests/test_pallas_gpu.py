"""The Pallas GPU (Triton) attention kernels against the naive reference, run on CPU with `interpret=True`.

Interpret mode executes the very kernel bodies that Triton compiles on a GPU (through the Pallas HLO
interpreter), so masks, block schedules, online softmax, the custom VJP and the visit counters are all tested for
real here; only Triton's own compilation is not. The last test lowers the kernels for CUDA (possible without a
GPU) and verifies the generated Triton IR.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from attention_cases import contiguous_spans
from merg_jax.kernels.mask import dense_mask, make_mask_info
from merg_jax.kernels.pallas_gpu import BlockSizes, pallas_gpu_attention, pallas_gpu_attention_vjp
from merg_jax.kernels.reference import reference_attention

# Mixed tiles: every pass (forward, dq, dk/dv) with its own block shape.
MIXED = BlockSizes(block_q=32, block_k=16, block_q_dq=16, block_k_dq=32, block_q_dkv=16, block_k_dkv=16)


def _sorted_segments(rng, batch, length, max_cuts=3, first=0):
    out = np.zeros((batch, length), np.int32)
    for b in range(batch):
        cuts = np.sort(rng.integers(0, length + 1, size=int(rng.integers(0, max_cuts + 1))))
        out[b] = np.searchsorted(cuts, np.arange(length), side="right") + first
    return out


def make_case(seed, dtype=jnp.float32, *, ratio=None, causal=None, cross=None, segments=None, spans=None,
              orphans=None, d=None, max_len=64):
    """A random problem; keyword arguments pin a feature, None draws it from the seed.

    orphans: queries that see no key at all — a query segment id no key has (packing), or, for causal
    cross-attention, query positions before every key position.
    """
    rng = np.random.default_rng(seed)
    draw = lambda x, p=0.5: bool(rng.random() < p) if x is None else x  # noqa: E731
    batch = int(rng.integers(1, 3))
    hk = int(rng.choice([1, 2]))
    ratio = int(rng.choice([1, 2, 4])) if ratio is None else ratio
    h = hk * ratio
    d = int(rng.choice([8, 16, 24, 32])) if d is None else d
    causal, cross, segments = draw(causal), draw(cross, 0.4), draw(segments)
    spans, orphans = draw(spans) and causal, draw(orphans, 0.3)
    lq = int(rng.integers(1, max_len + 1))
    lk = int(rng.integers(1, max_len + 1)) if cross else lq
    kw = {"causal": causal}
    if segments or (orphans and not (causal and cross)):
        kw["q_segment_ids"] = _sorted_segments(rng, batch, lq)
        if cross:
            kw["kv_segment_ids"] = _sorted_segments(rng, batch, lk)
        if orphans:  # the last queries get a segment id that no key has
            kv_max = kw.get("kv_segment_ids", kw["q_segment_ids"]).max()
            tail = max(1, lq // 4)
            kw["q_segment_ids"][:, lq - tail:] = kv_max + 1
            if not cross:  # self-attention: keep q and kv ids the same array, orphans then see themselves…
                kw["kv_segment_ids"] = kw["q_segment_ids"].copy()
                kw["kv_segment_ids"][:, lk - tail:] = -7  # …unless their keys carry another id
    if spans:
        kw["q_span_ids"] = contiguous_spans(rng, batch, lq, max_span_length=11)
        kw["kv_span_ids"] = kw["q_span_ids"] if not cross else contiguous_spans(rng, batch, lk)
    if causal and cross:
        if orphans:  # keys start after the first queries: those queries see nothing
            kw["kv_positions"] = np.arange(lk) + int(rng.integers(1, 8))
            kw["q_positions"] = np.arange(lq)
        else:  # a chunk of queries at the end of a longer key sequence (a KV cache)
            kw["q_positions"] = np.arange(lq) + max(lk - lq, 0)
    info = make_mask_info(batch, lq, lk, **kw)
    keys = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(keys[0], (batch, lq, h, d), jnp.float32).astype(dtype)
    k = jax.random.normal(keys[1], (batch, lk, hk, d), jnp.float32).astype(dtype)
    v = jax.random.normal(keys[2], (batch, lk, hk, d), jnp.float32).astype(dtype)
    cot = jax.random.normal(keys[3], (batch, lq, h, d), jnp.float32).astype(dtype)
    scale = float(rng.choice([1.0 / np.sqrt(d), 0.3]))
    blocks = [16, (16, 32), MIXED][int(rng.integers(0, 3))]
    desc = (f"seed={seed} {jnp.dtype(dtype).name} q{q.shape} k{k.shape} causal={causal} cross={cross} "
            f"segments={'q_segment_ids' in kw} spans={spans} orphans={orphans} blocks={blocks}")
    return q, k, v, cot, info, scale, blocks, desc


def _relative_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    # floored: a gradient that is exactly zero in the reference (one visible key per query) matches only up to
    # float32 rounding noise
    return float(np.abs(a - b).max(initial=0.0) / max(np.abs(b).max(initial=0.0), 1e-2))


def _check(seed, dtype, fwd_tol, grad_tol, relative_forward=False, **pins):
    q, k, v, cot, info, scale, blocks, desc = make_case(seed, dtype, **pins)

    @jax.jit
    def run(q, k, v, cot):
        out, vjp = jax.vjp(lambda *a: pallas_gpu_attention(*a, info, scale, blocks, interpret=True), q, k, v)
        return out, vjp(cot)

    @jax.jit
    def ref(q, k, v, cot):
        out, vjp = jax.vjp(lambda *a: reference_attention(*a, info, scale), q, k, v)
        return out, vjp(cot)

    out, grads = run(q, k, v, cot)
    out_ref, grads_ref = ref(q, k, v, cot)
    assert out.shape == out_ref.shape and out.dtype == q.dtype, desc
    if relative_forward:
        assert _relative_error(out, out_ref) <= fwd_tol, desc
    else:
        np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(out_ref, np.float32), atol=fwd_tol,
                                   rtol=0, err_msg=desc)
    for name, g, g_ref, x in zip("qkv", grads, grads_ref, (q, k, v)):
        assert g.shape == x.shape and g.dtype == x.dtype, (name, desc)
        assert np.isfinite(np.asarray(g, np.float32)).all(), (name, desc)
        assert _relative_error(g, g_ref) <= grad_tol, (name, _relative_error(g, g_ref), desc)

    # rows with no visible key: exactly zero output and zero dq, never NaN
    empty = ~np.asarray(dense_mask(info)).any(-1)  # [B, Lq]
    if empty.any():
        assert np.all(np.asarray(out, np.float32)[empty] == 0.0), desc
        assert np.all(np.asarray(grads[0], np.float32)[empty] == 0.0), desc
    return empty.any()


# Fast set: pinned features so that every combination the kernels care about is hit at least once.
FAST_CASES = [
    dict(ratio=1, causal=True, cross=False, segments=False, spans=False, orphans=False),
    dict(ratio=2, causal=True, cross=False, segments=True, spans=True, orphans=False),
    dict(ratio=4, causal=False, cross=False, segments=True, spans=False, orphans=True),
    dict(ratio=1, causal=False, cross=True, segments=True, spans=False, orphans=True),
    dict(ratio=2, causal=True, cross=True, segments=False, spans=False, orphans=False),
    dict(ratio=4, causal=True, cross=True, segments=True, spans=False, orphans=True),
    dict(ratio=2, causal=False, cross=False, segments=False, spans=False, orphans=False, d=24),
    dict(ratio=1, causal=True, cross=False, segments=True, spans=True, orphans=True),
]


@pytest.mark.parametrize("case", range(len(FAST_CASES)))
def test_float32_matches_reference(case):
    _check(100 + case, jnp.float32, 1e-5, 1e-4, **FAST_CASES[case])


@pytest.mark.parametrize("case", [1, 3, 5])
def test_bfloat16_matches_reference(case):
    _check(200 + case, jnp.bfloat16, 2e-2, 2e-2, relative_forward=True, **FAST_CASES[case])


@pytest.mark.slow
@settings(max_examples=12, deadline=None, derandomize=True)  # interpreted on CPU: ~4 s each
@given(seed=st.integers(0, 100_000))
def test_float32_random_problems(seed):
    _check(seed, jnp.float32, 1e-5, 1e-4)


@pytest.mark.slow
@settings(max_examples=6, deadline=None, derandomize=True)
@given(seed=st.integers(0, 100_000))
def test_bfloat16_random_problems(seed):
    _check(seed, jnp.bfloat16, 2e-2, 2e-2, relative_forward=True)


def test_fully_masked_rows_are_zero_not_nan():
    """A query segment no key has (cross-attention) and causal queries before every key: zeros everywhere."""
    b, lq, lk, h, d = 1, 20, 24, 2, 16
    q_seg = np.array([[0] * 8 + [1] * 6 + [9] * 6])  # segment 9 has no key
    kv_seg = np.array([[0] * 6 + [1] * 18])
    q_pos = np.arange(lq)
    kv_pos = np.arange(lk) + 3  # queries at positions 0-2 precede every key, query 8 every key of segment 1
    info = make_mask_info(b, lq, lk, causal=True, q_segment_ids=q_seg, kv_segment_ids=kv_seg,
                          q_positions=q_pos, kv_positions=kv_pos)
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v = (jax.random.normal(kk, s) for kk, s in zip(keys, [(b, lq, h, d), (b, lk, h, d), (b, lk, h, d)]))
    cot = jax.random.normal(keys[3], (b, lq, h, d))

    @jax.jit
    def run(q, k, v, cot):
        out, vjp = jax.vjp(lambda *a: pallas_gpu_attention(*a, info, 0.25, 16, interpret=True), q, k, v)
        return out, vjp(cot), reference_attention(q, k, v, info, 0.25)

    out, (dq, dk, dv), out_ref = run(q, k, v, cot)
    empty = np.zeros(lq, bool)
    empty[[0, 1, 2, 8]] = True
    empty[14:] = True
    assert np.array_equal(~np.asarray(dense_mask(info))[0].any(-1), empty)
    for x in (out, dq, dk, dv):
        assert np.isfinite(np.asarray(x)).all()
    assert np.all(np.asarray(out)[0, empty] == 0.0) and np.all(np.asarray(dq)[0, empty] == 0.0)
    assert np.abs(np.asarray(out)[0, ~empty]).min() > 0
    np.testing.assert_allclose(out, out_ref, atol=1e-5)


# ------------------------------------------------------------------------------------------- block skipping


def _expected_visits(info, block: int, lqp: int, lkp: int):
    """Needed block pairs straight from the dense element mask: any() over each block pair. [B, NQ, NK]."""
    mask = np.asarray(dense_mask(info))
    b, lq, lk = mask.shape
    padded = np.zeros((b, lqp, lkp), bool)
    padded[:, :lq, :lk] = mask
    return padded.reshape(b, lqp // block, block, lkp // block, block).any(axis=(2, 4))


@pytest.mark.parametrize("layout", ["causal", "packed"])
def test_block_skipping_visits_exactly_the_needed_blocks(layout):
    b, length, hk, groups, d, block = 2, 120, 2, 2, 16, 16
    h = hk * groups
    if layout == "causal":
        info = make_mask_info(b, length, length, causal=True)
    else:  # three packed documents per row, different cut points per batch row
        seg = np.stack([np.repeat([0, 1, 2], [40, 30, 50]), np.repeat([0, 1, 2], [17, 70, 33])])
        info = make_mask_info(b, length, length, causal=False, q_segment_ids=seg)
    keys = jax.random.split(jax.random.key(1), 4)
    q = jax.random.normal(keys[0], (b, length, h, d))
    k, v = (jax.random.normal(kk, (b, length, hk, d)) for kk in keys[1:3])
    cot = jax.random.normal(keys[3], q.shape)

    run = jax.jit(lambda q, k, v, cot: pallas_gpu_attention_vjp(q, k, v, info, 0.25, cot, block, interpret=True))
    out, grads, visits = run(q, k, v, cot)
    need = _expected_visits(info, block, 128, 128)  # [B, 8, 8]
    nq, nk = need.shape[1:]

    per_q = np.broadcast_to(need.sum(-1)[:, None, :], (b, h, nq))  # key blocks per (batch, head, q block)
    per_k = np.broadcast_to(need.sum(1)[:, None, :], (b, h, nk))  # q blocks per (batch, head, k block)
    np.testing.assert_array_equal(visits.forward, per_q)
    np.testing.assert_array_equal(visits.dq, per_q)
    np.testing.assert_array_equal(visits.dkv, per_k)
    assert visits.forward.dtype == jnp.int32
    total = int(per_q.sum())
    if layout == "causal":
        assert total == b * h * nq * (nq + 1) // 2  # the lower triangle: 36 of 64 blocks per head
        assert total <= 0.6 * b * h * nq * nk
    else:
        assert total < 0.6 * b * h * nq * nk

    # the differentiable entry point reports the same forward visits, and both match the reference
    @jax.jit
    def entry_and_reference(q, k, v, cot):
        out, fwd_visits = pallas_gpu_attention(q, k, v, info, 0.25, block, interpret=True, return_visits=True)
        out_ref, vjp = jax.vjp(lambda *a: reference_attention(*a, info, 0.25), q, k, v)
        return out, fwd_visits, out_ref, vjp(cot)

    out2, fwd_visits, out_ref, grads_ref = entry_and_reference(q, k, v, cot)
    np.testing.assert_array_equal(fwd_visits.forward, per_q)
    np.testing.assert_allclose(out, out_ref, atol=1e-5)
    np.testing.assert_allclose(out2, out_ref, atol=1e-5)
    for g, g_ref in zip(grads, grads_ref):
        assert _relative_error(g, g_ref) <= 1e-4


def test_bad_block_sizes_are_rejected():
    info = make_mask_info(1, 8, 8, causal=True)
    x = jnp.zeros((1, 8, 1, 16))
    with pytest.raises(ValueError, match="power of two"):
        pallas_gpu_attention(x, x, x, info, 1.0, 24, interpret=True)
    with pytest.raises(ValueError, match="power of two"):
        pallas_gpu_attention(x, x, x, info, 1.0, BlockSizes(block_k_dkv=48), interpret=True)
    with pytest.raises(ValueError, match="multiple"):
        pallas_gpu_attention(jnp.zeros((1, 8, 3, 16)), jnp.zeros((1, 8, 2, 16)), jnp.zeros((1, 8, 2, 16)), info,
                             1.0, interpret=True)


# ------------------------------------------------------------------------------------------ Triton lowering


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kernels_lower_to_valid_triton_ir(dtype):
    """Lower forward + backward for CUDA on this CPU machine and run the MLIR verifier on each Triton module.

    This checks that every kernel body is expressible in the Triton dialect (power-of-two tiles, supported
    primitives, scalar schedule loads, dynamic-trip-count loops); Triton's own compiler passes need a GPU.
    """
    from jax._src.pallas.triton import lowering as triton_lowering

    modules = []
    original = triton_lowering.lower_jaxpr_to_triton_module

    def verifying(*args, **kwargs):
        result = original(*args, **kwargs)
        modules.append((str(result.module.operation.attributes["sym_name"]), result.module.operation.verify(),
                        result.module.operation.get_asm(print_generic_op_form=True)))
        return result

    b, lq, lk, hk, groups, d = 2, 300, 200, 2, 4, 64
    info = make_mask_info(b, lq, lk, causal=True, q_segment_ids=np.zeros((b, lq), np.int32),
                          kv_segment_ids=np.zeros((b, lk), np.int32), q_span_ids=np.zeros((b, lq), np.int32),
                          kv_span_ids=np.zeros((b, lk), np.int32))
    q = jax.ShapeDtypeStruct((b, lq, hk * groups, d), dtype)
    kv = jax.ShapeDtypeStruct((b, lk, hk, d), dtype)
    loss = lambda q, k, v: pallas_gpu_attention(q, k, v, info, 0.125).astype(jnp.float32).sum()  # noqa: E731
    triton_lowering.lower_jaxpr_to_triton_module = verifying
    try:
        lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, kv, kv).lower(lowering_platforms=("cuda",))
    except RuntimeError as e:  # newer jaxlibs compile Triton at lowering time, which needs the CUDA plugin
        pytest.skip(f"cannot lower for CUDA here: {e}")
    finally:
        triton_lowering.lower_jaxpr_to_triton_module = original
    names = sorted(name for name, _, _ in modules)
    assert names == ['"merg_attention_dkv"', '"merg_attention_dq"', '"merg_attention_fwd"'], names
    assert all(ok for _, ok, _ in modules)
    assert lowered.as_text().count("triton") >= 3
    # float32 dots in IEEE precision (inputPrecision 2), not TF32; bfloat16 dots take bf16 operands
    dots = [line for _, _, asm in modules for line in asm.splitlines() if '"tt.dot"' in line]
    assert dots
    if dtype == jnp.float32:
        assert all("inputPrecision = 2" in line for line in dots)
    else:
        assert all("xbf16>, tensor<" in line for line in dots)
