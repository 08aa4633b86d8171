"""LLaMA-family decoder (Vicuna, LLaMA 2/3, TinyLlama ...) in Flax NNX.

RMSNorm → grouped-query attention with RoPE (through `merg_jax.kernels.attention`) → RMSNorm → SwiGLU MLP,
pre-norm residual blocks. Parameters are float32 master weights by default and cast to the compute dtype at
use. The layers' parameters are always stored stacked on a leading `layers` axis; `scan_layers` only chooses
whether the forward pass scans over them or unrolls, so checkpoints do not depend on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from merg_jax.kernels import attention, from_kv_rows, kv_rows
from merg_jax.kernels.panel_matmul import pack as pack_panels
from merg_jax.models.kv_cache import KVCache
from merg_jax.models.layers import Dense, Embed, RMSNorm, unstack_layers
from merg_jax.models.llm_config import LlmConfig
from merg_jax.models.rope import apply_rope, inverse_frequencies, rope_tables
from merg_jax.sharding import constrain

_REMAT = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class MaskContext:
    """What every layer needs to build its attention mask and rotate its q/k."""

    rope_cos: Float[Array, "B L 1 K"]  # `rope_tables` of the RoPE positions, made once per forward
    rope_sin: Float[Array, "B L 1 K"]
    q_segment_ids: Int[Array, "B L"] | None
    kv_segment_ids: Int[Array, "B S"] | None
    q_span_ids: Int[Array, "B L"] | None
    kv_span_ids: Int[Array, "B S"] | None
    q_positions: Int[Array, "B L"] | None  # causal order; None: index in the sequence
    kv_positions: Int[Array, "B S"] | None
    cache_index: Int[Array, ""] | None  # where this chunk's k/v go in the cache


def _dense(cfg: LlmConfig, name: str, n_in: int, n_out: int, names, bias: bool, rngs) -> Dense:
    lora = cfg.lora_rank if name in cfg.lora_targets else 0
    return Dense(n_in, n_out, names=names, use_bias=bias, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                 lora_rank=lora, lora_scale=cfg.lora_scale, lora_dropout=cfg.lora_dropout, rngs=rngs)


class Attention(nnx.Module):
    def __init__(self, cfg: LlmConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, q, kv, b = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.attention_bias
        self.q_proj = _dense(cfg, "q", d, q, ("embed", "q_heads"), b, rngs)
        self.k_proj = _dense(cfg, "k", d, kv, ("embed", "kv_heads"), b, rngs)
        self.v_proj = _dense(cfg, "v", d, kv, ("embed", "kv_heads"), b, rngs)
        self.o_proj = _dense(cfg, "o", q, d, ("q_heads", "embed"), b, rngs)

    def __call__(self, x: Float[Array, "B L D"], ctx: MaskContext, cache_kv=None, rngs=None):
        cfg = self.cfg
        bsz, length, _ = x.shape
        r = [None] * 4 if rngs is None else list(jax.random.split(rngs, 4))
        q = self.q_proj(x, dropout_rng=r[0]).reshape(bsz, length, cfg.num_heads, cfg.head_dim)
        k = self.k_proj(x, dropout_rng=r[1]).reshape(bsz, length, cfg.num_kv_heads, cfg.head_dim)
        v = self.v_proj(x, dropout_rng=r[2]).reshape(bsz, length, cfg.num_kv_heads, cfg.head_dim)
        q = constrain(apply_rope(q, ctx.rope_cos, ctx.rope_sin), ("batch", "length", "act_heads", None))
        k = constrain(apply_rope(k, ctx.rope_cos, ctx.rope_sin), ("batch", "length", "act_kv_heads", None))
        v = constrain(v, ("batch", "length", "act_kv_heads", None))
        if cache_kv is not None:  # rows `[B·Hk, S, K]` (KVCache): write this chunk's slots, read the views back
            cache_kv = tuple(jax.lax.dynamic_update_slice(c, kv_rows(x).astype(c.dtype), (0, ctx.cache_index, 0))
                             for c, x in zip(cache_kv, (k, v)))
            k, v = (from_kv_rows(c, bsz) for c in cache_kv)
        out = attention(q, k.astype(q.dtype), v.astype(q.dtype), causal=True,
                        q_segment_ids=ctx.q_segment_ids, kv_segment_ids=ctx.kv_segment_ids,
                        q_span_ids=ctx.q_span_ids, kv_span_ids=ctx.kv_span_ids,
                        q_positions=ctx.q_positions, kv_positions=ctx.kv_positions, impl=cfg.attention_impl)
        out = constrain(out, ("batch", "length", "act_heads", None)).reshape(bsz, length, -1)
        return self.o_proj(out, dropout_rng=r[3]), cache_kv


class Mlp(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: LlmConfig, *, rngs: nnx.Rngs):
        d, f, b = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        self.gate_proj = _dense(cfg, "gate", d, f, ("embed", "mlp"), b, rngs)
        self.up_proj = _dense(cfg, "up", d, f, ("embed", "mlp"), b, rngs)
        self.down_proj = _dense(cfg, "down", f, d, ("mlp", "embed"), b, rngs)

    def __call__(self, x: Float[Array, "B L D"], rngs=None) -> Float[Array, "B L D"]:
        r = [None] * 3 if rngs is None else list(jax.random.split(rngs, 3))
        h = jax.nn.silu(self.gate_proj(x, dropout_rng=r[0])) * self.up_proj(x, dropout_rng=r[1])
        return self.down_proj(constrain(h, ("batch", "length", "act_mlp")), dropout_rng=r[2])


class Block(nnx.Module):
    def __init__(self, cfg: LlmConfig, *, rngs: nnx.Rngs):
        kw = dict(eps=cfg.rms_norm_eps, param_dtype=cfg.weight_dtype, rngs=rngs)
        self.input_norm = RMSNorm(cfg.hidden_size, **kw)
        self.attn = Attention(cfg, rngs=rngs)
        self.post_attention_norm = RMSNorm(cfg.hidden_size, **kw)
        self.mlp = Mlp(cfg, rngs=rngs)

    def __call__(self, x, ctx: MaskContext, cache_kv=None, rngs=None):
        r = (None, None) if rngs is None else tuple(jax.random.split(rngs))
        h, cache_kv = self.attn(self.input_norm(x), ctx, cache_kv, r[0])
        x = x + h
        x = x + self.mlp(self.post_attention_norm(x), r[1])
        return constrain(x, ("batch", "length", "act_embed")), cache_kv


def _collect_kv(outs, *, per_layer: bool):
    """Per-layer (k, v) pairs → (k, v) as tuples (a per-layer cache) or stacked on a leading layer axis."""
    ks, vs = tuple(o[0] for o in outs), tuple(o[1] for o in outs)
    return (ks, vs) if per_layer else (jnp.stack(ks), jnp.stack(vs))


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class LlmOutput:
    logits: Float[Array, "B L V"]
    hidden: Float[Array, "B L D"]  # after the final norm
    cache: KVCache | None


class Llm(nnx.Module):
    """The decoder. `model(tokens)` → logits `[B, L, V]` (float32); with `cache=` → (logits, new cache)."""

    def __init__(self, cfg: LlmConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                           rngs=rngs)

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_layers(rngs):
            return Block(cfg, rngs=rngs)

        self.layers = make_layers(rngs)
        self.final_norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=cfg.weight_dtype, rngs=rngs)
        self.lm_head = None if cfg.tie_embeddings else Dense(
            cfg.hidden_size, cfg.vocab_size, names=("embed", "vocab"), dtype=cfg.compute_dtype,
            param_dtype=cfg.weight_dtype, rngs=rngs)

    def embed_tokens(self, tokens: Int[Array, "B L"]) -> Float[Array, "B L D"]:
        return self.embed(tokens)

    def __call__(self, tokens=None, **kw) -> Any:
        out = self.forward(tokens, **kw)
        return out.logits if out.cache is None else (out.logits, out.cache)

    def forward(
        self,
        tokens: Int[Array, "B L"] | None = None,
        *,
        embeddings: Float[Array, "B L D"] | None = None,
        positions: Int[Array, "B L"] | None = None,
        segment_ids: Int[Array, "B L"] | None = None,
        span_ids: Int[Array, "B L"] | None = None,
        cache: KVCache | None = None,
        dropout_rng: jax.Array | None = None,
        return_logits: bool = True,
        layers: Sequence[Block] | None = None,
    ) -> LlmOutput:
        """Runs the decoder over tokens, or over `embeddings` passed in directly (media spliced in).

        positions: RoPE positions (default 0..L-1, or continuing from the cache). segment_ids: packing/padding
        (0 = padding). span_ids: non-zero ids of media spans, bidirectional inside a causal sequence. cache: a
        `KVCache`; the new tokens are written at `cache.index` and attend to everything written before.
        dropout_rng: enables LoRA dropout (training). layers: `layer_blocks()`, computed once outside a decode
        loop (with `cache.per_layer()`): the layers then run unrolled on those slices.
        """
        cfg = self.cfg
        if (tokens is None) == (embeddings is None):
            raise ValueError("Llm.forward: pass exactly one of tokens or embeddings")
        x = self.embed(tokens) if embeddings is None else embeddings.astype(cfg.compute_dtype)
        bsz, length, _ = x.shape
        x = constrain(x, ("batch", "length", "act_embed"))
        ctx = self._mask_context(bsz, length, positions, segment_ids, span_ids, cache)
        if cache is not None:
            seg = jnp.ones((bsz, length), jnp.int32) if segment_ids is None else segment_ids
            spans = jnp.zeros((bsz, length), jnp.int32) if span_ids is None else span_ids
            cache = cache.write_mask_ids(seg, spans)
            ctx = dataclasses.replace(ctx, kv_segment_ids=cache.segment_ids, kv_span_ids=cache.span_ids)
        x, new_kv = self._run_layers(x, ctx, cache, dropout_rng, layers)
        if cache is not None:
            cache = dataclasses.replace(cache, k=new_kv[0], v=new_kv[1], index=cache.index + length)
        hidden = self.final_norm(x)
        return LlmOutput(logits=self.logits(hidden) if return_logits else None, hidden=hidden, cache=cache)

    def logits(self, hidden: Float[Array, "B L D"]) -> Float[Array, "B L V"]:
        """The output projection of final-norm hidden states (`LlmOutput.hidden`), in float32. A prefill that
        needs only the last position's logits calls `forward(..., return_logits=False)` and this on that
        position: the projection is the largest product of a short prompt (at 33.5M parameters, 1 of 8.5 GFLOP
        of a batch-8 × 16-token prefill)."""
        logits = self.embed.attend(hidden) if self.lm_head is None else self.lm_head(hidden)
        return constrain(logits.astype(jnp.float32), ("batch", "length", "act_vocab"))

    def _rope_tables(self, positions: Int[Array, "B L"]) -> dict[str, Float[Array, "B L 1 K"]]:
        cfg = self.cfg
        inv_freq = inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_llama3_scaling)
        cos, sin = rope_tables(positions, inv_freq, cfg.compute_dtype)
        names = ("batch", "length", None, None)
        return dict(rope_cos=constrain(cos, names), rope_sin=constrain(sin, names))

    def _mask_context(self, bsz, length, positions, segment_ids, span_ids, cache) -> MaskContext:
        if cache is None:
            rope = jnp.broadcast_to(jnp.arange(length), (bsz, length)) if positions is None else positions
            return MaskContext(**self._rope_tables(rope), q_segment_ids=segment_ids, kv_segment_ids=segment_ids,
                               q_span_ids=span_ids, kv_span_ids=span_ids, q_positions=None, kv_positions=None,
                               cache_index=None)
        slots = cache.index + jnp.arange(length)
        rope = jnp.broadcast_to(slots, (bsz, length)) if positions is None else positions
        seg = jnp.ones((bsz, length), jnp.int32) if segment_ids is None else segment_ids
        spans = jnp.zeros((bsz, length), jnp.int32) if span_ids is None else span_ids
        return MaskContext(**self._rope_tables(rope), q_segment_ids=seg, kv_segment_ids=None, q_span_ids=spans,
                           kv_span_ids=None, q_positions=jnp.broadcast_to(slots, (bsz, length)),
                           kv_positions=jnp.broadcast_to(jnp.arange(cache.max_length), (bsz, cache.max_length)),
                           cache_index=cache.index)

    def projection_kernels(self) -> list[Float[Array, "*L K N"]]:
        """Every stacked projection kernel `[L, K, N]` (in `nnx.iter_modules` order), then the output head's
        `[K, V]` when it is untied: the arrays themselves, not copies."""
        kernels = [m.kernel.get_value() for _, m in nnx.iter_modules(self.layers) if isinstance(m, Dense)]
        if self.lm_head is not None:
            kernels.append(self.lm_head.kernel.get_value())
        return kernels

    def panel_weights(self) -> list[Float[Array, "L P K 32"]]:
        """`kernels.panel_matmul.pack` of `projection_kernels()`: what `layer_blocks(panels=...)` reads. One
        transposing copy of the weights; `generate` keeps it with the model while the weights stay the same
        (`infer.generate.decode_panels`)."""
        return [pack_panels(k) for k in self.projection_kernels()]

    def layer_blocks(self, *, panels: Sequence[Array] | None = None) -> tuple[Block, ...]:
        """The stacked layers as `num_layers` separate Blocks, each holding its slice of every parameter.

        For decode loops: inside a `while_loop`, a scan over the stacked weights makes XLA:CPU copy each layer's
        dynamic slice of every weight before its matmul, on every step (twice the memory traffic of a step
        that is all weight reads). Sliced once before the loop, the weights are read in place.

        panels: `panel_weights()`. The blocks' projections, and this model's output head, then multiply through
        `kernels.panel_matmul` (CPU, float32), every layer reading its matrix out of the packed stack (no
        per-layer copy): a decode step streams each weight once (docs/performance.md). This changes the model
        it is called on (its head), so call it on a trace-local copy, as `generate` does.
        """
        graphdef, params = nnx.split(self.layers)
        blocks = tuple(nnx.merge(graphdef, p) for p in unstack_layers(params, self.cfg.num_layers))
        if panels is not None:
            stacked = sum(isinstance(m, Dense) for _, m in nnx.iter_modules(self.layers))
            if len(panels) != stacked + (self.lm_head is not None):
                raise ValueError(f"layer_blocks: {len(panels)} panel stacks for {stacked} stacked projections"
                                 f"{' and a head' if self.lm_head is not None else ''}: pass panel_weights()")
            for i, block in enumerate(blocks):
                for dense, stack in zip((m for _, m in nnx.iter_modules(block) if isinstance(m, Dense)), panels):
                    dense.use_panels(stack, i)
            if self.lm_head is not None:  # a tied head (`Embed.attend`) keeps XLA's dot
                self.lm_head.use_panels(panels[-1], 0)
        return blocks

    def _run_layers(self, x, ctx, cache, dropout_rng, layers=None):
        cfg = self.cfg
        graphdef, params = nnx.split(self.layers)
        rngs = None if dropout_rng is None else jax.random.split(dropout_rng, cfg.num_layers)
        kv = None if cache is None else (cache.k, cache.v)

        def body(h, xs):
            layer_params, layer_kv, layer_rng = xs
            return nnx.merge(graphdef, layer_params)(h, ctx, layer_kv, layer_rng)

        per_layer_cache = kv is not None and isinstance(kv[0], tuple)
        if layers is None and cfg.remat != "none":  # pre-sliced layers run in decode: nothing is differentiated
            body = jax.checkpoint(body, policy=_REMAT[cfg.remat], prevent_cse=not cfg.scan_layers)
        if layers is None and cfg.scan_layers and not per_layer_cache:
            return jax.lax.scan(body, x, (params, kv, rngs))
        outs = []
        per_layer_params = None if layers is not None else unstack_layers(params, cfg.num_layers)
        for i in range(cfg.num_layers):
            layer_kv = None if kv is None else (kv[0][i], kv[1][i])
            layer_rng = None if rngs is None else rngs[i]
            if layers is not None:
                x, layer_kv = layers[i](x, ctx, layer_kv, layer_rng)
            else:
                x, layer_kv = body(x, (per_layer_params[i], layer_kv, layer_rng))
            outs.append(layer_kv)
        return x, None if kv is None else _collect_kv(outs, per_layer=per_layer_cache)

    def merge_lora(self) -> None:
        """Folds every LoRA adapter into its base kernel (in place)."""
        for _, module in nnx.iter_modules(self):
            if isinstance(module, Dense):
                module.merge_lora()
