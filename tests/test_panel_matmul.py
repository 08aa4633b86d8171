"""`merg_jax.kernels.panel_matmul`: the packed layout by its definition, the kernel against its reference (and
numpy), its build and failure reasons, and `generate` running on it (same tokens as XLA's dot, packed once)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from llm_testing import tiny_config

from merg_jax.infer import SamplingConfig, generate_with_info
from merg_jax.infer.generate import _generate_jit, decode_panels, uses_panel_matmul
from merg_jax.kernels import cpu_library
from merg_jax.kernels import panel_matmul as pm
from merg_jax.models import Llm
from merg_jax.models.layers import Dense


def test_the_kernel_builds_here():
    """CI installs g++ (Makefile): the kernel must build and register, or every test below tests nothing."""
    assert pm.available(), pm.unavailable_reason()


def _rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("shape", [(5, 70), (2, 3, 32), (1, 64, 1)])
def test_pack_layout_by_definition(shape):
    w = _rand(shape)
    stack = w if w.ndim == 3 else w[None]
    packed = np.asarray(pm.pack(jnp.asarray(w)))
    layers, k, n = stack.shape
    assert packed.shape == (layers, -(-n // 32), k, 32)
    for l in range(layers):
        for p in range(packed.shape[1]):
            for j in range(32):
                col = 32 * p + j
                want = stack[l, :, col] if col < n else np.zeros(k, np.float32)
                np.testing.assert_array_equal(packed[l, p, :, j], want)
    np.testing.assert_array_equal(np.asarray(pm.unpack(jnp.asarray(packed), n)), stack)


CASES = [  # (M, K, N, layers): one row and a full 8-row block, ragged rows / K / N, several 8-row blocks
    (1, 512, 800, 1), (8, 64, 256, 3), (3, 37, 45, 2), (9, 64, 32, 1), (17, 100, 97, 2), (0, 5, 7, 1), (6, 1, 33, 1)]


@pytest.mark.parametrize("m,k,n,layers", CASES)
def test_kernel_equals_reference_and_numpy(m, k, n, layers):
    w, x = _rand((layers, k, n), 1), _rand((m, k), 2)
    packed = pm.pack(jnp.asarray(w))
    run = jax.jit(pm.panel_matmul, static_argnums=(2, 3))
    for layer in range(layers):
        got = np.asarray(run(jnp.asarray(x), packed, n, layer))
        ref = np.asarray(pm.panel_matmul_reference(jnp.asarray(x), packed, n, layer))
        assert got.shape == (m, n)
        exact = x.astype(np.float64) @ w[layer].astype(np.float64)
        tol = 1e-5 * np.sqrt(k) * max(1.0, float(np.abs(exact).max(initial=0)))
        np.testing.assert_allclose(got, exact, atol=tol)
        np.testing.assert_allclose(ref, exact, atol=tol)


def test_kernel_in_a_loop_with_a_traced_input():
    """Inside `lax.fori_loop` (as in the decode loop), each call reading the previous one's output."""
    w = _rand((2, 16, 16), 3) * 0.25
    packed = pm.pack(jnp.asarray(w))

    def step(fn):
        return jax.jit(lambda x: jax.lax.fori_loop(0, 6, lambda i, x: jnp.tanh(fn(x, packed, 16, 1)), x))

    x = jnp.asarray(_rand((4, 16), 4))
    np.testing.assert_allclose(step(pm.panel_matmul)(x), step(pm.panel_matmul_reference)(x), atol=1e-5)


def test_bad_inputs_name_what_is_wrong():
    packed = pm.pack(jnp.zeros((2, 8, 40)))
    x = jnp.zeros((3, 8))
    with pytest.raises(ValueError, match="expected \\[M, K\\], \\[L, P, K, 32\\]"):
        pm.panel_matmul(jnp.zeros((3, 9)), packed, 40)
    with pytest.raises(ValueError, match="n=70 does not fill the 2 panels"):
        pm.panel_matmul(x, packed, 70)
    with pytest.raises(ValueError, match="layer 2 outside the stack of 2"):
        pm.panel_matmul(x, packed, 40, 2)
    with pytest.raises(ValueError, match="float32 only"):
        pm.panel_matmul(x.astype(jnp.bfloat16), packed, 40)
    with pytest.raises(ValueError, match="expected weights \\[K, N\\] or \\[L, K, N\\]"):
        pm.pack(jnp.zeros((1, 2, 3, 4)))


def test_unavailable_says_why(monkeypatch):
    targets = {pm.TARGET: "MergPanelMatmul"}
    monkeypatch.setenv(cpu_library.ENV, "off")
    assert cpu_library.register(pm.SOURCE, targets) == f"turned off by {cpu_library.ENV}=off"
    monkeypatch.setenv(cpu_library.ENV, "maybe")
    assert "expected on or off" in cpu_library.register(pm.SOURCE, targets)
    monkeypatch.setenv(cpu_library.ENV, "on")
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    assert "C++ compiler '/nonexistent/g++' does not run" in cpu_library.register(pm.SOURCE, targets)
    monkeypatch.delenv("CXX")
    assert cpu_library.register(pm.SOURCE, targets) is None  # the same library again: registered, no error
    assert "undefined symbol: NoSuchHandler" in cpu_library.register(pm.SOURCE, {"merg_missing": "NoSuchHandler"})


