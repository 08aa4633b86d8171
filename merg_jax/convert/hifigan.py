"""Hugging Face `SpeechT5HifiGan` directories (config.json + *.safetensors) → `merg_jax.models.speech.HifiGan`.

    vocoder = load_hf_hifigan("path/to/speecht5_hifigan")   # a HifiGan; vocoder.config is its HifiGanConfig
    wave = vocoder(mel)                                      # [B, T, n_mels] → [B, samples]

Every tensor in the files must be used and every parameter found (errors name the file and the tensors); shapes
are checked against config.json. Layouts: `Conv1d.weight [out, in, k]` → `kernel [k, in, out]`,
`ConvTranspose1d.weight [in, out, k]` → `kernel [k, in, out]`. Weight-normalised checkpoints are folded to plain
weights, w = g · v / ‖v‖ (norm over every axis but g's): the old `X.weight_g` / `X.weight_v` pair and the
parametrisation pair `X.parametrizations.weight.original0` (g) / `original1` (v). `mean` / `scale` are loaded when
`normalize_before` and ignored otherwise (transformers saves them either way).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from merg_jax.convert.hf_llama import CONFIG_FILE, checkpoint_tensors, read_hf_config
from merg_jax.convert.safetensors_io import SafetensorsReader, TensorInfo
from merg_jax.models.speech.hifigan import HifiGan, HifiGanConfig

# Weight-norm spellings of "X.weight": (g suffix, v suffix).
_WEIGHT_NORM = ((".weight_g", ".weight_v"),
                (".parametrizations.weight.original0", ".parametrizations.weight.original1"))
_STATS = ("mean", "scale")

Reader = Callable[[TensorInfo], np.ndarray]


def _names_list(names, limit: int = 12) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f", … ({len(names)} in all)" if len(names) > limit else "")


def _files(tensors: dict[str, TensorInfo]) -> str:
    return ", ".join(sorted({str(t.file) for t in tensors.values()}))


def fold_weight_norm(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    """PyTorch's weight norm, w = g · v / ‖v‖, the norm over every axis where g has size 1 (g `[out, 1, 1]` for
    the default dim=0). Computed in float64, returned in v's dtype."""
    if g.ndim != v.ndim or any(gs not in (1, vs) for gs, vs in zip(g.shape, v.shape)):
        raise ValueError(f"weight norm: g {list(g.shape)} does not broadcast against v {list(v.shape)}")
    v64 = v.astype(np.float64)
    axes = tuple(a for a in range(v.ndim) if g.shape[a] == 1)
    norm = np.sqrt(np.sum(v64 * v64, axis=axes, keepdims=True))
    return (g.astype(np.float64) * v64 / norm).astype(v.dtype)


def _sources(tensors: dict[str, TensorInfo]) -> tuple[dict[str, tuple[TensorInfo, ...]], list[str]]:
    """Canonical name (`X.weight` for a weight-norm pair) → the file tensors it is read from (1, or g and v);
    plus the problems found (a half pair, or a weight stored both plain and weight-normalised)."""
    out: dict[str, tuple[TensorInfo, ...]] = {}
    problems: list[str] = []
    used: set[str] = set()
    for g_sfx, v_sfx in _WEIGHT_NORM:
        for name in tensors:
            if not name.endswith(g_sfx):
                continue
            base = name[:-len(g_sfx)]
            v_name = base + v_sfx
            if v_name not in tensors:
                problems.append(f"{name} has no {v_name} (weight norm needs both)")
                continue
            out[base + ".weight"] = (tensors[name], tensors[v_name])
            used.update((name, v_name))
        problems += [f"{n} has no {n[:-len(v_sfx)] + g_sfx} (weight norm needs both)"
                     for n in tensors if n.endswith(v_sfx) and n not in used]
        used.update(n for n in tensors if n.endswith(v_sfx))
    for name, info in tensors.items():
        if name in used:
            continue
        if name in out:
            problems.append(f"{name} is stored both plain and weight-normalised")
            continue
        out[name] = (info,)
    return out, problems


