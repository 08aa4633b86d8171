"""Our `Llm` against Hugging Face PyTorch `LlamaForCausalLM` with the same weights (float32, CPU)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hf_llama_reference import hf_logits, make_hf_llama, random_tokens

from merg_jax.convert import load_hf_llama
from merg_jax.models.rope import inverse_frequencies

TOL = 1e-4

# HF config overrides: multi-head, grouped-query (2 and 1 kv heads), tied, biases, head_dim ≠ hidden/heads.
CONFIGS = {
    "multi_head": {},
    "gqa_2kv": dict(num_key_value_heads=2),
    "mqa_1kv": dict(num_key_value_heads=1),
    "tied": dict(tie_word_embeddings=True, num_key_value_heads=2),
    "biases": dict(attention_bias=True, mlp_bias=True),
    "head_dim_16": dict(head_dim=16, num_key_value_heads=2),
    "three_layers_theta": dict(num_hidden_layers=3, rope_theta=500000.0, rms_norm_eps=1e-6),
}


def _load(path, **kw):
    return load_hf_llama(path, dtype="float32", compute_dtype="float32", **kw)


@nnx.jit
def _forward(model, tokens, positions=None, segment_ids=None):
    return model(tokens, positions=positions, segment_ids=segment_ids)


def logits(model, tokens, **kw) -> np.ndarray:
    """Our float32 logits as numpy (jitted: compiling once is faster than running eagerly)."""
    return np.asarray(_forward(model, jnp.asarray(tokens), **{k: jnp.asarray(v) for k, v in kw.items()}))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_hf(tmp_path, name):
    path, hf = make_hf_llama(tmp_path, **CONFIGS[name])
    model, cfg = _load(path)
    tokens = random_tokens(2, 12, cfg.vocab_size, seed=1)
    ours = logits(model, tokens)
    np.testing.assert_allclose(ours, hf_logits(hf, tokens), atol=TOL, rtol=0)


def test_llama3_rope_scaling_matches_hf(tmp_path):
    # head_dim 16, theta 1e4: wavelengths 6.3, 20, 63, 200, …; original length 32 with low/high factors 1/4 puts
    # them in all three regions (kept < 8 ≤ blended ≤ 32 < divided by factor), and 64 positions reach past 32.
    scaling = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=32)
    path, hf = make_hf_llama(tmp_path, head_dim=16, num_key_value_heads=2, rope_scaling=scaling)
    model, cfg = _load(path)
    assert cfg.rope_llama3_scaling == (8.0, 1.0, 4.0, 32)
    wavelen = 2 * np.pi / np.asarray(inverse_frequencies(16, cfg.rope_theta))
    assert (wavelen < 8).any() and ((wavelen >= 8) & (wavelen <= 32)).any() and (wavelen > 32).any()

    tokens = random_tokens(1, 64, cfg.vocab_size, seed=2)
    ours = logits(model, tokens)
    np.testing.assert_allclose(ours, hf_logits(hf, tokens), atol=TOL, rtol=0)
    unscaled, _ = _load(path, rope_llama3_scaling=None)
    assert np.abs(logits(unscaled, tokens) - ours).max() > 1e-2, "scaling made no difference"


def test_padded_batch_matches_hf(tmp_path):
    """Left- and right-padded rows: attention mask → segment ids (0 = padding), positions = cumsum(mask) - 1 as
    HF's generate computes them; only real tokens are compared."""
    path, hf = make_hf_llama(tmp_path, num_key_value_heads=2)
    model, cfg = _load(path)
    tokens = random_tokens(3, 10, cfg.vocab_size, seed=3)
    mask = np.ones_like(tokens)
    mask[0, :3] = 0  # left padding
    mask[1, -2:] = 0  # right padding
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    ref = hf_logits(hf, tokens, attention_mask=mask, position_ids=positions)
    ours = logits(model, tokens, positions=positions, segment_ids=mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], ref[real], atol=TOL, rtol=0)
    # The left-padded row equals the same tokens run unpadded.
    alone = hf_logits(hf, tokens[:1, 3:])
    np.testing.assert_allclose(ours[0, 3:], alone[0], atol=TOL, rtol=0)


@pytest.mark.parametrize("variant", [dict(scan_layers=False), dict(remat="full"),
                                     dict(scan_layers=False, remat="full")], ids=["unrolled", "remat", "both"])
def test_layer_loop_variants_match_hf(tmp_path, variant):
    path, hf = make_hf_llama(tmp_path, num_hidden_layers=3, num_key_value_heads=2, attention_bias=True)
    model, cfg = _load(path, **variant)
    assert all(getattr(cfg, k) == v for k, v in variant.items())
    tokens = random_tokens(2, 9, cfg.vocab_size, seed=4)
    np.testing.assert_allclose(logits(model, tokens), hf_logits(hf, tokens), atol=TOL, rtol=0)


def test_lora_initialised_to_identity(tmp_path):
    """Fresh adapters (B = 0) leave the checkpoint's function unchanged."""
    path, hf = make_hf_llama(tmp_path, num_key_value_heads=2)
    model, _ = _load(path, lora_rank=4, lora_targets=("q", "v", "gate"))
    assert float(jnp.abs(model.layers.attn.q_proj.lora_a[...]).max()) > 0
    assert float(jnp.abs(model.layers.attn.q_proj.lora_b[...]).max()) == 0
    tokens = random_tokens(1, 8, 97, seed=5)
    np.testing.assert_allclose(logits(model, tokens), hf_logits(hf, tokens), atol=TOL, rtol=0)
