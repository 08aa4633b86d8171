"""What the Content Synchronizer and the Style Disentangler share: their config fields, the memory they build from
the LLM's hidden features, and a decoder over learnable queries that reads it.

`FeatureMemory(features)`: the paper's two-layer FFN (llm_dim → hidden → hidden) over each available source
(r^t, and r^s / r^v when present), plus a learned type embedding per source and a sinusoidal position within the
source, concatenated along the length axis and run through a pre-LN transformer encoder with key masks and a final
LayerNorm → memory `[B, S, hidden]` and its mask `[B, S]`.

`QueryDecoder(memory, mask)`: `num_queries` learnable query vectors → a pre-LN transformer decoder (self-attention
among the queries, cross-attention to the memory) → final LayerNorm → `[B, num_queries, hidden]`.

Both modules are built once per owner (the CS and the SD each have their own parameters).
"""

from __future__ import annotations

import dataclasses
import math
import types

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float

from merg_jax.kernels import IMPLS
from merg_jax.models.hidden_features import HiddenFeatures
from merg_jax.models.layers import Dense, param
from merg_jax.models.transformer import ACTIVATIONS, BlockConfig, Decoder, Encoder, LayerNorm, check_block_config
from merg_jax.sharding import constrain

SOURCES = ("text", "speech", "video")  # the row of the type embedding each source adds


@dataclasses.dataclass(frozen=True)
class MemoryConfig:
    """The fields of an "FFN + encoder memory + query decoder" model (defaults: the paper's scale)."""

    llm_dim: int = 4096  # width of the LLM's hidden features (Vicuna-7B)
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_heads: int = 12
    encoder_layers: int = 2
    decoder_layers: int = 2
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    attention_impl: str = "auto"
    scan_layers: bool = True
    remat: bool = False  # recompute each layer's activations in the backward pass

    def __post_init__(self):
        name = type(self).__name__
        for f in ("llm_dim", "encoder_layers", "decoder_layers"):
            _check_positive(self, name, f)
        if not self.layer_norm_eps > 0:
            raise ValueError(f"{name}: layer_norm_eps={self.layer_norm_eps} must be positive")
        if self.attention_impl not in IMPLS:
            raise ValueError(f"{name}: attention_impl={self.attention_impl!r} is not one of {IMPLS}")
        # The shared transformer checks (hidden_size, intermediate_size, num_heads, hidden_act, dtypes), on a
        # view whose layer count is already known valid, so their errors name this config's own fields.
        view = types.SimpleNamespace(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
                                     num_layers=1)
        check_block_config(view, name)

    def block(self, num_layers: int) -> BlockConfig:
        """The `transformer.BlockConfig` of one of this model's stacks (`encoder_layers` or `decoder_layers`)."""
        return BlockConfig(hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
                           num_layers=num_layers, num_heads=self.num_heads, layer_norm_eps=self.layer_norm_eps,
                           hidden_act=self.hidden_act, qkv_bias=True, dtype=self.dtype, param_dtype=self.param_dtype,
                           attention_impl=self.attention_impl, scan_layers=self.scan_layers, remat=self.remat)


def _check_positive(cfg, name: str, field: str) -> None:
    value = getattr(cfg, field)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: {field}={value!r} must be a positive int")


def sinusoid(positions: Array, dim: int) -> Float[Array, "... dim"]:
    """Transformer sinusoidal encoding (sin on even, cos on odd channels) of integer `positions`, float32."""
    half = (dim + 1) // 2
    freq = jnp.exp(-math.log(10000.0) * (2 * jnp.arange(half, dtype=jnp.float32) / dim))
    angle = positions.astype(jnp.float32)[..., None] * freq
    return jnp.stack([jnp.sin(angle), jnp.cos(angle)], axis=-1).reshape(*positions.shape, 2 * half)[..., :dim]


