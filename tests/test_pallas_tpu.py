"""The Pallas TPU flash-attention kernels, run on CPU in interpret mode, against the reference definition.

Values and gradients (forward, dq sweep, dk/dv sweep under the custom VJP) over seeded random cases: grouped
heads, cross-attention Lq ≠ Lk, lengths that are not block multiples, causal or not, packed segments, spans,
KV-cache-style positions; fully masked rows; bfloat16. Block skipping: the visit counts the kernels write in
their compute branch equal the needed block pairs counted here from `element_mask` directly, and the fetch
maps never move the key/value block on a skipped step (no DMA). One case runs under the TPU interpret mode
(`pltpu.InterpretParams`: simulated VMEM/DMAs, NaN-filled scratch, shuffled parallel grid axes).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from merg_jax.kernels.mask import element_mask, make_mask_info, needed_blocks, pad_to_blocks
from merg_jax.kernels.pallas_tpu import fetch_map, pallas_tpu_attention, pallas_tpu_attention_vjp
from merg_jax.kernels.reference import reference_attention


def _sorted_ids(rng, length, max_segments=3, pad_tail=True):
    n = int(rng.integers(1, max_segments + 1))
    cuts = np.sort(rng.choice(np.arange(1, length), size=min(n - 1, length - 1), replace=False)) if length > 1 else []
    ids = np.zeros(length, np.int32)
    for c in cuts:
        ids[c:] += 1
    ids += 1
    if pad_tail and length > 2 and rng.random() < 0.3:  # trailing padding tokens, segment 0
        ids[length - int(rng.integers(1, length // 2 + 1)):] = 0
    return ids


def _spans(rng, length):
    ids = np.zeros(length, np.int32)
    start = 0
    for span_id in (1, 2):
        if start >= length - 1 or rng.random() < 0.3:
            break
        a = int(rng.integers(start, length - 1))
        b = int(rng.integers(a + 1, min(length, a + 12) + 1))
        ids[a:b] = span_id
        start = b
    return ids


def _random_case(seed):
    """A shape class: shapes, blocks and which mask inputs are present (the mask contents are drawn per draw)."""
    rng = np.random.default_rng(seed)
    hk = int(rng.integers(1, 3))
    lq = int(rng.integers(1, 65))
    causal = bool(rng.random() < 0.6)
    return dict(b=int(rng.integers(1, 3)), lq=lq, lk=lq if rng.random() < 0.5 else int(rng.integers(1, 65)),
                h=hk * int(rng.choice([1, 2, 3])), hk=hk, d=int(rng.choice([8, 16])), causal=causal,
                segments=bool(rng.random() < 0.7), spans=causal and bool(rng.random() < 0.6),
                cache_positions=causal and bool(rng.random() < 0.4),
                blocks=(int(rng.choice([8, 16, 32])), int(rng.choice([8, 16, 32]))))


def _random_mask(rng, case):
    b, lq, lk = case["b"], case["lq"], case["lk"]
    kw = {}
    if case["segments"]:
        kw["q_segment_ids"] = np.stack([_sorted_ids(rng, lq) for _ in range(b)])
        kw["kv_segment_ids"] = (kw["q_segment_ids"] if lq == lk and rng.random() < 0.5
                                else np.stack([_sorted_ids(rng, lk) for _ in range(b)]))
    if case["spans"]:
        kw["q_span_ids"] = np.stack([_spans(rng, lq) for _ in range(b)])
        kw["kv_span_ids"] = kw["q_span_ids"] if lq == lk else np.stack([_spans(rng, lk) for _ in range(b)])
    if case["cache_positions"]:  # KV-cache style: the queries are the last positions (or later ones)
        kw["q_positions"] = np.arange(lq) + max(lk - lq, 0) + int(rng.integers(0, 3))
    return kw


def _inputs(case, dtype, seed):
    rng = np.random.default_rng(seed)
    b, lq, lk, h, hk, d = (case[n] for n in ("b", "lq", "lk", "h", "hk", "d"))
    shapes = [(b, lq, h, d), (b, lk, hk, d), (b, lk, hk, d), (b, lq, h, d)]  # q, k, v, cotangent
    return [jnp.asarray(rng.standard_normal(shape, np.float32), dtype) for shape in shapes]


def _value_and_grads(fn, q, k, v, d_out):
    out, pull = jax.vjp(fn, q, k, v)
    return out, pull(d_out)


def _rel(a, b):
    """Max abs error relative to the largest reference entry (floored: an exactly-zero reference gradient, e.g.
    every query seeing one key, is matched up to rounding noise)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-2))


def _runner(attend, case):
    """One jitted (value, grads, rows that see nothing) function per shape class; the mask arrays are arguments,
    so all draws share one compile."""
    def run(q, k, v, d_out, masks):
        info = make_mask_info(case["b"], case["lq"], case["lk"], causal=case["causal"], **masks)
        empty = ~jnp.any(element_mask(info.causal, info.q_segment_ids, info.kv_segment_ids, info.q_positions,
                                      info.kv_positions, info.q_span_ids, info.kv_span_ids), -1)  # [B, Lq]
        return *_value_and_grads(lambda *a: attend(*a, info), q, k, v, d_out), empty
    return jax.jit(run)