def test_build_is_cached_per_source_and_reported_on_failure(tmp_path, monkeypatch):
    """A fresh cache folder builds the library once (a second build reuses the file); a source that does not
    compile gives the compiler's own message and leaves no partial file behind."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    compiler = cpu_library.compiler()
    library = cpu_library.build(pm.SOURCE, compiler)
    assert library.parent == tmp_path / "merg_jax" / "kernels" and library.is_file()
    stamp = library.stat().st_mtime_ns
    assert cpu_library.build(pm.SOURCE, compiler) == library and library.stat().st_mtime_ns == stamp

    broken = tmp_path / "panel_matmul.cc"
    broken.write_text(pm.SOURCE.read_text() + "\nthis is not C++;\n")
    assert cpu_library.library_path(broken, compiler) != library  # named by the source's contents
    with pytest.raises(RuntimeError, match="building panel_matmul.cc failed .*error"):
        cpu_library.build(broken, compiler)
    assert sorted(p.name for p in library.parent.iterdir()) == [library.name]


# ------------------------------------------------------------------------------------------------ generate

def _model(seed=0, **kw) -> Llm:
    return Llm(tiny_config(vocab_size=97, max_position_embeddings=64, **kw), rngs=nnx.Rngs(seed))


def _xla_generate(model, prompt, n):
    graphdef, state = nnx.split(model)
    out, _, _ = _generate_jit(graphdef, state, prompt, jnp.ones_like(prompt), jnp.zeros((0,), jnp.int32),
                              jnp.asarray(0, jnp.int32), jax.random.key(0), None, None, max_new_tokens=n,
                              max_length=prompt.shape[1] + n, sampling=SamplingConfig(0.0, 0, 1.0))
    return np.asarray(out)


@pytest.mark.parametrize("tie", [False, True])
def test_generate_on_panels_equals_xla_dot(tie):
    model = _model(seed=3, tie_embeddings=tie)
    assert uses_panel_matmul(model)
    prompt = jnp.asarray(np.random.default_rng(0).integers(0, 97, (3, 6)), jnp.int32)
    got = np.asarray(generate_with_info(model, prompt, 12).tokens)
    np.testing.assert_array_equal(got, _xla_generate(model, prompt, 12))


def test_generate_packs_once_and_repacks_new_weights():
    model = _model(seed=4, tie_embeddings=False)
    prompt = jnp.asarray(np.random.default_rng(1).integers(0, 97, (2, 5)), jnp.int32)
    first = decode_panels(model)
    generate_with_info(model, prompt, 4)
    assert decode_panels(model) is first  # kept with the model
    cfg = model.cfg
    paths = [path for path, m in nnx.iter_modules(model.layers) if isinstance(m, Dense)]
    at = paths.index(("attn", "q_proj"))
    assert len(first) == 7 + 1  # q, k, v, o, gate, up, down stacks + the head
    assert first[at].shape == (cfg.num_layers, -(-cfg.num_heads * cfg.head_dim // 32), cfg.hidden_size, 32)
    q = model.layers.attn.q_proj.kernel
    q.set_value(q.get_value() * 3.0)  # as a training step does: a new array
    again = decode_panels(model)
    assert again is not first
    np.testing.assert_array_equal(pm.unpack(again[at], q.shape[-1]), q.get_value())
    np.testing.assert_array_equal(np.asarray(generate_with_info(model, prompt, 8).tokens),
                                  _xla_generate(model, prompt, 8))


def test_compiled_generate_runs_every_projection_on_the_kernel():
    """Prefill and decode step: each layer's 7 projections and the head are the custom call (2·(7L + 1) in
    all, the first token's head included), and no XLA dot is left with a weight matrix as operand."""
    model = _model(seed=5, tie_embeddings=False)
    cfg = model.cfg
    prompt = jnp.zeros((2, 4), jnp.int32)
    graphdef, state = nnx.split(model)
    hlo = _generate_jit.lower(graphdef, state, prompt, jnp.ones_like(prompt), jnp.zeros((0,), jnp.int32),
                              jnp.asarray(0, jnp.int32), jax.random.key(0), None, None, max_new_tokens=4,
                              max_length=8, sampling=SamplingConfig(0.0, 0, 1.0),
                              panels=decode_panels(model)).compile().as_text()
    calls = re.findall(r'custom_call_target="merg_panel_matmul"', hlo)
    assert len(calls) == 2 * (7 * cfg.num_layers + 1)
    weight_shapes = {"f32[{},{}]".format(*m.kernel.shape[-2:]) for _, m in nnx.iter_modules(model)
                     if hasattr(m, "kernel")}
    dots = [line for line in hlo.splitlines() if re.search(r"\bdot\(", line)]
    assert not [d for d in dots if any(s in d.split("dot(")[1] for s in weight_shapes)], dots
