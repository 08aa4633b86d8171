"""Monotonic alignment search: equals a brute-force search over every monotonic path (square, single-token and
padded cases), satisfies the path constraints, matches a naive numpy DP (Glow-TTS's loop) on a long case, runs
under jit with dynamic lengths without recompiling, and passes no gradient."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from merg_jax.models.speech.alignment import durations_from_alignment, monotonic_alignment_search

MAS = jax.jit(monotonic_alignment_search)
TT, TM = 5, 8  # the padded shape of the brute-force batch: one compilation for all its cases


def brute_force(log_p: np.ndarray, t_text: int, t_mel: int) -> np.ndarray:
    """The best path by enumeration: token i > 0 starts at frame s_i, 0 < s_1 < ... < s_{Tt-1} < Tm."""
    best, best_path = -np.inf, None
    for starts in itertools.combinations(range(1, t_mel), t_text - 1):
        bounds = (0, *starts, t_mel)
        path = np.zeros(log_p.shape, np.float32)
        for i in range(t_text):
            path[i, bounds[i]:bounds[i + 1]] = 1.0
        score = float(np.sum(log_p[:t_text, :t_mel] * path[:t_text, :t_mel]))
        if score > best:
            best, best_path = score, path
    return best_path


def naive_dp(log_p: np.ndarray, t_text: int, t_mel: int) -> np.ndarray:
    """Glow-TTS's `maximum_path_each` (monotonic_align/core.pyx), transcribed loop for loop."""
    value = log_p.astype(np.float64).copy()
    path = np.zeros(log_p.shape, np.float32)
    neg = -1e9
    for y in range(t_mel):
        for x in range(max(0, t_text + y - t_mel), min(t_text, y + 1)):
            v_cur = neg if x == y else value[x, y - 1]
            v_prev = (0.0 if y == 0 else neg) if x == 0 else value[x - 1, y - 1]
            value[x, y] = max(v_cur, v_prev) + value[x, y]
    index = t_text - 1
    for y in range(t_mel - 1, -1, -1):
        path[index, y] = 1.0
        if index != 0 and (index == y or value[index, y - 1] < value[index - 1, y - 1]):
            index -= 1
    return path


def check_constraints(a: np.ndarray, t_text: int, t_mel: int) -> None:
    assert set(np.unique(a)) <= {0.0, 1.0}
    assert not a[t_text:].any() and not a[:, t_mel:].any(), "nonzero outside the lengths"
    inside = a[:t_text, :t_mel]
    np.testing.assert_array_equal(inside.sum(0), 1)  # each frame: exactly one token
    assert (inside.sum(1) >= 1).all()  # each token: at least one frame
    owner = inside.argmax(0)
    assert owner[0] == 0 and owner[-1] == t_text - 1
    assert set(np.diff(owner)) <= {0, 1}, "not monotonic, or skips a token"


def random_batch(rng, lengths, tt, tm):
    log_p = rng.normal(size=(len(lengths), tt, tm)).astype(np.float32) * 3
    text = np.array([t for t, _ in lengths], np.int32)
    mel = np.array([m for _, m in lengths], np.int32)
    return log_p, text, mel


def test_equals_brute_force_on_padded_batch():
    rng = np.random.default_rng(0)
    # Square, single-token, full-size and padded rows, all in one padded batch.
    lengths = [(TT, TM), (1, 1), (1, TM), (3, 3), (TT, TT), (2, 7), (4, 6), (3, 8), (5, 6), (2, 2), (1, 4), (4, 8)]
    for trial in range(3):
        log_p, text, mel = random_batch(rng, lengths, TT, TM)
        # Padding holds junk (huge, NaN, inf): it must not change the paths.
        pad = ~((np.arange(TT)[None, :, None] < text[:, None, None])
                & (np.arange(TM)[None, None, :] < mel[:, None, None]))
        log_p = np.where(pad, [1e30, np.nan, np.inf][trial], log_p).astype(np.float32)
        out = np.asarray(MAS(jnp.asarray(log_p), jnp.asarray(text), jnp.asarray(mel)))
        assert out.shape == log_p.shape and out.dtype == np.float32
        for b, (t, m) in enumerate(lengths):
            check_constraints(out[b], t, m)
            np.testing.assert_array_equal(out[b], brute_force(log_p[b], t, m), err_msg=f"row {b}: lengths {(t, m)}")


