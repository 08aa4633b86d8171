"""Tiny LLM configs and helpers shared by the model tests."""

from __future__ import annotations

import jax
from flax import nnx

from merg_jax.models import Llm, LlmConfig


def tiny_config(**kw) -> LlmConfig:
    base = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                head_dim=8, dtype="float32", max_position_embeddings=128)
    base.update(kw)
    return LlmConfig(**base)


def tiny_model(seed: int = 0, **kw) -> Llm:
    return Llm(tiny_config(**kw), rngs=nnx.Rngs(seed))


def copy_params(src: Llm, dst: Llm) -> Llm:
    """Copies every parameter `dst` shares with `src` (by path); LoRA adapters of `dst` are left alone."""
    src_flat = dict(nnx.to_flat_state(nnx.state(src, nnx.Param)))
    dst_state = nnx.state(dst, nnx.Param)
    flat = []
    for path, var in nnx.to_flat_state(dst_state):
        if path in src_flat and not isinstance(var, nnx.LoRAParam):
            var = var.replace(src_flat[path][...])
        flat.append((path, var))
    nnx.update(dst, nnx.from_flat_state(flat))
    return dst


def random_tokens(key, batch: int, length: int, vocab: int) -> jax.Array:
    return jax.random.randint(jax.random.key(key), (batch, length), 0, vocab)
