"""Pre-LayerNorm transformer blocks shared by the media encoders, the Content Synchronizer and the Style
Disentangler: LayerNorm, multi-head attention (self or cross, through `merg_jax.kernels.attention`), an MLP, an
encoder layer, a decoder layer (self-attention over queries, cross-attention to a memory) and a stack of layers
whose parameters live on a leading `layers` axis (scanned or unrolled, optionally rematerialised).

Every module takes a config object with the fields of `BlockConfig` (the encoders' `VisionConfig` /
`AudioConfig` have them too). Masks are `[B, S]` booleans over keys (True = a real token): a padded key is never
attended to; a query whose keys are all padding gets zeros (what every attention implementation returns for an
empty row), so padding never produces NaNs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float

from merg_jax.kernels import attention
from merg_jax.models.layers import Dense, param, unstack_layers
from merg_jax.sharding import constrain


def quick_gelu(x):
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable] = {
    "quick_gelu": quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


def check_block_config(cfg, name: str) -> None:
    """The checks every config with `BlockConfig`'s fields shares (errors name the config and the field)."""
    for f in ("hidden_size", "intermediate_size", "num_heads", "num_layers"):
        if getattr(cfg, f) < 1:
            raise ValueError(f"{name}: {f}={getattr(cfg, f)} must be positive")
    if cfg.hidden_size % cfg.num_heads:
        raise ValueError(f"{name}: hidden_size={cfg.hidden_size} is not a multiple of num_heads={cfg.num_heads}")
    if cfg.hidden_act not in ACTIVATIONS:
        raise ValueError(f"{name}: hidden_act={cfg.hidden_act!r} is not supported; choose one of "
                         f"{sorted(ACTIVATIONS)}")
    for f in ("dtype", "param_dtype"):
        try:
            jnp.dtype(getattr(cfg, f))
        except TypeError as e:
            raise ValueError(f"{name}.{f}={getattr(cfg, f)!r} is not a dtype") from e


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """The shape of a transformer stack. Hashable: usable as a static jit argument."""

    hidden_size: int = 512
    intermediate_size: int = 2048
    num_layers: int = 2
    num_heads: int = 8
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu"
    qkv_bias: bool = True
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    attention_impl: str = "auto"
    scan_layers: bool = True
    remat: bool = False  # recompute each layer's activations in the backward pass

    def __post_init__(self):
        check_block_config(self, type(self).__name__)


def _dtypes(cfg):
    return jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)


class LayerNorm(nnx.Module):
    """y = (x - mean) / sqrt(var + eps) * scale + bias, statistics in float32 (as torch.nn.LayerNorm)."""

    def __init__(self, dim: int, *, eps: float, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        self.eps = eps
        self.scale = param(rngs, nnx.initializers.ones, (dim,), ("norm",), param_dtype)
        self.bias = param(rngs, nnx.initializers.zeros, (dim,), ("norm",), param_dtype)

    def __call__(self, x: Float[Array, "... D"]) -> Float[Array, "... D"]:
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...].astype(jnp.float32)
        return (y + self.bias[...].astype(jnp.float32)).astype(x.dtype)


def key_segments(mask: Bool[Array, "B S"] | None, num_queries: int):
    """(q_segment_ids, kv_segment_ids) that make attention skip the keys where `mask` is False."""
    if mask is None:
        return None, None
    return jnp.ones((mask.shape[0], num_queries), jnp.int32), mask.astype(jnp.int32)


class Attention(nnx.Module):
    """Multi-head attention, non-causal: queries from `x`, keys and values from `memory` (self-attention when
    `memory` is None). `bias_kv=True` adds a learned key and value appended to every key sequence
    (`torch.nn.MultiheadAttention(add_bias_kv=True)`, ImageBind's audio tower); it is always visible."""

    def __init__(self, cfg, *, bias_kv: bool = False, rngs: nnx.Rngs):
        d, (dt, pdt) = cfg.hidden_size, _dtypes(cfg)
        self.num_heads, self.impl = cfg.num_heads, cfg.attention_impl
        kw = dict(dtype=dt, param_dtype=pdt, rngs=rngs)
        self.q_proj = Dense(d, d, names=("embed", "q_heads"), use_bias=cfg.qkv_bias, **kw)
        self.k_proj = Dense(d, d, names=("embed", "q_heads"), use_bias=cfg.qkv_bias, **kw)
        self.v_proj = Dense(d, d, names=("embed", "q_heads"), use_bias=cfg.qkv_bias, **kw)
        self.o_proj = Dense(d, d, names=("q_heads", "embed"), use_bias=True, **kw)
        init = nnx.initializers.normal(stddev=d ** -0.5)
        self.bias_k = param(rngs, init, (d,), ("q_heads",), pdt) if bias_kv else None
        self.bias_v = param(rngs, init, (d,), ("q_heads",), pdt) if bias_kv else None

    def __call__(self, x: Float[Array, "B L D"], memory: Float[Array, "B S D"] | None = None,
                 memory_mask: Bool[Array, "B S"] | None = None) -> Float[Array, "B L D"]:
        memory = x if memory is None else memory
        b, length, d = x.shape
        hd = d // self.num_heads
        names = ("batch", "length", "act_heads", None)
        q = constrain(self.q_proj(x).reshape(b, length, self.num_heads, hd), names)
        k = self.k_proj(memory).reshape(b, memory.shape[1], self.num_heads, hd)
        v = self.v_proj(memory).reshape(b, memory.shape[1], self.num_heads, hd)
        if self.bias_k is not None:
            extra = lambda p: jnp.broadcast_to(p[...].astype(k.dtype).reshape(1, 1, self.num_heads, hd),
                                               (b, 1, self.num_heads, hd))
            k = jnp.concatenate([k, extra(self.bias_k)], axis=1)
            v = jnp.concatenate([v, extra(self.bias_v)], axis=1)
            if memory_mask is not None:
                memory_mask = jnp.concatenate([memory_mask, jnp.ones((b, 1), bool)], axis=1)
        q_seg, kv_seg = key_segments(memory_mask, length)
        out = attention(q, constrain(k, names), constrain(v, names), causal=False, q_segment_ids=q_seg,
                        kv_segment_ids=kv_seg, impl=self.impl)
        return self.o_proj(constrain(out, names).reshape(b, length, d))


