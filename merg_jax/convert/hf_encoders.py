"""Hugging Face media encoders (local safetensors directories) → `merg_jax.models.encoders`.

- `load_hf_clip_vision(path)`: a `CLIPVisionModel` directory (`model_type` `clip_vision_model`; a full `clip`
  config is accepted for its `vision_config` when the files hold only the vision tower). Tensor names with or
  without the `vision_model.` prefix.
- `load_hf_ast(path)`: an `ASTModel` directory (`model_type` `audio-spectrogram-transformer`), tensor names in
  the classic layout (`encoder.layer.{i}.attention.attention.query`) or the newer one
  (`layers.{i}.attention.q_proj`).

Every tensor in the files must be used and none may be missing (errors name them); shapes are checked against
config.json. Layout changes: `nn.Linear.weight [out, in]` → `Dense.kernel [in, out]`; conv weights
`[out, in, kh, kw]` → `[kh, kw, in, out]`; per-layer tensors are stacked on a leading `layers` axis.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from merg_jax.convert.hf_llama import CONFIG_FILE, checkpoint_tensors, read_hf_config
from merg_jax.convert.safetensors_io import SafetensorsReader, TensorInfo
from merg_jax.models.encoders import AudioConfig, AudioEncoder, VisionConfig, VisionEncoder
from merg_jax.sharding import single_device_mesh, state_shardings

_IGNORED_SUFFIXES = ("position_ids",)  # buffers older checkpoints saved; recomputed

# How one HF tensor becomes (one layer of) one of our parameters. A tensor of an unexpected rank is left as it is,
# so the shape check below names it.


def _T(a):  # noqa: N802  nn.Linear [out, in] → [in, out]
    return a.T if a.ndim == 2 else a


def _CONV(a):  # noqa: N802  [out, in, kh, kw] → [kh, kw, in, out]
    return a.transpose(2, 3, 1, 0) if a.ndim == 4 else a


def _SAME(a):  # noqa: N802
    return a


def _TOKEN(a):  # noqa: N802  AST [1, 1, D] → [D]
    return a[0, 0] if a.ndim == 3 and a.shape[:2] == (1, 1) else a


def _BATCH1(a):  # noqa: N802  AST position embeddings [1, N, D] → [N, D]
    return a[0] if a.ndim == 3 and a.shape[0] == 1 else a


# Our per-layer module path → HF per-layer name (without the layer prefix) and transform, per leaf.
_LINEAR = {"kernel": ("weight", _T), "bias": ("bias", _SAME)}
_NORM = {"scale": ("weight", _SAME), "bias": ("bias", _SAME)}

_CLIP_LAYER = {
    ("norm1",): ("layer_norm1", _NORM), ("norm2",): ("layer_norm2", _NORM),
    ("attn", "q_proj"): ("self_attn.q_proj", _LINEAR), ("attn", "k_proj"): ("self_attn.k_proj", _LINEAR),
    ("attn", "v_proj"): ("self_attn.v_proj", _LINEAR), ("attn", "o_proj"): ("self_attn.out_proj", _LINEAR),
    ("mlp", "fc1"): ("mlp.fc1", _LINEAR), ("mlp", "fc2"): ("mlp.fc2", _LINEAR),
}
_CLIP_TOP = {
    ("patch_embed", "kernel"): ("embeddings.patch_embedding.weight", _CONV),
    ("class_embedding",): ("embeddings.class_embedding", _SAME),
    ("position_embedding",): ("embeddings.position_embedding.weight", _SAME),
    ("pre_norm", "scale"): ("pre_layrnorm.weight", _SAME), ("pre_norm", "bias"): ("pre_layrnorm.bias", _SAME),
    ("post_norm", "scale"): ("post_layernorm.weight", _SAME), ("post_norm", "bias"): ("post_layernorm.bias", _SAME),
}
_AST_LAYER = {
    ("norm1",): ("layernorm_before", _NORM), ("norm2",): ("layernorm_after", _NORM),
    ("attn", "q_proj"): ("attention.attention.query", _LINEAR),
    ("attn", "k_proj"): ("attention.attention.key", _LINEAR),
    ("attn", "v_proj"): ("attention.attention.value", _LINEAR),
    ("attn", "o_proj"): ("attention.output.dense", _LINEAR),
    ("mlp", "fc1"): ("intermediate.dense", _LINEAR), ("mlp", "fc2"): ("output.dense", _LINEAR),
}
_AST_TOP = {
    ("patch_embed", "kernel"): ("embeddings.patch_embeddings.projection.weight", _CONV),
    ("patch_embed", "bias"): ("embeddings.patch_embeddings.projection.bias", _SAME),
    ("cls_token",): ("embeddings.cls_token", _TOKEN),
    ("distillation_token",): ("embeddings.distillation_token", _TOKEN),
    ("position_embedding",): ("embeddings.position_embeddings", _BATCH1),
    ("final_norm", "scale"): ("layernorm.weight", _SAME), ("final_norm", "bias"): ("layernorm.bias", _SAME),
}
# The newer transformers AST module names → the classic checkpoint names used above.
_AST_ALIASES = (
    (r"^layers\.(\d+)\.", r"encoder.layer.\1."),
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
)


def _names_list(names, limit: int = 12) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f", … ({len(names)} in all)" if len(names) > limit else "")


def _canonical(tensors: dict[str, TensorInfo], prefix: str, aliases=()) -> dict[str, TensorInfo]:
    """File tensor names → canonical names (prefix stripped, aliases applied); ignored buffers dropped."""
    out: dict[str, TensorInfo] = {}
    for name, info in tensors.items():
        if name.endswith(_IGNORED_SUFFIXES):
            continue
        canon = name[len(prefix):] if prefix and name.startswith(prefix) else name
        for pattern, repl in aliases:
            canon = re.sub(pattern, repl, canon)
        if canon in out:
            raise ValueError(f"tensors {out[canon].name!r} and {name!r} are the same parameter ({canon})")
        out[canon] = info
    return out


def _plan(flat_abstract, top: Mapping, layer: Mapping, layer_prefix: str, num_layers: int):
    """Our flat path → (list of HF names, one per layer or one, transform)."""
    plan = {}
    for path, _ in flat_abstract:
        p = tuple(str(x) for x in path)
        if p in top:
            name, fn = top[p]
            plan[path] = ([name], fn, False)
        elif p[:2] == ("encoder", "layers") and p[2:-1] in layer and p[-1] in layer[p[2:-1]][1]:
            module, leaves = layer[p[2:-1]]
            leaf, fn = leaves[p[-1]]
            plan[path] = ([f"{layer_prefix}{i}.{module}.{leaf}" for i in range(num_layers)], fn, True)
        else:
            raise KeyError(f"no checkpoint tensor name for encoder parameter {'.'.join(p)} "
                           f"(the importer's name plan needs updating for a new parameter)")
    return plan


def _load(path: Path | str, model_cls, cfg, tensors: dict[str, TensorInfo], top, layer, layer_prefix, summary: str,
          mesh, seed: int, read=None):
    """Builds `model_cls(cfg)` from `tensors` (canonical name → tensor info with `.name`, `.dtype`, `.shape`) by the
    plan `top`/`layer`, placed by the rule table on `mesh`. `read(info) -> np.ndarray` fetches a tensor's values
    (default: memory-mapped from its safetensors file); `path` only labels the errors."""
    graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: model_cls(cfg, rngs=nnx.Rngs(seed))))
    flat_abstract = list(nnx.to_flat_state(abstract_state))
    plan = _plan(flat_abstract, top, layer, layer_prefix, cfg.num_layers)
    expected = {n for names, _, _ in plan.values() for n in names}
    missing, unknown = expected - set(tensors), set(tensors) - expected
    problems = []
    if missing:
        problems.append(f"missing tensors: {_names_list(missing)}")
    if unknown:
        problems.append(f"unknown tensors (not used by {summary}): "
                        f"{_names_list(tensors[n].name for n in unknown)}")
    if problems:
        raise ValueError(f"{path}: checkpoint does not match its config — " + "; ".join(problems))

    mesh = single_device_mesh() if mesh is None else mesh
    flat_shardings = dict(nnx.to_flat_state(state_shardings(abstract_state, mesh)))
    flat, bad = [], []
    with SafetensorsReader() as reader:
        read = reader.array if read is None else read
        for p, var in flat_abstract:
            names, fn, stacked = plan[p]
            want = tuple(var.shape[1:]) if stacked else tuple(var.shape)
            parts, ok = [], True
            for n in names:
                info = tensors[n]
                if not np.issubdtype(info.dtype, np.floating) and info.dtype.name != "bfloat16":
                    bad.append(f"{info.name}: dtype {info.dtype} is not floating point")
                    ok = False
                    continue
                a = fn(read(info))
                if tuple(a.shape) != want:
                    bad.append(f"{info.name}: {list(info.shape)} does not give {list(want)} ({'.'.join(map(str, p))})")
                    ok = False
                parts.append(a)
            if not ok:
                continue
            arr = np.stack(parts) if stacked else parts[0]
            arr = np.asarray(arr, dtype=np.dtype(var.dtype))
            value = jax.device_put(arr, flat_shardings[p].get_value())
            flat.append((p, var.replace(value)))
    if bad:
        raise ValueError(f"{path}: tensor shapes/dtypes do not match {summary}: " + "; ".join(bad[:12]))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _require(hf: Mapping[str, Any], keys, source: str) -> None:
    missing = [k for k in keys if k not in hf]
    if missing:
        raise ValueError(f"{source}: required fields {missing} are missing")


def clip_vision_config_from_hf(hf: Mapping[str, Any], *, source: str = CONFIG_FILE, **overrides) -> VisionConfig:
    """A HF `CLIPVisionConfig` dict (or a `CLIPConfig` dict, whose `vision_config` is used) → `VisionConfig`;
    `overrides` set the non-shape fields (dtype, param_dtype, attention_impl, scan_layers)."""
    model_type = hf.get("model_type", "clip_vision_model")
    if model_type == "clip":
        hf, source = hf.get("vision_config") or {}, f"{source} (vision_config)"
        model_type = hf.get("model_type", "clip_vision_model")
    if model_type != "clip_vision_model":
        raise ValueError(f"{source}: model_type={model_type!r} is not a CLIP vision tower ('clip_vision_model')")
    _require(hf, ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                  "patch_size"), source)
    fields = dict(hidden_size=int(hf["hidden_size"]), intermediate_size=int(hf["intermediate_size"]),
                  num_layers=int(hf["num_hidden_layers"]), num_heads=int(hf["num_attention_heads"]),
                  image_size=int(hf["image_size"]), patch_size=int(hf["patch_size"]),
                  num_channels=int(hf.get("num_channels", 3)), layer_norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
                  hidden_act=str(hf.get("hidden_act", "quick_gelu")))
    fixed = sorted(set(overrides) & set(fields))
    if fixed:
        raise ValueError(f"load_hf_clip_vision: {fixed} are read from {source} and cannot be overridden")
    try:
        return VisionConfig(**fields, **overrides)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e


def ast_config_from_hf(hf: Mapping[str, Any], *, source: str = CONFIG_FILE, **overrides) -> AudioConfig:
    """A HF `ASTConfig` dict → `AudioConfig`; `overrides` set the non-shape fields."""
    model_type = hf.get("model_type", "audio-spectrogram-transformer")
    if model_type != "audio-spectrogram-transformer":
        raise ValueError(f"{source}: model_type={model_type!r} is not an Audio Spectrogram Transformer")
    _require(hf, ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"), source)
    fields = dict(hidden_size=int(hf["hidden_size"]), intermediate_size=int(hf["intermediate_size"]),
                  num_layers=int(hf["num_hidden_layers"]), num_heads=int(hf["num_attention_heads"]),
                  patch_size=int(hf.get("patch_size", 16)), num_mel_bins=int(hf.get("num_mel_bins", 128)),
                  max_length=int(hf.get("max_length", 1024)), frequency_stride=int(hf.get("frequency_stride", 10)),
                  time_stride=int(hf.get("time_stride", 10)), layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
                  hidden_act=str(hf.get("hidden_act", "gelu")), qkv_bias=bool(hf.get("qkv_bias", True)))
    fixed = sorted(set(overrides) & set(fields))
    if fixed:
        raise ValueError(f"load_hf_ast: {fixed} are read from {source} and cannot be overridden")
    try:
        return AudioConfig(**fields, **overrides)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e


def load_hf_clip_vision(path: str | os.PathLike, *, mesh: jax.sharding.Mesh | None = None, dtype=None,
                        compute_dtype=None, **overrides) -> tuple[VisionEncoder, VisionConfig]:
    """Loads a local HF `CLIPVisionModel` directory (config.json + *.safetensors) into a `VisionEncoder`.

    dtype: parameter dtype (default float32); compute_dtype: activations (default float32); overrides: other
    non-shape `VisionConfig` fields (attention_impl, scan_layers). Returns (model, config)."""
    path = Path(path)
    cfg = clip_vision_config_from_hf(read_hf_config(path), source=str(path / CONFIG_FILE),
                                     **_dtype_overrides(dtype, compute_dtype, overrides))
    tensors = _canonical(checkpoint_tensors(path), "vision_model.")
    summary = (f"CLIPVisionModel config.json: {cfg.num_layers} layers, hidden {cfg.hidden_size}, image "
               f"{cfg.image_size}, patch {cfg.patch_size}")
    model = _load(path, VisionEncoder, cfg, tensors, _CLIP_TOP, _CLIP_LAYER, "encoder.layers.", summary, mesh, 0)
    return model, cfg


def load_hf_ast(path: str | os.PathLike, *, mesh: jax.sharding.Mesh | None = None, dtype=None,
                compute_dtype=None, **overrides) -> tuple[AudioEncoder, AudioConfig]:
    """Loads a local HF `ASTModel` directory (config.json + *.safetensors) into an `AudioEncoder`.
    Arguments as `load_hf_clip_vision`. Returns (model, config)."""
    path = Path(path)
    cfg = ast_config_from_hf(read_hf_config(path), source=str(path / CONFIG_FILE),
                             **_dtype_overrides(dtype, compute_dtype, overrides))
    tensors = _canonical(checkpoint_tensors(path), "", _AST_ALIASES)
    summary = (f"ASTModel config.json: {cfg.num_layers} layers, hidden {cfg.hidden_size}, {cfg.num_mel_bins} mel "
               f"bins × {cfg.max_length} frames, strides {cfg.frequency_stride}/{cfg.time_stride}")
    model = _load(path, AudioEncoder, cfg, tensors, _AST_TOP, _AST_LAYER, "encoder.layer.", summary, mesh, 0)
    return model, cfg


def _dtype_overrides(dtype, compute_dtype, overrides: dict) -> dict:
    out = dict(overrides)
    if dtype is not None:
        out["param_dtype"] = jnp.dtype(dtype).name
    if compute_dtype is not None:
        out["dtype"] = jnp.dtype(compute_dtype).name
    return out


__all__ = ["ast_config_from_hf", "clip_vision_config_from_hf", "load_hf_ast", "load_hf_clip_vision"]
