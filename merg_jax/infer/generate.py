"""Autoregressive text generation with a KV cache: one jitted prefill + `lax.while_loop` decode.

The batch is LEFT-padded (`prompt_mask` 0 on padding), as Hugging Face's `generate` expects for decoder-only
models: every row's last prompt token sits in the last column, so one cache slot index serves all rows. The
whole prompt is prefilled in one call with `segment_ids = prompt_mask` (padding keys are never visible to real
tokens) and RoPE positions `cumsum(mask) - 1` (clipped at 0), so each row sees exactly what it would see
alone, unpadded. Decoding then feeds one token per step, positions continuing per row, and stops as soon as
every row has produced a stop token.

Sharding: the model state goes into `jax.jit` as an argument, so a model placed on a mesh keeps its layout;
call under `jax.set_mesh(mesh)` to also apply the model's activation constraints.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Int

from merg_jax.infer.sampling import SamplingConfig, sample_logits
from merg_jax.kernels import panel_matmul
from merg_jax.models import KVCache, Llm


@dataclasses.dataclass
class GenerateOutput:
    """tokens: `[B, max_new_tokens]` int32, `pad_id` after a row's stop token (the stop token itself is kept).
    lengths: `[B]` tokens generated per row, its stop token included. num_steps: positions decoded before the
    loop ended (`max_new_tokens`, or fewer when every row stopped early)."""

    tokens: Int[Array, "B N"]
    lengths: Int[Array, " B"]
    num_steps: Int[Array, ""]


def generate(model: Llm, prompt_tokens, max_new_tokens: int, *, prompt_mask=None, pad_id: int = 0,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, stop_tokens: Sequence[int] = (),
             rng: jax.Array | int | None = None, max_length: int | None = None, prompt_embeddings=None,
             prompt_span_ids=None) -> Int[Array, "B N"]:
    """Generates `max_new_tokens` tokens after each (left-padded) prompt; returns them, `[B, max_new_tokens]`.

    prompt_tokens: `[B, P]` int, left-padded. prompt_mask: `[B, P]`, 1 on real tokens (default: all ones).
    pad_id: emitted after a row's stop token. temperature: 0 is greedy; otherwise sampling after temperature,
    top_k (0 = off) and top_p (1.0 = off), in that order. stop_tokens: ids that end a row (kept in the output).
    rng: a `jax.random` key (or an int seed), required when sampling. max_length: the KV cache length (default
    `P + max_new_tokens`, the least that fits); a larger fixed value avoids recompiling for every prompt length.
    prompt_embeddings: `[B, P, D]` input embeddings to prefill instead of the prompt tokens' (a multimodal prompt
    with media spliced in, `Empatheia.embed_inputs`); prompt_span_ids `[B, P]` their media span ids (0: none).

    `generate_with_info` returns the per-row lengths and the number of decoded steps as well.
    """
    return generate_with_info(model, prompt_tokens, max_new_tokens, prompt_mask=prompt_mask, pad_id=pad_id,
                              temperature=temperature, top_k=top_k, top_p=top_p, stop_tokens=stop_tokens, rng=rng,
                              max_length=max_length, prompt_embeddings=prompt_embeddings,
                              prompt_span_ids=prompt_span_ids).tokens


def generate_with_info(model: Llm, prompt_tokens, max_new_tokens: int, *, prompt_mask=None, pad_id: int = 0,
                       temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                       stop_tokens: Sequence[int] = (), rng: jax.Array | int | None = None,
                       max_length: int | None = None, prompt_embeddings=None,
                       prompt_span_ids=None) -> GenerateOutput:
    """`generate`, returning a `GenerateOutput` (tokens, lengths, num_steps)."""
    if not isinstance(model, Llm):
        raise TypeError(f"generate: model must be a merg_jax.models.Llm, got {type(model).__name__}")
    cfg = model.cfg
    if isinstance(max_new_tokens, bool) or int(max_new_tokens) != max_new_tokens or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 1")
    max_new_tokens = int(max_new_tokens)
    sampling = SamplingConfig(float(temperature), int(top_k), float(top_p))
    if not sampling.greedy:
        if rng is None:
            raise ValueError(f"rng: sampling with temperature={temperature} needs a jax.random key (rng=...)")
        if isinstance(rng, (int, np.integer)):
            rng = jax.random.key(int(rng))
    else:
        rng = jax.random.key(0)  # unused

    tokens = _as_int_array("prompt_tokens", prompt_tokens)
    if tokens.ndim != 2 or tokens.shape[0] < 1 or tokens.shape[1] < 1:
        raise ValueError(f"prompt_tokens must be [batch, length] with both >= 1, got shape {tokens.shape}")
    batch, plen = tokens.shape
    if prompt_mask is None:
        mask = jnp.ones((batch, plen), jnp.int32)
    else:
        mask = jnp.asarray(_concrete("prompt_mask", prompt_mask))
        if mask.shape != tokens.shape:
            raise ValueError(f"prompt_mask has shape {mask.shape}, expected prompt_tokens' shape {tokens.shape}")
        mask = (mask != 0).astype(jnp.int32)
        _check_left_padded(mask)
    _check_token_range(tokens, mask, cfg.vocab_size)

    stops = np.asarray(stop_tokens, np.int64).reshape(-1)
    if stops.size and (stops.min() < 0 or stops.max() >= cfg.vocab_size):
        raise ValueError(f"stop_tokens {stops.tolist()} must be ids in [0, vocab_size={cfg.vocab_size})")
    if plen > cfg.max_position_embeddings:
        raise ValueError(f"prompt_tokens length {plen} exceeds the model's max_position_embeddings="
                         f"{cfg.max_position_embeddings}")
    if plen + max_new_tokens > cfg.max_position_embeddings:
        raise ValueError(f"prompt length {plen} + max_new_tokens={max_new_tokens} exceeds the model's "
                         f"max_position_embeddings={cfg.max_position_embeddings}")
    needed = plen + max_new_tokens - 1  # the last generated token is never fed back
    if max_length is None:
        max_length = plen + max_new_tokens
    elif int(max_length) < needed:
        raise ValueError(f"max_length={max_length} is too short for a prompt of length {plen} plus "
                         f"max_new_tokens={max_new_tokens} (needs >= {needed})")

    if prompt_embeddings is not None:
        want = (batch, plen, cfg.hidden_size)
        if tuple(prompt_embeddings.shape) != want:
            raise ValueError(f"prompt_embeddings has shape {tuple(prompt_embeddings.shape)}, expected {want}")
        if prompt_span_ids is None:
            prompt_span_ids = jnp.zeros((batch, plen), jnp.int32)
        elif tuple(prompt_span_ids.shape) != (batch, plen):
            raise ValueError(f"prompt_span_ids has shape {tuple(prompt_span_ids.shape)}, expected {(batch, plen)}")

    graphdef, state = nnx.split(model)
    out_tokens, lengths, steps = _generate_jit(
        graphdef, state, tokens, mask, jnp.asarray(stops, jnp.int32), jnp.asarray(pad_id, jnp.int32), rng,
        prompt_embeddings, prompt_span_ids, max_new_tokens=max_new_tokens, max_length=int(max_length),
        sampling=sampling, panels=decode_panels(model))
    return GenerateOutput(tokens=out_tokens, lengths=lengths, num_steps=steps)


def _concrete(name: str, x):
    if isinstance(x, jax.core.Tracer):
        raise TypeError(f"generate: {name} must be a concrete array (generate jits itself; call it outside jit)")
    return x


def _as_int_array(name: str, x) -> jax.Array:
    x = jnp.asarray(_concrete(name, x))
    if not (jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_):
        raise ValueError(f"{name} must be an integer array, got dtype {x.dtype}")
    return x.astype(jnp.int32)


def _host_checkable(x) -> bool:
    return not isinstance(x, jax.Array) or x.is_fully_addressable  # multi-host global arrays: not checked here


def _check_left_padded(mask: jax.Array) -> None:
    if not _host_checkable(mask):
        return
    m = np.asarray(mask)
    if not (m[:, -1] == 1).all():
        bad = np.nonzero(m[:, -1] != 1)[0].tolist()
        raise ValueError(f"prompt_mask: rows {bad} do not end with a real token; prompts must be LEFT-padded "
                         "with at least one real token per row")
    if (np.diff(m, axis=1) < 0).any():
        bad = np.nonzero((np.diff(m, axis=1) < 0).any(axis=1))[0].tolist()
        raise ValueError(f"prompt_mask: rows {bad} have padding after a real token; prompts must be LEFT-padded")


def _check_token_range(tokens: jax.Array, mask: jax.Array, vocab_size: int) -> None:
    if not (_host_checkable(tokens) and _host_checkable(mask)):
        return
    t, m = np.asarray(tokens), np.asarray(mask).astype(bool)
    real = t[m]
    if real.size and (real.min() < 0 or real.max() >= vocab_size):
        raise ValueError(f"prompt_tokens has ids outside [0, vocab_size={vocab_size}) "
                         f"(min {real.min()}, max {real.max()})")


def uses_panel_matmul(model: Llm) -> bool:
    """Whether `generate` runs the model's decode products through `kernels.panel_matmul`: a float32 model
    whose parameters all sit on one CPU device, with the kernel built (`panel_matmul.unavailable_reason()` says
    why not). Elsewhere XLA's dot serves (GPU and TPU products are not bandwidth-starved this way; a sharded
    model would need the custom call partitioned)."""
    cfg = model.cfg
    if jnp.dtype(cfg.compute_dtype) != jnp.float32 or jnp.dtype(cfg.weight_dtype) != jnp.float32:
        return False
    devices = {d for leaf in jax.tree.leaves(nnx.state(model)) if isinstance(leaf, jax.Array)
               for d in leaf.devices()}
    if len(devices) != 1 or next(iter(devices)).platform != "cpu":
        return False
    return panel_matmul.available()


# model -> (weak references to the kernels it was packed from, Llm.panel_weights()).
_PANELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def decode_panels(model: Llm) -> list[jax.Array] | None:
    """The panel-packed weights the decode loop reads (`Llm.panel_weights`), or None where XLA's dot serves
    (`uses_panel_matmul`). Packed on the first call and kept with the model until any of its kernels is
    replaced (a training step, a checkpoint load): a second copy of the projection weights, in exchange for
    not re-packing them on every call (two copies of the weights per call otherwise)."""
    if not uses_panel_matmul(model):
        return None
    sources = model.projection_kernels()
    kept = _PANELS.get(model)
    if kept is not None and len(kept[0]) == len(sources) and all(r() is s for r, s in zip(kept[0], sources)):
        return kept[1]
    graphdef, state = nnx.split(model)
    packed = _panel_weights_jit(graphdef, state)
    _PANELS[model] = (tuple(weakref.ref(s) for s in sources), packed)
    return packed


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _panel_weights_jit(graphdef, state):
    return nnx.merge(graphdef, state).panel_weights()


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "max_length", "sampling"))
def _generate_jit(graphdef, state, tokens, mask, stops, pad_id, rng, embeddings, span_ids, *, max_new_tokens: int,
                  max_length: int, sampling: SamplingConfig, panels=None):
    model = nnx.merge(graphdef, state)
    batch, _ = tokens.shape
    tokens = jnp.where(mask == 1, tokens, 0)  # padding ids may be anything; keep the embedding lookup valid
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    # Slice the stacked layers and the cache per layer once, for the prefill and the decode loop
    # (`Llm.layer_blocks`; with `panels`, every product reads the packed weights in place).
    blocks = model.layer_blocks(panels=panels)
    cache = KVCache.init(model.cfg, batch, max_length).per_layer()
    # Only the last prompt position's logits are used: project just that position.
    if embeddings is None:
        prefill = model.forward(tokens, positions=positions, segment_ids=mask, cache=cache, return_logits=False,
                                layers=blocks)
    else:
        prefill = model.forward(embeddings=embeddings, positions=positions, segment_ids=mask, span_ids=span_ids,
                                cache=cache, return_logits=False, layers=blocks)
    cache = prefill.cache

    def is_stop(tok):
        return jnp.any(tok[:, None] == stops[None, :], axis=-1)

    first = sample_logits(model.logits(prefill.hidden[:, -1:])[:, 0], sampling, jax.random.fold_in(rng, 0))
    out = jnp.full((batch, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)
    done = is_stop(first)
    lengths = jnp.ones((batch,), jnp.int32)
    next_pos = positions[:, -1] + 1  # the position of the token fed next (the one just generated)

    def cond(carry):
        i, _, _, _, done, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, cache, last, out, done, lengths = carry
        step_logits, cache = model(last[:, None], positions=(next_pos + i - 1)[:, None],
                                   segment_ids=jnp.ones((batch, 1), jnp.int32), cache=cache, layers=blocks)
        tok = sample_logits(step_logits[:, -1], sampling, jax.random.fold_in(rng, i))
        out = out.at[:, i].set(jnp.where(done, pad_id, tok))
        lengths = lengths + (~done).astype(jnp.int32)
        # A finished row keeps feeding its sampled (valid) id; what it emits is pad_id.
        return i + 1, cache, tok, out, done | is_stop(tok), lengths

    steps, _, _, out, _, lengths = jax.lax.while_loop(cond, body, (jnp.int32(1), cache, first, out, done, lengths))
    return out, lengths, steps


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token lists → the left-padded batch `generate` takes: (tokens [B, P] int32, prompt_mask [B, P] int32)."""
    width = max(len(s) for s in sequences)
    tokens = np.full((len(sequences), width), pad_id, np.int32)
    mask = np.zeros((len(sequences), width), np.int32)
    for i, s in enumerate(sequences):
        tokens[i, width - len(s):] = s
        mask[i, width - len(s):] = 1
    return tokens, mask