class Mlp(nnx.Module):
    """fc2(act(fc1(x)))."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        dt, pdt = _dtypes(cfg)
        kw = dict(use_bias=True, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.act = cfg.hidden_act
        self.fc1 = Dense(cfg.hidden_size, cfg.intermediate_size, names=("embed", "mlp"), **kw)
        self.fc2 = Dense(cfg.intermediate_size, cfg.hidden_size, names=("mlp", "embed"), **kw)

    def __call__(self, x: Float[Array, "B L D"]) -> Float[Array, "B L D"]:
        h = ACTIVATIONS[self.act](self.fc1(x))
        return self.fc2(constrain(h, ("batch", "length", "act_mlp")))


class EncoderLayer(nnx.Module):
    """x + attn(ln1(x)) [keys masked by `mask`], then + mlp(ln2(·))."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        kw = dict(eps=cfg.layer_norm_eps, param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
        self.norm1 = LayerNorm(cfg.hidden_size, **kw)
        self.attn = Attention(cfg, bias_kv=getattr(cfg, "attention_bias_kv", False), rngs=rngs)
        self.norm2 = LayerNorm(cfg.hidden_size, **kw)
        self.mlp = Mlp(cfg, rngs=rngs)

    def __call__(self, x: Float[Array, "B L D"], mask: Bool[Array, "B L"] | None = None) -> Float[Array, "B L D"]:
        x = x + self.attn(self.norm1(x), memory_mask=mask)
        x = x + self.mlp(self.norm2(x))
        return constrain(x, ("batch", "length", "act_embed"))


class DecoderLayer(nnx.Module):
    """Queries: x + self_attn(ln1(x)), + cross_attn(ln2(·), memory [keys masked by `memory_mask`]), + mlp(ln3(·)).
    No causal mask: the queries are a set (learnable slots), decoded in one pass."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        kw = dict(eps=cfg.layer_norm_eps, param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
        self.norm1 = LayerNorm(cfg.hidden_size, **kw)
        self.attn = Attention(cfg, rngs=rngs)
        self.norm2 = LayerNorm(cfg.hidden_size, **kw)
        self.cross_attn = Attention(cfg, rngs=rngs)
        self.norm3 = LayerNorm(cfg.hidden_size, **kw)
        self.mlp = Mlp(cfg, rngs=rngs)

    def __call__(self, x: Float[Array, "B Q D"], memory: Float[Array, "B S D"],
                 memory_mask: Bool[Array, "B S"] | None = None) -> Float[Array, "B Q D"]:
        x = x + self.attn(self.norm1(x))
        x = x + self.cross_attn(self.norm2(x), memory, memory_mask)
        x = x + self.mlp(self.norm3(x))
        return constrain(x, ("batch", "length", "act_embed"))


class Stack(nnx.Module):
    """`cfg.num_layers` layers of `layer_cls`, parameters stacked on a leading `layers` axis. `stack(x, *args)`
    runs `layer(x, *args)` for each layer in turn (the extra arguments — masks, a memory — are shared)."""

    def __init__(self, cfg, layer_cls: type[nnx.Module], *, rngs: nnx.Rngs):
        self.num_layers, self.scan, self.remat = cfg.num_layers, cfg.scan_layers, cfg.remat

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_layers(rngs):
            return layer_cls(cfg, rngs=rngs)

        self.layers = make_layers(rngs)

    def __call__(self, x: Float[Array, "B L D"], *args) -> Float[Array, "B L D"]:
        graphdef, params = nnx.split(self.layers)

        def body(h, layer_params):
            return nnx.merge(graphdef, layer_params)(h, *args), None

        if self.remat:
            body = jax.checkpoint(body, prevent_cse=not self.scan)
        if self.scan:
            return jax.lax.scan(body, x, params)[0]
        for layer_params in unstack_layers(params, self.num_layers):
            x, _ = body(x, layer_params)
        return x


class Encoder(Stack):
    """A stack of `EncoderLayer`s: `encoder(x, mask=None)`."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        super().__init__(cfg, EncoderLayer, rngs=rngs)


class Decoder(Stack):
    """A stack of `DecoderLayer`s: `decoder(queries, memory, memory_mask=None)`."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        super().__init__(cfg, DecoderLayer, rngs=rngs)


__all__ = ["ACTIVATIONS", "Attention", "BlockConfig", "Decoder", "DecoderLayer", "Encoder", "EncoderLayer",
           "LayerNorm", "Mlp", "Stack", "check_block_config", "key_segments", "quick_gelu"]
