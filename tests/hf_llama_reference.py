"""Tiny random Hugging Face `LlamaForCausalLM` models (torch, CPU) for parity tests. Test-only: torch is not a
dependency of `merg_jax`.

    path, hf_model = make_hf_llama(tmp_path, num_key_value_heads=1, tie_word_embeddings=True)
    logits = hf_logits(hf_model, tokens)                       # numpy float32 [B, L, V]
    model, cfg = load_hf_llama(path, dtype="float32", compute_dtype="float32")

Every weight is random (biases and norm scales too, so a wrong mapping cannot hide behind zeros or ones).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

TINY_CONFIG: dict[str, Any] = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=56,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    attention_bias=False,
    mlp_bias=False,
)


def hf_llama_config(**overrides):
    """A `transformers.LlamaConfig` from `TINY_CONFIG` + overrides (HF field names). `rope_scaling` (a dict with
    `rope_type`) may be given the legacy way; it is folded into `rope_parameters` for transformers ≥ 5."""
    from transformers import LlamaConfig

    fields = {**TINY_CONFIG, **overrides}
    theta = fields.pop("rope_theta")
    scaling = fields.pop("rope_scaling", None)
    fields.setdefault("rope_parameters", {"rope_type": "default", **(scaling or {}), "rope_theta": theta})
    return LlamaConfig(**fields)


def make_hf_llama(tmp_path, *, seed: int = 0, dtype: str = "float32", subdir: str = "hf",
                  max_shard_size: str | None = None, **config_overrides):
    """Builds a random `LlamaForCausalLM`, saves it (safetensors) under `tmp_path/subdir`.

    dtype: the saved weights' dtype ('float32', 'bfloat16', 'float16'); the returned torch model stays float32
    (when saving in a lower precision, it holds the rounded weights, so it matches what was saved).
    Returns (path, torch_model) with the model in eval mode.
    """
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(hf_llama_config(**config_overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.3 if p.ndim > 1 else 0.2)
            if name.endswith("norm.weight"):  # RMSNorm scales around 1, as in trained models
                p.add_(1.0)
        if dtype != "float32":
            for _, p in model.named_parameters():
                p.copy_(p.to(getattr(torch, dtype)).float())
    path = Path(tmp_path) / subdir
    to_save = model if dtype == "float32" else _cast_copy(model, getattr(torch, dtype))
    kw = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    to_save.save_pretrained(path, **kw)
    return path, model


def _cast_copy(model, dtype):
    import copy

    return copy.deepcopy(model).to(dtype)


def hf_logits(model, tokens, attention_mask=None, position_ids=None) -> np.ndarray:
    """Float32 logits `[B, L, V]` of the torch model (no cache)."""
    import torch

    kw = {}
    if attention_mask is not None:
        kw["attention_mask"] = torch.as_tensor(np.asarray(attention_mask), dtype=torch.long)
    if position_ids is not None:
        kw["position_ids"] = torch.as_tensor(np.asarray(position_ids), dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(np.asarray(tokens), dtype=torch.long), use_cache=False, **kw)
    return out.logits.float().numpy()


def random_tokens(batch: int, length: int, vocab_size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab_size, (batch, length), dtype=np.int32)
