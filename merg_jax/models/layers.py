"""Small NNX building blocks shared by every model: parameters with logical axis names, RMSNorm, a dense
projection with an optional LoRA adapter, and token embeddings."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from merg_jax.kernels import panel_matmul

Initializer = Callable[..., jax.Array]


def param(rngs: nnx.Rngs | None, init: Initializer, shape: Sequence[int], names: Sequence[str | None],
          dtype=jnp.float32, kind: type[nnx.Param] = nnx.Param) -> nnx.Param:
    """A parameter tagged with logical axis names (mapped to mesh axes by `merg_jax.sharding.rules`).

    Eager sharding is off: placement happens once, for the whole state, in `merg_jax.models.init` — a model
    never needs a mesh to be built.
    """
    if len(names) != len(shape):
        raise ValueError(f"param of shape {tuple(shape)} given {len(names)} axis names {tuple(names)}")
    key = rngs.params() if rngs is not None else jax.random.key(0)
    return kind(init(key, tuple(shape), dtype), out_sharding=tuple(names), eager_sharding=False)


class RMSNorm(nnx.Module):
    """y = x / rms(x) * w, statistics in float32 (as Hugging Face LLaMA)."""

    def __init__(self, dim: int, *, eps: float = 1e-6, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        self.eps = eps
        self.scale = param(rngs, nnx.initializers.ones, (dim,), ("norm",), param_dtype)

    def __call__(self, x: Float[Array, "... D"]) -> Float[Array, "... D"]:
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(x.dtype) * xf.astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class PanelView:
    """Where a `Dense` reads its weights after `use_panels`: matrix `layer` of a panel-packed stack, `out` columns."""

    layer: int
    out: int


class Dense(nnx.Module):
    """y = x·W (+ b) (+ scale·dropout(x)·A·B), kernel `[in, out]`, computed in `dtype`.

    The LoRA adapter (when `lora_rank > 0`) is stored as `nnx.LoRAParam` so optimisers and filters can tell it
    from the base weights. B starts at zero, so the adapted layer equals the base one at initialisation.
    For decoding on CPU, `use_panels` points the base product at `kernels.panel_matmul` instead.
    """

    def __init__(self, in_features: int, out_features: int, *, names: tuple[str, str], use_bias: bool = False,
                 dtype=jnp.float32, param_dtype=jnp.float32, lora_rank: int = 0, lora_scale: float = 1.0,
                 lora_dropout: float = 0.0, kernel_init: Initializer | None = None, rngs: nnx.Rngs | None = None):
        self.dtype = dtype
        kernel_init = kernel_init or nnx.initializers.normal(stddev=1.0 / math.sqrt(in_features))
        self.kernel = param(rngs, kernel_init, (in_features, out_features), names, param_dtype)
        self.bias = param(rngs, nnx.initializers.zeros, (out_features,), names[1:], param_dtype) if use_bias else None
        self.lora_rank, self.lora_scale, self.lora_dropout = lora_rank, lora_scale, lora_dropout
        if lora_rank:
            # peft's default: kaiming-uniform A, zero B.
            a_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
            self.lora_a = param(rngs, a_init, (in_features, lora_rank), (names[0], "lora_rank"), param_dtype,
                                nnx.LoRAParam)
            self.lora_b = param(rngs, nnx.initializers.zeros, (lora_rank, out_features), ("lora_rank", names[1]),
                                param_dtype, nnx.LoRAParam)
        else:
            self.lora_a = self.lora_b = None
        self.panels: PanelView | None = None

    def use_panels(self, packed: Float[Array, "L P I 32"], layer: int) -> None:
        """Decode only, on a trace-local copy: from now on the kernel is `packed` (`panel_matmul.pack` of the
        stacked kernels this layer's came from) and the base product runs `panel_matmul` on matrix `layer`."""
        self.panels = PanelView(layer, self.kernel.shape[-1])
        self.kernel.set_value(packed)

    def __call__(self, x: Float[Array, "... I"], *, dropout_rng: jax.Array | None = None) -> Float[Array, "... O"]:
        lead = x.shape[:-1]
        # One 2-D matmul over all tokens: XLA:CPU runs the weight gradient of the batched form much slower.
        x = x.astype(self.dtype).reshape(-1, x.shape[-1])
        if self.panels is not None:
            y = panel_matmul.panel_matmul(x, self.kernel[...], self.panels.out, self.panels.layer)
        else:
            y = jnp.einsum("ni,io->no", x, self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        if self.lora_a is not None:
            xl = x
            if dropout_rng is not None and self.lora_dropout > 0:
                keep = jax.random.bernoulli(dropout_rng, 1.0 - self.lora_dropout, x.shape)
                xl = jnp.where(keep, x / (1.0 - self.lora_dropout), 0).astype(x.dtype)
            low = jnp.einsum("ni,ir->nr", xl, self.lora_a[...].astype(self.dtype))
            y = y + self.lora_scale * jnp.einsum("nr,ro->no", low, self.lora_b[...].astype(self.dtype))
        return y.reshape(*lead, y.shape[-1])

    def merge_lora(self) -> None:
        """Folds the adapter into the kernel and zeroes B: same function, no adapter cost."""
        if self.lora_a is None:
            return
        delta = self.lora_scale * (self.lora_a[...].astype(jnp.float32) @ self.lora_b[...].astype(jnp.float32))
        self.kernel[...] = (self.kernel[...].astype(jnp.float32) + delta).astype(self.kernel.dtype)
        self.lora_b[...] = jnp.zeros_like(self.lora_b[...])


class Embed(nnx.Module):
    """Token embedding table `[vocab, embed]`; `attend` reuses it as the output projection when tied."""

    def __init__(self, vocab_size: int, dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs | None = None):
        self.dtype = dtype
        # std 1/sqrt(dim): with tied embeddings the initial logits then have unit scale (std 1 gave logits of
        # scale sqrt(dim) and an initial loss ~10x log(vocab)); close to LLaMA's 0.02 at 7B widths.
        self.embedding = param(rngs, nnx.initializers.normal(stddev=1.0 / math.sqrt(dim)), (vocab_size, dim),
                               ("vocab", "embed"), param_dtype)

    def __call__(self, tokens: Int[Array, "B L"]) -> Float[Array, "B L D"]:
        return jnp.take(self.embedding[...], tokens, axis=0).astype(self.dtype)

    def attend(self, x: Float[Array, "B L D"]) -> Float[Array, "B L V"]:
        return jnp.einsum("bld,vd->blv", x.astype(self.dtype), self.embedding[...].astype(self.dtype))


def masked_mean(x: Float[Array, "B T D"], mask: Bool[Array, "B T"] | None = None) -> Float[Array, "B D"]:
    """Mean over T in float32 (over the entries where `mask` is true, when given; zeros for a row with none)."""
    xf = x.astype(jnp.float32)
    if mask is None:
        return jnp.mean(xf, axis=1)
    w = jnp.asarray(mask, jnp.float32)[..., None]
    return jnp.sum(xf * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)


def unstack_layers(params, n: int) -> list:
    """Stacked `[n, ...]` layer parameters (any pytree) → `n` per-layer trees, for running the layers unrolled.

    Through `jnp.split`, whose gradient is one concatenation; indexing each layer (`a[i]`) instead has one
    zero-padded, full-stack gradient per layer for XLA to add up (33.5M LLM training, forward + backward:
    537.8 → 522.9 ms, docs/performance.md).
    """
    leaves, treedef = jax.tree.flatten(params)
    pieces = [jnp.split(a, n, axis=0) for a in leaves]
    return [jax.tree.unflatten(treedef, [p[i][0] for p in pieces]) for i in range(n)]