def test_prefers_the_likely_token_not_a_shifted_one():
    """A hand-made case with an obvious answer: frames 0-1 → token 0, 2-4 → token 1, 5 → token 2."""
    owner = np.array([0, 0, 1, 1, 1, 2])
    log_p = np.full((1, 3, 6), -5.0, np.float32)
    log_p[0, owner, np.arange(6)] = 0.0
    out = np.asarray(MAS(jnp.asarray(log_p), jnp.array([3]), jnp.array([6])))
    np.testing.assert_array_equal(out[0].argmax(0), owner)
    np.testing.assert_array_equal(np.asarray(durations_from_alignment(out)), [[2, 3, 1]])


def test_durations():
    rng = np.random.default_rng(1)
    lengths = [(TT, TM), (2, 7), (1, 3)]
    log_p, text, mel = random_batch(rng, lengths, TT, TM)
    d = np.asarray(durations_from_alignment(MAS(jnp.asarray(log_p), jnp.asarray(text), jnp.asarray(mel))))
    assert d.dtype == np.int32 and d.shape == (3, TT)
    np.testing.assert_array_equal(d.sum(1), mel)
    for b, (t, _) in enumerate(lengths):
        assert (d[b, :t] >= 1).all() and not d[b, t:].any()


def test_long_case_matches_naive_dp():
    rng = np.random.default_rng(2)
    lengths = [(40, 300), (23, 171)]
    log_p, text, mel = random_batch(rng, lengths, 40, 300)
    out = np.asarray(MAS(jnp.asarray(log_p), jnp.asarray(text), jnp.asarray(mel)))
    for b, (t, m) in enumerate(lengths):
        check_constraints(out[b], t, m)
        np.testing.assert_array_equal(out[b], naive_dp(log_p[b], t, m))


def test_jit_with_dynamic_lengths_compiles_once():
    traces = []

    @jax.jit
    def f(log_p, text, mel):
        traces.append(1)
        return monotonic_alignment_search(log_p, text, mel)

    rng = np.random.default_rng(3)
    for lengths in ([(TT, TM), (2, 5)], [(1, 3), (4, 4)], [(3, 8), (5, 7)]):
        log_p, text, mel = random_batch(rng, lengths, TT, TM)
        out = np.asarray(f(jnp.asarray(log_p), jnp.asarray(text), jnp.asarray(mel)))
        for b, (t, m) in enumerate(lengths):
            np.testing.assert_array_equal(out[b], brute_force(log_p[b], t, m))
    assert len(traces) == 1


def test_empty_rows_are_zero():
    """Batch-filler rows (zero lengths) give an all-zero alignment, and leave the other rows alone."""
    log_p = np.random.default_rng(6).normal(size=(3, TT, TM)).astype(np.float32)
    out = np.asarray(MAS(jnp.asarray(log_p), jnp.array([0, 3, 2]), jnp.array([0, 0, 5])))
    assert not out[:2].any()
    np.testing.assert_array_equal(out[2], brute_force(log_p[2], 2, 5))


def test_no_gradient():
    log_p = jnp.asarray(np.random.default_rng(4).normal(size=(1, 3, 6)), jnp.float32)

    def loss(x):
        return jnp.sum(monotonic_alignment_search(x, jnp.array([3]), jnp.array([6])) * 2.0)

    np.testing.assert_array_equal(np.asarray(jax.grad(loss)(log_p)), 0.0)


@pytest.mark.parametrize("dtype", [jnp.bfloat16])
def test_low_precision_input(dtype):
    log_p = jnp.asarray(np.random.default_rng(5).normal(size=(2, TT, TM)), dtype)
    out = MAS(log_p, jnp.array([TT, 3]), jnp.array([TM, 6]))
    assert out.dtype == jnp.float32
    check_constraints(np.asarray(out[0]), TT, TM)
    check_constraints(np.asarray(out[1]), 3, 6)
