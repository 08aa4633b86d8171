"""Hugging Face LLaMA (`LlamaForCausalLM` safetensors directories) ⇄ `merg_jax.models.Llm`.

Layout differences, all handled here:
- HF `nn.Linear.weight` is `[out, in]`; our `Dense.kernel` is `[in, out]` (transposed).
- HF keeps one tensor per layer (`model.layers.{i}.…`); we stack the layers on a leading axis, so
  `layers.attn.q_proj.kernel` is `[num_layers, hidden, heads * head_dim]`.
- Names: `embed_tokens` → `embed.embedding`, `input_layernorm` → `layers.input_norm.scale`,
  `post_attention_layernorm` → `layers.post_attention_norm.scale`, `model.norm` → `final_norm.scale`,
  `lm_head.weight` → `lm_head.kernel` (absent when the embeddings are tied).

Import never holds the model twice in host memory: the model is built abstractly (`nnx.eval_shape`), each
parameter's sharding comes from the rule table, and each device's shard is read straight from the
memory-mapped files (`jax.make_array_from_callback`), layer range and row/column slice only. Export streams one
tensor at a time to disk.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from merg_jax.convert.safetensors_io import SafetensorsReader, TensorInfo, TensorSpec, read_header, write_safetensors
from merg_jax.models.llm import Llm
from merg_jax.models.llm_config import LlmConfig
from merg_jax.sharding import single_device_mesh, state_shardings

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
SUPPORTED_ROPE_TYPES = ("default", "llama3")
# Files next to the weights that an export copies over from `copy_from` (tokenizer, generation defaults).
AUX_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
             "added_tokens.json", "generation_config.json", "chat_template.jinja")
# LlmConfig fields that config.json decides: they fix the tensor shapes, so they cannot be overridden.
HF_SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                   "head_dim", "tie_embeddings", "attention_bias", "mlp_bias")
_PASSTHROUGH_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some old checkpoints saved; recomputed from the config


# ----------------------------------------------------------------------------------------------------------------
# config.json ⇄ LlmConfig


def read_hf_config(path: str | os.PathLike) -> dict[str, Any]:
    """Reads `path/config.json` (errors name the file)."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file}: not found — expected a Hugging Face model directory with {CONFIG_FILE} "
                                f"and *.safetensors")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from e


def _rope_from_hf(hf: Mapping[str, Any], source: str) -> tuple[float, tuple[float, float, float, int] | None]:
    """(rope_theta, llama3 scaling or None). Follows transformers: a legacy `rope_scaling` dict wins over
    `rope_parameters` (transformers ≥ 5), `rope_theta` inside the dict wins over the top-level one."""
    field = "rope_scaling" if hf.get("rope_scaling") else "rope_parameters"
    params = hf.get(field) or {}
    if not isinstance(params, Mapping):
        raise ValueError(f"{source}: {field} must be a JSON object, got {params!r}")
    if params and all(isinstance(v, Mapping) for v in params.values()):
        raise ValueError(f"{source}: {field} is nested per layer type ({sorted(params)}); LLaMA uses one RoPE "
                         f"for all layers, and per-layer RoPE is not supported")
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):
        raise ValueError(f"{source}: partial_rotary_factor={partial} is not supported (only full rotary)")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise ValueError(f"{source}: {field}.rope_type={rope_type!r} is not supported; "
                         f"supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
    try:
        scaling = (float(params["factor"]), float(params["low_freq_factor"]), float(params["high_freq_factor"]),
                   int(params.get("original_max_position_embeddings", hf.get("max_position_embeddings", 2048))))
    except KeyError as e:
        raise ValueError(f"{source}: {field} has rope_type 'llama3' but no {e.args[0]!r}") from e
    return theta, scaling


def llm_config_from_hf(hf: Mapping[str, Any], *, source: str = CONFIG_FILE, **overrides) -> LlmConfig:
    """Maps a HF LLaMA `config.json` dict onto `LlmConfig`; `overrides` set the other fields (dtype, lora_rank,
    scan_layers, remat, attention_impl, …). Unsupported settings raise an error naming the field."""
    model_type = hf.get("model_type", "llama")
    if model_type != "llama":
        raise ValueError(f"{source}: model_type={model_type!r} is not supported; only 'llama' (LLaMA, Vicuna, "
                         f"TinyLlama, LLaMA 2/3 …)")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"{source}: hidden_act={act!r} is not supported; LLaMA uses 'silu'")
    missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                           "num_attention_heads") if k not in hf]
    if missing:
        raise ValueError(f"{source}: required fields {missing} are missing")
    fixed = sorted(set(overrides) & set(HF_SHAPE_FIELDS))
    if fixed:
        raise ValueError(f"load_hf_llama: {fixed} are read from {source} (they fix the tensor shapes) and "
                         f"cannot be overridden")
    heads = int(hf["num_attention_heads"])
    theta, llama3 = _rope_from_hf(hf, source)
    fields: dict[str, Any] = dict(
        vocab_size=int(hf["vocab_size"]),
        hidden_size=int(hf["hidden_size"]),
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or int(hf["hidden_size"]) // heads),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_llama3_scaling=llama3,
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)),
    )
    return LlmConfig.from_dict({**fields, **overrides})


