"""`LlmConfig`: the shape and numerics of a LLaMA-family backbone (hashable, so it can be a static jit arg)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclasses.dataclass(frozen=True)
class LlmConfig:
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int | None = None  # None: same as num_heads (multi-head)
    head_dim: int | None = None  # None: hidden_size // num_heads
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # None, or the llama3 rule: (factor, low_freq_factor, high_freq_factor, original_max_position_embeddings)
    rope_llama3_scaling: tuple[float, float, float, int] | None = None
    max_position_embeddings: int = 2048
    tie_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    dtype: str = "bfloat16"  # compute dtype
    param_dtype: str = "float32"  # master weights
    remat: str = "none"
    scan_layers: bool = True
    attention_impl: str = "auto"
    lora_rank: int = 0  # 0: no adapters
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q", "k", "v", "o")

    def __post_init__(self):
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"model.num_heads={self.num_heads} must be a multiple of "
                             f"model.num_kv_heads={self.num_kv_heads}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"model.remat={self.remat!r}: choose one of {REMAT_POLICIES}")
        bad = [t for t in self.lora_targets if t not in LORA_TARGETS]
        if bad:
            raise ValueError(f"model.lora_targets has unknown projections {bad}; choose from {LORA_TARGETS}")
        for f in ("dtype", "param_dtype"):
            try:
                jnp.dtype(getattr(self, f))
            except TypeError as e:
                raise ValueError(f"model.{f}={getattr(self, f)!r} is not a dtype") from e

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self):
        return jnp.dtype(self.param_dtype)

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

    def replace(self, **kw) -> LlmConfig:
        return dataclasses.replace(self, **kw)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LlmConfig:
        """From a config section (`config.model`); unknown keys are an error that names them."""
        fields = {f.name for f in dataclasses.fields(cls)}
        d = dict(d)
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"model config has unknown keys {unknown}; known: {sorted(fields)}")
        for k in ("lora_targets", "rope_llama3_scaling"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def num_params(self, *, include_lora: bool = True) -> int:
        d, f, v, k = self.hidden_size, self.intermediate_size, self.vocab_size, self.head_dim
        q, kv = self.num_heads * k, self.num_kv_heads * k
        per_layer = d * q + 2 * d * kv + q * d + 3 * d * f + 2 * d
        if self.attention_bias:
            per_layer += q + 2 * kv + d
        if self.mlp_bias:
            per_layer += 2 * f + d
        if include_lora and self.lora_rank:
            io = {"q": (d, q), "k": (d, kv), "v": (d, kv), "o": (q, d), "gate": (d, f), "up": (d, f), "down": (f, d)}
            per_layer += sum(self.lora_rank * (io[t][0] + io[t][1]) for t in self.lora_targets)
        return self.num_layers * per_layer + v * d * (1 if self.tie_embeddings else 2) + d
