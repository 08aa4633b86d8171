"""The LLM's Hugging Face parity with every attention kernel (Pallas ones in interpret mode on CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hf_llama_reference import hf_logits, make_hf_llama, random_tokens

from merg_jax.convert import load_hf_llama
from merg_jax.infer import generate
from test_llm_hf_parity import TOL, logits

KERNELS = ["blockwise", "pallas_tpu", "pallas_gpu"]


@pytest.mark.parametrize("impl", KERNELS)
def test_logits_and_padded_batch_match_hf(tmp_path, impl):
    path, hf = make_hf_llama(tmp_path, num_key_value_heads=2)
    model, cfg = load_hf_llama(path, dtype="float32", compute_dtype="float32", attention_impl=impl)
    assert cfg.attention_impl == impl
    tokens = random_tokens(2, 20, cfg.vocab_size, seed=11)
    mask = np.ones_like(tokens)
    mask[0, :5] = 0  # a left-padded row: padding is its own segment, invisible to real tokens
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    ours = logits(model, tokens, positions=positions, segment_ids=mask)
    ref = hf_logits(hf, tokens, attention_mask=mask, position_ids=positions)
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], ref[real], atol=TOL, rtol=0)


@pytest.mark.parametrize("impl", KERNELS)
def test_greedy_generation_matches_hf_generate(tmp_path, impl):
    path, hf = make_hf_llama(tmp_path, num_key_value_heads=2, tie_word_embeddings=True)
    model, cfg = load_hf_llama(path, dtype="float32", compute_dtype="float32", attention_impl=impl)
    prompt = random_tokens(1, 9, cfg.vocab_size, seed=12)
    ours = np.asarray(generate(model, prompt, 8))
    with torch.no_grad():
        ref = hf.generate(input_ids=torch.as_tensor(prompt, dtype=torch.long), do_sample=False, max_new_tokens=8,
                          min_new_tokens=8, num_beams=1, use_cache=True, pad_token_id=0)
    np.testing.assert_array_equal(ours, ref[:, prompt.shape[1]:].numpy())