def llm_config_to_hf(cfg: LlmConfig, *, dtype=None) -> dict[str, Any]:
    """`LlmConfig` → a `config.json` dict that transformers 4.x and 5.x `LlamaConfig` both read (the legacy
    `rope_theta`/`rope_scaling` keys and the newer `rope_parameters` carry the same values)."""
    dtype = jnp.dtype(cfg.param_dtype if dtype is None else dtype).name
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    scaling = None
    if cfg.rope_llama3_scaling is not None:
        factor, low, high, old_len = cfg.rope_llama3_scaling
        scaling = {"rope_type": "llama3", "factor": float(factor), "low_freq_factor": float(low),
                   "high_freq_factor": float(high), "original_max_position_embeddings": int(old_len)}
        rope = {**scaling, "rope_theta": cfg.rope_theta}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": scaling,
        "rope_parameters": rope,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": cfg.attention_bias,
        "attention_dropout": 0.0,
        "mlp_bias": cfg.mlp_bias,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": dtype,
        "dtype": dtype,
    }


# ----------------------------------------------------------------------------------------------------------------
# Parameter name mapping


@dataclasses.dataclass(frozen=True)
class _Slot:
    """Where one of our parameters lives in a HF checkpoint: `template` (with `{i}` for the layer when
    `stacked`), and whether the HF tensor is the transpose of ours (per layer)."""

    template: str
    transpose: bool
    stacked: bool

    def name(self, layer: int | None = None) -> str:
        return self.template.format(i=layer) if self.stacked else self.template


_LAYER_MODULES = {
    ("attn", "q_proj"): "self_attn.q_proj", ("attn", "k_proj"): "self_attn.k_proj",
    ("attn", "v_proj"): "self_attn.v_proj", ("attn", "o_proj"): "self_attn.o_proj",
    ("mlp", "gate_proj"): "mlp.gate_proj", ("mlp", "up_proj"): "mlp.up_proj", ("mlp", "down_proj"): "mlp.down_proj",
    ("input_norm",): "input_layernorm", ("post_attention_norm",): "post_attention_layernorm",
}
_LEAVES = {"kernel": ("weight", True), "bias": ("bias", False), "scale": ("weight", False)}


def _slot(path: tuple) -> _Slot:
    """Our state path (e.g. `('layers', 'attn', 'q_proj', 'kernel')`) → its HF slot."""
    path = tuple(str(p) for p in path)
    if path == ("embed", "embedding"):
        return _Slot("model.embed_tokens.weight", False, False)
    if path == ("final_norm", "scale"):
        return _Slot("model.norm.weight", False, False)
    if path == ("lm_head", "kernel"):
        return _Slot("lm_head.weight", True, False)
    if path[0] == "layers" and tuple(path[1:-1]) in _LAYER_MODULES and path[-1] in _LEAVES:
        leaf, transpose = _LEAVES[path[-1]]
        return _Slot(f"model.layers.{{i}}.{_LAYER_MODULES[tuple(path[1:-1])]}.{leaf}", transpose, True)
    raise KeyError(f"no Hugging Face name for model parameter {'.'.join(path)} (merg_jax.convert.hf_llama._slot "
                   f"needs updating for a new parameter)")