def _sources(features: HiddenFeatures, llm_dim: int):
    """[(type index, x [B, L, D], mask [B, L])] for each source present, after checking shapes."""
    if not isinstance(features, HiddenFeatures):
        raise ValueError(f"features: expected a HiddenFeatures, got {type(features).__name__}")
    out, batch = [], None
    for i, name in enumerate(SOURCES):
        x, mask = getattr(features, name), getattr(features, f"{name}_mask")
        if x is None:
            if mask is not None:
                raise ValueError(f"features.{name}_mask is given but features.{name} is None")
            if name == "text":
                raise ValueError("features.text is required")
            continue
        if x.ndim != 3 or x.shape[-1] != llm_dim:
            raise ValueError(f"features.{name}: shape {tuple(x.shape)} is not [B, L, llm_dim={llm_dim}]")
        if mask is None:
            mask = jnp.ones(x.shape[:2], bool)
        if tuple(mask.shape) != tuple(x.shape[:2]):
            raise ValueError(f"features.{name}_mask: shape {tuple(mask.shape)} does not match "
                             f"features.{name} {tuple(x.shape)}")
        if batch is not None and x.shape[0] != batch:
            raise ValueError(f"features.{name}: batch {x.shape[0]} differs from features.text's {batch}")
        batch = x.shape[0]
        out.append((i, x, mask.astype(bool)))
    return out


class FeatureMemory(nnx.Module):
    """LLM hidden features → encoder memory. `memory(features)` → (memory [B, S, hidden], mask [B, S]), where S is
    the sum of the present sources' lengths (text first, then speech, then video); padded positions are zero."""

    def __init__(self, cfg: MemoryConfig, *, rngs: nnx.Rngs):
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        kw = dict(use_bias=True, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.llm_dim, self.hidden_size, self.act, self.dtype = cfg.llm_dim, cfg.hidden_size, cfg.hidden_act, dt
        self.ffn_in = Dense(cfg.llm_dim, cfg.hidden_size, names=("embed", "mlp"), **kw)
        self.ffn_out = Dense(cfg.hidden_size, cfg.hidden_size, names=("mlp", "embed"), **kw)
        self.type_embedding = param(rngs, nnx.initializers.normal(stddev=0.02), (len(SOURCES), cfg.hidden_size),
                                    (None, "embed"), pdt)
        self.encoder = Encoder(cfg.block(cfg.encoder_layers), rngs=rngs)
        self.norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, param_dtype=pdt, rngs=rngs)

    def __call__(self, features: HiddenFeatures) -> tuple[Float[Array, "B S H"], Bool[Array, "B S"]]:
        parts, masks = [], []
        for i, x, mask in _sources(features, self.llm_dim):
            h = self.ffn_out(ACTIVATIONS[self.act](self.ffn_in(x)))
            # Position = rank among the source's valid tokens, so where the padding sits (right, left, or
            # appended) never changes a real token's input; without it the encoder would not see word order.
            pos = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
            extra = sinusoid(pos, self.hidden_size) + self.type_embedding[i].astype(jnp.float32)
            parts.append(h + extra.astype(h.dtype))
            masks.append(mask)
        x = jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        mask = jnp.concatenate(masks, axis=1) if len(masks) > 1 else masks[0]
        x = constrain(x, ("batch", "length", "act_embed"))
        memory = self.norm(self.encoder(x, mask))
        return memory * mask[..., None].astype(memory.dtype), mask


class QueryDecoder(nnx.Module):
    """`num_queries` learnable queries decoded against a memory: `dec(memory, mask)` → `[B, num_queries, hidden]`
    (after a final LayerNorm; a row whose memory is all padding still gives finite values)."""

    def __init__(self, cfg: MemoryConfig, num_queries: int, *, rngs: nnx.Rngs):
        pdt = jnp.dtype(cfg.param_dtype)
        self.dtype = jnp.dtype(cfg.dtype)
        self.queries = param(rngs, nnx.initializers.normal(stddev=0.02), (num_queries, cfg.hidden_size),
                             (None, "embed"), pdt)
        self.decoder = Decoder(cfg.block(cfg.decoder_layers), rngs=rngs)
        self.norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, param_dtype=pdt, rngs=rngs)

    def __call__(self, memory: Float[Array, "B S H"], mask: Bool[Array, "B S"]) -> Float[Array, "B Q H"]:
        q = jnp.broadcast_to(self.queries[...].astype(self.dtype), (memory.shape[0], *self.queries.shape))
        q = constrain(q, ("batch", "length", "act_embed"))
        return self.norm(self.decoder(q, memory.astype(self.dtype), mask))


__all__ = ["SOURCES", "FeatureMemory", "MemoryConfig", "QueryDecoder", "sinusoid"]