def _hf_name(path: tuple) -> str:
    """Our flat state path → the Hugging Face tensor name (`('upsampler', 0, 'kernel')` → `upsampler.0.weight`)."""
    *module, leaf = (str(p) for p in path)
    return ".".join([*module, {"kernel": "weight"}.get(leaf, leaf)])


def _layout(path: tuple) -> Callable[[np.ndarray], np.ndarray]:
    """How the HF tensor becomes ours: conv weights to `[k, in, out]`; biases and statistics as they are."""
    if str(path[-1]) != "kernel":
        return lambda a: a
    if str(path[0]) == "upsampler":
        return lambda a: a.transpose(2, 0, 1) if a.ndim == 3 else a  # ConvTranspose1d [in, out, k]
    return lambda a: a.transpose(2, 1, 0) if a.ndim == 3 else a  # Conv1d [out, in, k]


def load_hf_hifigan(path: str | os.PathLike, *, dtype=None, compute_dtype=None) -> HifiGan:
    """Loads a directory written by `SpeechT5HifiGan.save_pretrained` into a `HifiGan` (its config from
    config.json, as `model.config`). dtype: parameter dtype (default float32); compute_dtype: activations
    (default float32). Raises ValueError naming the file and the tensors when they do not match the config."""
    path = Path(path)
    overrides = {}
    if dtype is not None:
        overrides["param_dtype"] = jnp.dtype(dtype).name
    if compute_dtype is not None:
        overrides["dtype"] = jnp.dtype(compute_dtype).name
    cfg = HifiGanConfig.from_hf_config(read_hf_config(path), source=str(path / CONFIG_FILE), **overrides)
    tensors = checkpoint_tensors(path)
    files = _files(tensors)
    sources, problems = _sources(tensors)
    if problems:
        raise ValueError(f"{files}: malformed weight norm — " + "; ".join(problems[:12]))

    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: HifiGan(cfg, rngs=nnx.Rngs(0))))
    flat_abstract = list(nnx.to_flat_state(abstract))
    plan = {p: _hf_name(p) for p, _ in flat_abstract}
    expected = set(plan.values())
    ignored = set() if cfg.normalize_before else set(_STATS)
    missing = expected - set(sources)
    unexpected = set(sources) - expected - ignored
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors: {_names_list(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors: {_names_list(n for k in unexpected for n in (t.name for t in sources[k]))}")
        summary = (f"config.json: {len(cfg.upsample_rates)} upsampling stages × {len(cfg.resblock_kernel_sizes)} "
                   f"resblocks, {cfg.upsample_initial_channel} initial channels, normalize_before="
                   f"{cfg.normalize_before}")
        raise ValueError(f"{files}: checkpoint does not match its {summary} — " + "; ".join(parts))

    flat, bad = [], []
    with SafetensorsReader() as reader:
        for p, var in flat_abstract:
            infos = sources[plan[p]]
            if any(not np.issubdtype(t.dtype, np.floating) and t.dtype.name != "bfloat16" for t in infos):
                bad.append(f"{infos[0].name}: dtype {infos[0].dtype} is not floating point")
                continue
            arrays = [np.asarray(reader.array(t), np.float32) for t in infos]
            a = _layout(p)(arrays[0] if len(arrays) == 1 else fold_weight_norm(*arrays))
            if tuple(a.shape) != tuple(var.shape):
                bad.append(f"{plan[p]}: {list(infos[-1].shape)} does not give {list(var.shape)} "
                           f"({'.'.join(map(str, p))})")
                continue
            flat.append((p, var.replace(jax.device_put(np.asarray(a, dtype=np.dtype(var.dtype))))))
    if bad:
        raise ValueError(f"{files}: tensor shapes/dtypes do not match config.json: " + "; ".join(bad[:12]))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


__all__ = ["fold_weight_norm", "load_hf_hifigan"]