def _hf_shape(slot: _Slot, our_shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = our_shape[1:] if slot.stacked else our_shape
    return tuple(reversed(shape)) if slot.transpose else tuple(shape)


def _is_lora(var) -> bool:
    return isinstance(var, nnx.LoRAParam)


def _path_str(path) -> str:
    return ".".join(str(p) for p in path)


# ----------------------------------------------------------------------------------------------------------------
# Reading a checkpoint directory


def checkpoint_tensors(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Every tensor of a HF directory's safetensors files (sharded with `model.safetensors.index.json`, or
    every `*.safetensors` file when there is no index), by name. Reads only the headers."""
    path = Path(path)
    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index}: not a safetensors index (needs a 'weight_map' object): {e}") from e
        files = [path / f for f in sorted(set(weight_map.values()))]
        absent = [str(f) for f in files if not f.is_file()]
        if absent:
            raise FileNotFoundError(f"{index} lists shard files that do not exist: {absent}")
    else:
        files = sorted(path.glob("*.safetensors"))
        if not files:
            extra = ""
            if any(path.glob("*.bin")) or any(path.glob("*.pt")) or any(path.glob("*.pth")):
                extra = (" (found pickle checkpoints *.bin/*.pt: these are not read; re-save with "
                         "`save_pretrained(..., safe_serialization=True)`)")
            raise FileNotFoundError(f"{path}: no {INDEX_FILE} and no *.safetensors files{extra}")
        weight_map = None
    tensors: dict[str, TensorInfo] = {}
    for file in files:
        infos, _ = read_header(file)
        for name, info in infos.items():
            if name in tensors:
                raise ValueError(f"tensor {name!r} appears in both {tensors[name].file} and {file}")
            tensors[name] = info
    if weight_map is not None:
        wrong = [f"{k} (index says {v})" for k, v in weight_map.items()
                 if k not in tensors or tensors[k].file.name != v]
        if wrong:
            raise ValueError(f"{index}: tensors not found in the shard the index names: {wrong[:10]}"
                             f"{' …' if len(wrong) > 10 else ''}")
    return tensors


def _names_list(names, limit: int = 12) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f", … ({len(names)} in all)" if len(names) > limit else "")


def _match_tensors(path: Path, cfg: LlmConfig, flat_abstract, tensors: dict[str, TensorInfo]) -> None:
    """Checks that the files hold exactly the tensors the config implies, with the right shapes; errors name
    them. With tied embeddings, a stored `lm_head.weight` is accepted only if equal to the embeddings."""
    expected: dict[str, tuple[int, ...]] = {}
    for p, var in flat_abstract:
        if _is_lora(var):
            continue
        slot = _slot(p)
        for i in range(cfg.num_layers) if slot.stacked else [None]:
            expected[slot.name(i)] = _hf_shape(slot, var.shape)
    found = {k for k in tensors if not k.endswith(_IGNORED_SUFFIXES)}
    unknown, missing = found - set(expected), set(expected) - found
    tied_head = cfg.tie_embeddings and "lm_head.weight" in unknown
    if tied_head:
        unknown.discard("lm_head.weight")
    summary = (f"config.json: {cfg.num_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size}, "
               f"tie_word_embeddings={cfg.tie_embeddings}, attention_bias={cfg.attention_bias}, "
               f"mlp_bias={cfg.mlp_bias}")
    problems = []
    if missing:
        problems.append(f"missing tensors: {_names_list(missing)}")
    if unknown:
        problems.append(f"unknown tensors (not used by {summary}): {_names_list(unknown)}")
    if problems:
        raise ValueError(f"{path}: checkpoint does not match its config — " + "; ".join(problems))
    bad = [f"{n} in {tensors[n].file.name}: {list(tensors[n].shape)}, expected {list(s)}"
           for n, s in expected.items() if tensors[n].shape != s]
    bad += [f"{n} in {tensors[n].file.name}: dtype {tensors[n].dtype} is not floating point"
            for n in expected if not jnp.issubdtype(tensors[n].dtype, jnp.floating)]
    if bad:
        raise ValueError(f"{path}: tensor shapes/dtypes do not match {summary}: " + "; ".join(bad[:12]))
    if tied_head:
        _check_tied_head(path, tensors)


def _check_tied_head(path: Path, tensors: dict[str, TensorInfo]) -> None:
    head, emb = tensors["lm_head.weight"], tensors["model.embed_tokens.weight"]
    if head.shape != emb.shape:
        raise ValueError(f"{path}: tie_word_embeddings is true but lm_head.weight {list(head.shape)} and "
                         f"model.embed_tokens.weight {list(emb.shape)} differ in shape")
    with SafetensorsReader() as reader:
        a, b = reader.array(head), reader.array(emb)
        for start in range(0, a.shape[0], 4096):  # row chunks: bounded memory for big vocabularies
            if not np.array_equal(a[start:start + 4096].astype(np.float32), b[start:start + 4096].astype(np.float32)):
                raise ValueError(f"{path}: tie_word_embeddings is true but lm_head.weight differs from "
                                 f"model.embed_tokens.weight; fix config.json or drop lm_head.weight")
        del a, b


def _normalize_index(index, shape) -> tuple[slice, ...]:
    index = tuple(index) if index is not None else ()
    return index + (slice(None),) * (len(shape) - len(index))


def read_block(reader: SafetensorsReader, tensors: dict[str, TensorInfo], slot: _Slot, shape: tuple[int, ...],
               dtype, index) -> np.ndarray:
    """The block `param[index]` of one of our parameters (full shape `shape`), read from the HF tensors:
    only the layers in the index's layer range, only the requested rows/columns, transposed to our layout,
    cast to `dtype`. `index` is what `jax.make_array_from_callback` passes: one slice per axis."""
    index = _normalize_index(index, shape)

    def one(name: str, idx: tuple[slice, ...]) -> np.ndarray:
        arr = reader.array(tensors[name])  # memory-mapped, HF layout
        return arr[idx[::-1]].T if slot.transpose else arr[idx]

    # A fresh C-contiguous buffer, filled by assignment (which casts): never a view of the mapped file, and no
    # intermediate copy in the file's dtype.
    out = np.empty(tuple(len(range(*s.indices(n))) for s, n in zip(index, shape)), dtype)
    if not slot.stacked:
        out[...] = one(slot.name(), index)
        return out
    for j, layer in enumerate(range(*index[0].indices(shape[0]))):
        out[j] = one(slot.name(layer), index[1:])
    return out


# ----------------------------------------------------------------------------------------------------------------
# Import


def _lora_state(cfg: LlmConfig, seed: int, shardings, mesh):
    """Fresh LoRA adapters, exactly as `Llm(cfg, rngs=nnx.Rngs(seed))` initialises them (A random, B zero),
    created directly in their shards. XLA drops the unused base-weight initialisers."""

    def init():
        return nnx.state(Llm(cfg, rngs=nnx.Rngs(seed)), nnx.LoRAParam)

    with jax.set_mesh(mesh):
        state = jax.jit(init, out_shardings=nnx.filter_state(shardings, nnx.LoRAParam))()
    return dict(nnx.to_flat_state(state))


def load_hf_llama(path: str | os.PathLike, *, mesh: jax.sharding.Mesh | None = None, dtype=None,
                  compute_dtype=None, seed: int = 0, **overrides) -> tuple[Llm, LlmConfig]:
    """Loads a local Hugging Face LLaMA directory (`config.json` + `*.safetensors`) into an `Llm`.

    path: the directory (single `model.safetensors`, or shards with `model.safetensors.index.json`).
    mesh: where the parameters go, sharded by the logical-axis rule table (default: a one-device mesh).
    dtype: the parameters' dtype (`LlmConfig.param_dtype`), default float32, whatever the files hold
        (float16/bfloat16/float32 files all load; the cast happens per shard).
    compute_dtype: `LlmConfig.dtype` (activations); default: LlmConfig's default (bfloat16).
    seed: initialises LoRA adapters when `lora_rank > 0` is among the overrides — they are new (A random as
        `Dense` does it, B zero, so the model computes exactly the checkpoint's function).
    overrides: other `LlmConfig` fields (lora_rank, lora_alpha, lora_targets, scan_layers, remat,
        attention_impl, max_position_embeddings, …); the shape fields come from config.json only.

    Returns (model, config). Raises FileNotFoundError / ValueError naming the file, field or tensors at fault:
    every tensor in the files must be used (except `*rotary_emb.inv_freq` buffers) and none may be missing.
    """
    path = Path(path)
    if "param_dtype" in overrides:
        if dtype is not None and jnp.dtype(dtype) != jnp.dtype(overrides["param_dtype"]):
            raise ValueError("load_hf_llama: give the parameter dtype once, as dtype= (param_dtype= is an alias)")
        dtype = overrides.pop("param_dtype")
    if compute_dtype is not None:
        overrides["dtype"] = jnp.dtype(compute_dtype).name
    param_dtype = jnp.dtype(jnp.float32 if dtype is None else dtype).name
    cfg = llm_config_from_hf(read_hf_config(path), source=str(path / CONFIG_FILE), param_dtype=param_dtype,
                             **overrides)
    tensors = checkpoint_tensors(path)
    graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: Llm(cfg, rngs=nnx.Rngs(seed))))
    flat_abstract = list(nnx.to_flat_state(abstract_state))
    _match_tensors(path, cfg, flat_abstract, tensors)

    mesh = single_device_mesh() if mesh is None else mesh
    shardings = state_shardings(abstract_state, mesh)
    flat_shardings = dict(nnx.to_flat_state(shardings))
    lora = _lora_state(cfg, seed, shardings, mesh) if any(_is_lora(v) for _, v in flat_abstract) else {}
    flat = []
    with SafetensorsReader() as reader:
        for p, var in flat_abstract:
            if _is_lora(var):
                flat.append((p, lora[p]))
                continue
            slot, shape, dt = _slot(p), tuple(var.shape), np.dtype(var.dtype)

            def callback(index, slot=slot, shape=shape, dt=dt):
                return read_block(reader, tensors, slot, shape, dt, index)

            value = jax.make_array_from_callback(shape, flat_shardings[p].get_value(), callback, dtype=dt)
            flat.append((p, var.replace(jax.block_until_ready(value))))
            reader.drop_pages()
    return nnx.merge(graphdef, nnx.from_flat_state(flat)), cfg


# ----------------------------------------------------------------------------------------------------------------
# Export


_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size: int | str) -> int:
    """`5_000_000`, `"5GB"`, `"500MiB"` → bytes (decimal units as transformers' `max_shard_size`)."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(size))
    if not m or m.group(2).upper() not in _SIZE_UNITS:
        raise ValueError(f"max_shard_size={size!r}: expected bytes or a size like '5GB', '500MB', '2GiB'")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])


def _host(x) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        raise NotImplementedError("save_hf_llama: parameters span several processes; gather them first "
                                  "(multi-host export is not supported yet)")
    return np.asarray(jax.device_get(x))


def _export_specs(model: Llm, dtype) -> list[TensorSpec]:
    """One `TensorSpec` per HF tensor, in HF order (embeddings, layer 0 … n-1, final norm, lm_head); LoRA
    adapters are folded into their kernels (in float32, on the host) as `Dense.merge_lora` does."""
    cfg: LlmConfig = model.cfg
    flat = dict(nnx.to_flat_state(nnx.state(model)))
    specs = []
    for p, var in flat.items():
        if _is_lora(var):
            continue
        slot = _slot(p)
        value = var.get_value()
        out_dtype = np.dtype(value.dtype if dtype is None else jnp.dtype(dtype))
        parent = tuple(p[:-1])
        lora = None
        if p[-1] == "kernel" and parent + ("lora_a",) in flat:
            lora = (flat[parent + ("lora_a",)].get_value(), flat[parent + ("lora_b",)].get_value())

        def produce(value=value, slot=slot, lora=lora, out_dtype=out_dtype, layer=None):
            w = value if layer is None else value[layer]
            w = _host(w)
            if lora is not None:
                a, b = (_host(t if layer is None else t[layer]).astype(np.float32) for t in lora)
                w = (w.astype(np.float32) + np.float32(cfg.lora_scale) * (a @ b)).astype(w.dtype)
            return np.ascontiguousarray(w.T if slot.transpose else w).astype(out_dtype, copy=False)

        shape = _hf_shape(slot, tuple(value.shape))
        for i in range(cfg.num_layers) if slot.stacked else [None]:
            specs.append(TensorSpec(slot.name(i), shape, out_dtype,
                                    lambda produce=produce, i=i: produce(layer=i)))

    def order(spec: TensorSpec):
        m = re.match(r"model\.layers\.(\d+)\.", spec.name)
        group = 1 if m else {"model.embed_tokens.weight": 0, "model.norm.weight": 2}.get(spec.name, 3)
        return group, int(m.group(1)) if m else 0, spec.name

    return sorted(specs, key=order)


def _shard(specs: list[TensorSpec], max_bytes: int) -> list[list[TensorSpec]]:
    """Greedy packing in order; a tensor bigger than `max_bytes` gets a shard of its own (as transformers)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for s in specs:
        if shards[-1] and size + s.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += s.nbytes
    return shards


def _prepare_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path}: exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path}: directory is not empty (pass overwrite=True / --overwrite to replace it)")


def save_hf_llama(model: Llm, path: str | os.PathLike, *, dtype=None, max_shard_size: int | str = "5GB",
                  copy_from: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Writes `model` as a Hugging Face `LlamaForCausalLM` directory (`config.json` + safetensors).

    dtype: the saved tensors' dtype (default: each parameter's own dtype, so import → export is bit-exact).
    max_shard_size: bytes or '5GB'-style; above it the weights are split into `model-0000k-of-0000n.safetensors`
        with `model.safetensors.index.json`, else one `model.safetensors`.
    copy_from: a HF directory whose tokenizer/generation files (`AUX_FILES`) and token ids (bos/eos/pad) are
        carried over, e.g. the directory the model was imported from.
    overwrite: replace a non-empty `path` (an empty or absent one is always fine).

    LoRA adapters are merged into the exported kernels; `model` itself is not modified. The directory appears
    atomically: everything is written to a temporary sibling directory that is then renamed into place.
    Returns the path.
    """
    path = Path(path)
    _prepare_target(path, overwrite)
    cfg: LlmConfig = model.cfg
    specs = _export_specs(model, dtype)
    shards = _shard(specs, parse_size(max_shard_size))
    hf_config = llm_config_to_hf(cfg, dtype=dtype if dtype is not None else specs[0].dtype)
    if copy_from is not None:
        src = read_hf_config(copy_from)
        hf_config.update({k: src[k] for k in _PASSTHROUGH_KEYS if k in src})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()  # not mkdtemp: that makes it 0700, and the result should get the usual (umask) permissions
    try:
        (tmp / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
        if len(shards) == 1:
            write_safetensors(tmp / SINGLE_FILE, shards[0], metadata={"format": "pt"})
        else:
            weight_map, total = {}, 0
            for k, shard in enumerate(shards, 1):
                name = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
                total += write_safetensors(tmp / name, shard, metadata={"format": "pt"})
                weight_map.update({s.name: name for s in shard})
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        if copy_from is not None:
            for name in AUX_FILES:
                if (Path(copy_from) / name).is_file():
                    shutil.copy2(Path(copy_from) / name, tmp / name)
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("saved %d tensors in %d file(s) to %s", len(specs), len(shards), path)
    return path


def _replace_dir(tmp: Path, path: Path) -> None:
    """Renames `tmp` to `path`; an existing `path` is moved aside first and deleted only after the swap."""
    old = None
    if path.exists():
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        else:
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / path.name)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