def _check(case, dtype, seed, draws=1, interpret=True, masks=None):
    scale = 1.0 / np.sqrt(case["d"])
    kernel = _runner(lambda q, k, v, info: pallas_tpu_attention(q, k, v, info, scale, case["blocks"],
                                                                 interpret=interpret), case)
    ref = _runner(lambda q, k, v, info: reference_attention(q, k, v, info, scale), case)
    rng = np.random.default_rng(seed)
    any_empty, grads = False, None
    for draw in range(draws):
        kw = _random_mask(rng, case) if masks is None else masks
        q, k, v, d_out = _inputs(case, dtype, seed * 100 + draw)
        out, grads, empty = kernel(q, k, v, d_out, kw)
        ref_out, ref_grads, _ = ref(q, k, v, d_out, kw)
        assert out.shape == ref_out.shape and out.dtype == q.dtype
        for x in (out, *grads):
            assert np.isfinite(np.asarray(x, np.float32)).all()
        err = float(jnp.abs(out.astype(jnp.float32) - ref_out.astype(jnp.float32)).max())
        tol = 1e-5 if dtype == jnp.float32 else 2e-2
        assert err <= tol, (err, case, kw)
        for name, g, rg in zip("qkv", grads, ref_grads):
            assert _rel(g, rg) <= (1e-4 if dtype == jnp.float32 else 2e-2), (name, _rel(g, rg), case, kw)
        # rows that see nothing: exactly zero output and zero query gradient
        empty = np.asarray(empty)
        if empty.any():
            any_empty = True
            assert (np.asarray(out, np.float32)[empty] == 0).all()
            assert (np.asarray(grads[0], np.float32)[empty] == 0).all()
    return any_empty, grads


# Hand-picked shape classes that between them cover grouped heads, cross-attention, odd lengths, causal with
# spans, KV-cache positions and unequal block sizes; each runs several random mask/value draws on one compile.
FAST_CASES = {
    "gqa_causal_segments_spans": dict(b=2, lq=45, lk=45, h=4, hk=2, d=16, causal=True, segments=True, spans=True,
                                      cache_positions=False, blocks=(16, 8)),
    "cross_segments": dict(b=1, lq=37, lk=61, h=3, hk=1, d=8, causal=False, segments=True, spans=False,
                           cache_positions=False, blocks=(8, 16)),
    "cross_causal_cache_positions": dict(b=2, lq=20, lk=52, h=2, hk=2, d=8, causal=True, segments=True,
                                         spans=False, cache_positions=True, blocks=(8, 32)),
    "causal_spans_no_segments": dict(b=1, lq=64, lk=64, h=2, hk=1, d=16, causal=True, segments=False, spans=True,
                                     cache_positions=False, blocks=(32, 16)),
}


@pytest.mark.parametrize("name", sorted(FAST_CASES))
def test_matches_reference_float32(name):
    _check(FAST_CASES[name], jnp.float32, seed=sorted(FAST_CASES).index(name), draws=5)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10))
def test_matches_reference_float32_random_shapes(seed):
    _check(_random_case(seed), jnp.float32, seed, draws=4)


def test_matches_reference_bfloat16():
    _check(FAST_CASES["gqa_causal_segments_spans"], jnp.bfloat16, seed=100, draws=3)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [101, 102])
def test_matches_reference_bfloat16_random_shapes(seed):
    _check(_random_case(seed), jnp.bfloat16, seed, draws=3)


def test_fully_masked_rows_zero_not_nan():
    # queries of segment 3 have no key of their segment; keys of segment 4 are seen by nobody
    case = dict(b=1, lq=24, lk=20, h=4, hk=2, d=8, causal=False, blocks=(8, 8))
    masks = dict(q_segment_ids=np.array([[1] * 10 + [2] * 6 + [3] * 8]),
                 kv_segment_ids=np.array([[1] * 8 + [2] * 8 + [4] * 4]))
    any_empty, (_, dk, dv) = _check(case, jnp.float32, 0, masks=masks)
    assert any_empty
    assert (np.asarray(dk)[:, 16:] == 0).all() and (np.asarray(dv)[:, 16:] == 0).all()


def test_tpu_interpret_mode_simulator():
    """TPU interpret mode: NaN-filled scratch would expose a missed init; parallel grid axes are shuffled."""
    case = dict(b=2, lq=16, lk=16, h=2, hk=1, d=8, causal=True, blocks=(8, 8))
    masks = dict(q_segment_ids=np.array([[1] * 10 + [2] * 6, [1] * 16]),
                 q_span_ids=np.array([[0] * 3 + [1] * 6 + [0] * 7, [0] * 6 + [2] * 7 + [0] * 3]))
    _check(case, jnp.float32, 3, interpret=pltpu.InterpretParams(random_seed=0), masks=masks)


