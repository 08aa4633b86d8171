"""Input projections: a media encoder's output → tokens in the LLM's embedding space.

- `"linear"` (the paper): one token per clip, `Dense(embedding_dim → llm_dim)` of the clip's pooled embedding
  (ImageBind's 1024-d embedding → 4096).
- `"resampler"`: `num_tokens` tokens per clip from a small perceiver resampler — `num_tokens` learned latents
  that self-attend and cross-attend to the clip's encoder tokens (projected to the resampler width) through
  `transformer.Decoder`, then `Dense(→ llm_dim)`. The prompt must carry as many `<Aud>`/`<Vid>` slots per clip
  (`data.media_tokens = num_tokens`).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float

from merg_jax.models.encoders import EncoderOutput
from merg_jax.models.layers import Dense, param
from merg_jax.models.transformer import BlockConfig, Decoder, LayerNorm

KINDS = ("linear", "resampler")


@dataclasses.dataclass(frozen=True)
class ProjectionConfig:
    kind: str = "linear"
    num_tokens: int = 1  # tokens per clip ("resampler"; "linear" gives 1)
    hidden_size: int = 1024  # the resampler's width
    num_layers: int = 2
    num_heads: int = 8
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_impl: str = "auto"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"ProjectionConfig.kind={self.kind!r} must be one of {KINDS}")
        if self.kind == "linear" and self.num_tokens != 1:
            raise ValueError(f"ProjectionConfig: kind='linear' gives one token per clip, got num_tokens="
                             f"{self.num_tokens} (use kind='resampler' for several)")
        if self.num_tokens < 1:
            raise ValueError(f"ProjectionConfig.num_tokens={self.num_tokens} must be >= 1")
        if self.kind == "resampler":
            self.block()  # validates the resampler's shape

    def block(self) -> BlockConfig:
        return BlockConfig(hidden_size=self.hidden_size, intermediate_size=4 * self.hidden_size,
                           num_layers=self.num_layers, num_heads=self.num_heads, dtype=self.dtype,
                           param_dtype=self.param_dtype, attention_impl=self.attention_impl)


class PerceiverResampler(nnx.Module):
    """`num_tokens` learned latents ← encoder tokens `[B, T, E]` (key mask `[B, T]`): `[B, num_tokens, D_out]`."""

    def __init__(self, cfg: ProjectionConfig, in_dim: int, out_dim: int, *, rngs: nnx.Rngs):
        block, dt, pdt = cfg.block(), jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.input = Dense(in_dim, cfg.hidden_size, names=("embed", None), use_bias=True, dtype=dt, param_dtype=pdt,
                           rngs=rngs)
        self.latents = param(rngs, nnx.initializers.normal(stddev=0.02), (cfg.num_tokens, cfg.hidden_size),
                             (None, "embed"), pdt)
        self.decoder = Decoder(block, rngs=rngs)
        self.norm = LayerNorm(cfg.hidden_size, eps=block.layer_norm_eps, param_dtype=pdt, rngs=rngs)
        self.output = Dense(cfg.hidden_size, out_dim, names=(None, "embed"), use_bias=True, dtype=dt,
                            param_dtype=pdt, rngs=rngs)

    def __call__(self, tokens: Float[Array, "B T E"], mask: Bool[Array, "B T"] | None = None
                 ) -> Float[Array, "B N D"]:
        memory = self.input(tokens)
        q = jnp.broadcast_to(self.latents[...].astype(memory.dtype), (tokens.shape[0], *self.latents.shape))
        return self.output(self.norm(self.decoder(q, memory, mask)))


class MediaProjector(nnx.Module):
    """One modality's projection. `proj(encoded: EncoderOutput)` → `[B, num_tokens, llm_dim]`."""

    def __init__(self, cfg: ProjectionConfig, *, embedding_dim: int, token_dim: int, llm_dim: int,
                 rngs: nnx.Rngs):
        self.kind = cfg.kind
        if cfg.kind == "linear":
            self.linear = Dense(embedding_dim, llm_dim, names=(None, "embed"), use_bias=True,
                                dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
            self.resampler = None
        else:
            self.linear = None
            self.resampler = PerceiverResampler(cfg, token_dim, llm_dim, rngs=rngs)

    def __call__(self, encoded: EncoderOutput) -> Float[Array, "B N D"]:
        if self.linear is not None:
            return self.linear(encoded.pooled)[:, None]
        return self.resampler(encoded.tokens)


__all__ = ["KINDS", "MediaProjector", "PerceiverResampler", "ProjectionConfig"]
