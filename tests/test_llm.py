"""The LLM's own invariants: cache = full forward, layout options don't change the function, masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_testing import copy_params, random_tokens, tiny_model
from merg_jax.models import KVCache


def test_prefill_plus_decode_equals_full_forward():
    model = tiny_model()
    tokens = random_tokens(0, 2, 12, model.cfg.vocab_size)
    full = model(tokens)
    cache = KVCache.init(model.cfg, 2, 16)
    chunks = []
    for lo, hi in [(0, 5), (5, 6), (6, 7), (7, 12)]:
        logits, cache = model(tokens[:, lo:hi], cache=cache)
        chunks.append(logits)
    np.testing.assert_allclose(jnp.concatenate(chunks, axis=1), full, atol=1e-5)
    assert int(cache.index) == 12


@pytest.mark.parametrize("variant", [dict(scan_layers=False), dict(remat="full"), dict(remat="dots_no_batch"),
                                     dict(scan_layers=False, remat="dots")])
def test_scan_and_remat_do_not_change_the_function(variant):
    base = tiny_model()
    other = copy_params(base, tiny_model(seed=5, **variant))
    tokens = random_tokens(1, 2, 10, base.cfg.vocab_size)
    np.testing.assert_allclose(other(tokens), base(tokens), atol=1e-5)

    def loss(m):
        return jnp.mean(m(tokens) ** 2)

    from flax import nnx
    g_base = jax.tree.leaves(nnx.grad(loss)(base))
    g_other = jax.tree.leaves(nnx.grad(loss)(other))
    for a, b in zip(g_base, g_other):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_unrolled_layers_gradient_is_not_padded_per_layer():
    """Unrolled, each layer reads its slice of the stacked parameters; the gradient of the stack is assembled
    once (a concatenation), not as one zero-padded stack-sized array per layer added up (what indexing each
    layer, `a[i]`, compiles to: this test finds those pads on that code)."""
    import re

    from flax import nnx

    model = tiny_model(num_layers=3, scan_layers=False)
    tokens = random_tokens(1, 2, 8, model.cfg.vocab_size)
    graphdef, state = nnx.split(model)

    def loss(st):
        return jnp.mean(nnx.merge(graphdef, st)(tokens) ** 2)

    hlo = jax.jit(jax.grad(loss)).lower(state).compile().as_text()
    n = model.cfg.num_layers
    stacked = {tuple(a.shape) for a in jax.tree.leaves(nnx.state(model.layers)) if a.ndim >= 2 and a.shape[0] == n}
    pads = [dims for dims in re.findall(r"= f32\[([\d,]+)\]\S* pad\(", hlo)
            if tuple(int(d) for d in dims.split(",")) in stacked]
    assert stacked and pads == [], f"per-layer padded gradients of stacked parameters: {pads}"


def test_embeddings_input_equals_tokens_input():
    model = tiny_model()
    tokens = random_tokens(2, 2, 7, model.cfg.vocab_size)
    np.testing.assert_allclose(model(embeddings=model.embed_tokens(tokens)), model(tokens), atol=1e-6)
    with pytest.raises(ValueError, match="exactly one of tokens or embeddings"):
        model.forward(tokens, embeddings=model.embed_tokens(tokens))


def test_packed_segments_equal_separate_sequences():
    model = tiny_model()
    a = random_tokens(3, 1, 5, model.cfg.vocab_size)
    b = random_tokens(4, 1, 7, model.cfg.vocab_size)
    packed = jnp.concatenate([a, b], axis=1)
    segments = jnp.array([[1] * 5 + [2] * 7])
    positions = jnp.array([list(range(5)) + list(range(7))])
    out = model(packed, segment_ids=segments, positions=positions)
    np.testing.assert_allclose(out[:, :5], model(a), atol=1e-5)
    np.testing.assert_allclose(out[:, 5:], model(b), atol=1e-5)


def test_span_tokens_see_each_other_but_text_stays_causal():
    model = tiny_model()
    tokens = random_tokens(5, 1, 8, model.cfg.vocab_size)
    spans = jnp.array([[0, 0, 1, 1, 1, 0, 0, 0]])
    base = model(tokens, span_ids=spans)
    changed = model(tokens.at[0, 4].set((tokens[0, 4] + 1) % model.cfg.vocab_size), span_ids=spans)
    diff = jnp.abs(changed - base).max(axis=-1)[0]
    assert float(diff[:2].max()) == 0.0  # text before the span never sees it
    assert float(diff[2:4].min()) > 0.0  # earlier tokens of the span see the changed later one
    # and without spans, the earlier positions are untouched (plain causal)
    plain = jnp.abs(model(tokens.at[0, 4].set((tokens[0, 4] + 1) % model.cfg.vocab_size)) - model(tokens))
    assert float(plain.max(axis=-1)[0, :4].max()) == 0.0


def test_bfloat16_compute_tracks_float32():
    f32 = tiny_model()
    bf16 = copy_params(f32, tiny_model(seed=3, dtype="bfloat16"))
    tokens = random_tokens(6, 2, 9, f32.cfg.vocab_size)
    out = bf16(tokens)
    assert out.dtype == jnp.float32 and bf16.layers.attn.q_proj.kernel[...].dtype == jnp.float32
    np.testing.assert_allclose(out, f32(tokens), atol=0.1)


def test_config_errors_name_the_field():
    from merg_jax.models import LlmConfig

    with pytest.raises(ValueError, match="num_kv_heads"):
        LlmConfig(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="remat"):
        LlmConfig(remat="sometimes")
    with pytest.raises(ValueError, match="unknown keys.*'hiden_size'"):
        LlmConfig.from_dict({"hiden_size": 3})