def _independent_needed(info, bq, bk):
    """[B, NQ, NK]: does any (query, key) pair of the block pair pass the element rule."""
    allowed = np.asarray(element_mask(info.causal, info.q_segment_ids, info.kv_segment_ids, info.q_positions,
                                      info.kv_positions, info.q_span_ids, info.kv_span_ids))
    b, lq, lk = allowed.shape
    nq, nk = -(-lq // bq), -(-lk // bk)
    padded = np.zeros((b, nq * bq, nk * bk), bool)
    padded[:, :lq, :lk] = allowed
    return padded.reshape(b, nq, bq, nk, bk).any(axis=(2, 4))


@pytest.mark.parametrize("kind", ["causal", "packed", pytest.param("packed_causal_spans", marks=pytest.mark.slow)])
def test_block_skipping_visit_counts(kind):
    b, length, h, hk, d, blk = 2, 64, 2, 1, 8, 8
    kw = {}
    causal = kind != "packed"
    if kind != "causal":
        # sorted ids: the layout packing produces, for which `needed_blocks` is exact
        kw["q_segment_ids"] = np.array([[1] * 20 + [2] * 30 + [3] * 14, [1] * 40 + [2] * 17 + [3] * 7])
    if kind == "packed_causal_spans":
        kw["q_span_ids"] = np.array([[0] * 4 + [1] * 12 + [0] * 34 + [2] * 14, [0] * 21 + [1] * 10 + [0] * 33])
    info = make_mask_info(b, length, length, causal=causal, **kw)
    q, k, v, d_out = _inputs(dict(b=b, lq=length, lk=length, h=h, hk=hk, d=d), jnp.float32, 1)
    fn = jax.jit(lambda q, k, v, d_out: pallas_tpu_attention_vjp(q, k, v, info, 0.3, d_out, blk, interpret=True,
                                                                  return_visits=True))
    out, grads, visits = fn(q, k, v, d_out)
    ref_out, ref_grads = jax.jit(functools.partial(_value_and_grads, lambda *a: reference_attention(*a, info, 0.3)))(
        q, k, v, d_out)
    assert float(jnp.abs(out - ref_out).max()) <= 1e-5
    for g, rg in zip(grads, ref_grads):
        assert _rel(g, rg) <= 1e-4

    need = _independent_needed(info, blk, blk)  # [B, NQ, NK]
    nq, nk = need.shape[1:]
    per_q = np.broadcast_to(need.sum(-1)[:, None], (b, h, nq))
    per_k = np.broadcast_to(need.sum(1)[:, None], (b, h, nk))
    np.testing.assert_array_equal(np.asarray(visits["fwd"]), per_q)
    np.testing.assert_array_equal(np.asarray(visits["dq"]), per_q)
    np.testing.assert_array_equal(np.asarray(visits["dkv"]), per_k)
    if kind == "causal":
        np.testing.assert_array_equal(per_q[0, 0], np.arange(1, nq + 1))  # lower triangle
        assert per_q.sum() == b * h * nq * (nq + 1) // 2  # ≈ half of the NQ·NK pairs
    assert need.sum() < need.size
    # the forward-only entry point counts the same blocks
    _, fwd_visits = pallas_tpu_attention(q, k, v, info, 0.3, blk, interpret=True, return_visits=True)
    np.testing.assert_array_equal(np.asarray(fwd_visits["fwd"]), per_q)


def test_fetch_map_skips_dma_of_unneeded_blocks():
    info = make_mask_info(2, 64, 64, causal=True, q_segment_ids=np.array([[1] * 30 + [2] * 34, [1] * 64]))
    m = pad_to_blocks(info, 64, 64)
    need = np.asarray(needed_blocks(m, 8, 8))
    code = np.asarray(fetch_map(jnp.asarray(need)))
    fetched = np.maximum(code, -code - 1)
    nk = need.shape[-1]
    assert ((code >= 0) == need).all()
    assert (fetched[need] == np.broadcast_to(np.arange(nk), need.shape)[need]).all()
    assert ((fetched >= 0) & (fetched < nk)).all()
    for b in range(need.shape[0]):
        for i in range(need.shape[1]):
            row, f = need[b, i], fetched[b, i]
            if not row.any():
                continue
            # on a skipped step the block index stays put (after the first needed block) or already points at
            # the first needed block (before it): the pipeline copies exactly the needed blocks of the row
            first = int(np.argmax(row))
            assert (f[:first] == first).all()
            for j in range(first + 1, nk):
                if not row[j]:
                    assert f[j] == f[j - 1]
            assert len(set(f.tolist())) == row.sum()


def test_block_size_validation():
    q = jnp.zeros((1, 16, 2, 8))
    info = make_mask_info(1, 16, 16, causal=True)
    with pytest.raises(ValueError, match="multiple of 128"):
        pallas_tpu_attention(q, q, q, info, 1.0, 64)  # the compiled path needs lane-aligned blocks
    with pytest.raises(ValueError, match="multiple of 8"):
        pallas_tpu_attention(q, q, q, info, 1.0, 12, interpret=True)
    with pytest.raises(ValueError, match="multiple"):
        pallas_tpu_attention(q, q[:, :, :1].repeat(3, 2), q[:, :, :1].repeat(3, 2), info, 1.0, 8, interpret=True)
