"""ImageBind checkpoints (facebookresearch/ImageBind, e.g. the released `imagebind_huge.pth`) → the vision and audio
towers of `merg_jax.models.encoders` (`VisionEncoder`, `AudioEncoder`).

`load_imagebind(source)` takes a state dict (name → numpy array or torch tensor), a `.safetensors` file or a
`.pth`/`.pt` file (torch, imported only then). Names may carry DataParallel's `module.` prefix. The towers' shapes
are read from the tensors (`imagebind_configs_from_shapes`), so the real checkpoint gives
`VisionConfig.imagebind_huge()` / `AudioConfig.imagebind_huge()` and tiny random ones work too. Three facts are not
in any shape and follow ImageBind's constructor (`ImageBindModel.__init__`, same argument names): the head counts
(`nn.MultiheadAttention` packs all heads in one `in_proj_weight`; default: ImageBind's 16 heads for 1024/1280-wide
towers, 12 for 768), and the audio geometry `audio_num_mel_bins=128`, `audio_target_len=204`, `audio_stride=10`
(checked against the number of position embeddings).

ImageBind's forward pass, and where each tensor goes (`imagebind/models/imagebind_model.py`,
`multimodal_preprocessors.py`, `transformer.py`, `helpers.py`):

- vision: `PadIm2Video` repeats an image to 2 frames; `rgbt_stem.proj.1` is a bias-free Conv3d `[D, 3, 2, p, p]`
  (stride = kernel; the output `[B, D, 1, H', W']` is flattened row-major) → our 2-D patch kernel `[p, p, 2·3, D]`,
  input channels time-major; the class token is concatenated *before* the learned `pos_embed [1, 1 + H'W', D]` is
  added; `pre_transformer_layer.0` (LayerNorm, eps 1e-6) → `pre_norm`; blocks; head = LayerNorm (eps 1e-6,
  `modality_heads.vision.0` → `post_norm`) on every token, class token (`SelectElement(0)`), bias-free Linear
  (`.2` → `head.projection`); postprocessor `Normalize` (L2).
- audio: bias-free Conv2d `rgbt_stem.proj` `[D, 1, 16, 16]`, stride 10, over `[B, 1, mels, frames]` (frequency
  rows, time columns, flattened row-major), then `rgbt_stem.norm_layer` (LayerNorm, torch's default eps 1e-5 →
  `patch_norm`); class token, `pos_embed`; no pre-transformer LayerNorm (`pre_transformer_layer.0` is Identity);
  blocks with `add_bias_kv=True` (`bias_k`/`bias_v [1, 1, D]`, one extra key/value); head LayerNorm
  (`modality_heads.audio.0`, eps 1e-6 → `final_norm`, which we apply to every token before pooling the class
  token: the same class-token value), Linear `.2`; postprocessor `Normalize` then `LearnableLogitScaling`, whose
  `modality_postprocessors.audio.1.log_logit_scale` buffer gives `embedding_scale = min(exp(·), 100)`.
- blocks (`modality_trunks.{vision,audio}.blocks.{i}`): `x + attn(norm_1(x))`, `x + mlp(norm_2(x))` (LayerNorm eps
  1e-6, exact GELU, 4× MLP); `attn.in_proj_weight [3D, D]` / `in_proj_bias [3D]` hold q, k, v in that order →
  `q_proj`/`k_proj`/`v_proj`; `attn.out_proj` → `o_proj`. Per-block tensors are stacked on the `layers` axis.

Every tensor of a loaded tower must be used and none may be missing (errors name them, and both shapes on a
mismatch); tensors of the other modalities (text, depth, thermal, imu, and vision/audio when not requested) are
skipped and reported; a tensor that belongs to no ImageBind modality is an error (with `strict=False`, reported).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np

from merg_jax.convert import hf_encoders as hfe
from merg_jax.convert.safetensors_io import SafetensorsReader, read_header
from merg_jax.models.encoders import AudioConfig, AudioEncoder, VisionConfig, VisionEncoder

MODALITIES = ("vision", "text", "audio", "depth", "thermal", "imu")  # ImageBind's ModalityType
TOWERS = ("vision", "audio")  # the ones we import
_KEY = re.compile(r"^modality_(?:preprocessors|trunks|heads|postprocessors)\.([^.]+)\.")
_BLOCK = re.compile(r"^modality_trunks\.(vision|audio)\.blocks\.(\d+)\.")
MAX_LOGIT_SCALE = 100.0  # LearnableLogitScaling's max_logit_scale
# Head counts of ImageBind's towers by width (ImageBindModel defaults and imagebind_huge): vision 1024/16 and
# 1280/16, audio 768/12. Any other width needs the count given.
_DEFAULT_HEADS = {1280: 16, 1024: 16, 768: 12}

V_STEM = "modality_preprocessors.vision.rgbt_stem.proj.1.weight"
V_CLS = "modality_preprocessors.vision.cls_token"
V_POS = "modality_preprocessors.vision.pos_embedding_helper.pos_embed"
V_HEAD = "modality_heads.vision.2.weight"
A_STEM = "modality_preprocessors.audio.rgbt_stem.proj.weight"
A_STEM_NORM = "modality_preprocessors.audio.rgbt_stem.norm_layer."
A_CLS = "modality_preprocessors.audio.cls_token"
A_POS = "modality_preprocessors.audio.pos_embedding_helper.pos_embed"
A_HEAD = "modality_heads.audio.2.weight"
A_LOGIT = "modality_postprocessors.audio.1.log_logit_scale"


def _CONV3D(a):
    """Conv3d `[D, C, t, p, p]` → our 2-D patch kernel `[p, p, t·C, D]`, input channels time-major."""
    if a.ndim != 5:
        return a
    d, c, t, kh, kw = a.shape
    return a.transpose(3, 4, 2, 1, 0).reshape(kh, kw, t * c, d)


def _in_proj(i: int):
    """The i-th third (q, k, v) of a packed `in_proj_weight [3D, D]` (→ kernel [D, D]) or `in_proj_bias [3D]`."""
    def fn(a):
        n = a.shape[0] // 3
        part = a[i * n:(i + 1) * n]
        return part.T if part.ndim == 2 else part
    return fn


_LAYER = {
    ("norm1",): ("norm_1", hfe._NORM), ("norm2",): ("norm_2", hfe._NORM),
    ("attn", "q_proj"): ("attn", {"kernel": ("in_proj_weight", _in_proj(0)), "bias": ("in_proj_bias", _in_proj(0))}),
    ("attn", "k_proj"): ("attn", {"kernel": ("in_proj_weight", _in_proj(1)), "bias": ("in_proj_bias", _in_proj(1))}),
    ("attn", "v_proj"): ("attn", {"kernel": ("in_proj_weight", _in_proj(2)), "bias": ("in_proj_bias", _in_proj(2))}),
    ("attn", "o_proj"): ("attn.out_proj", hfe._LINEAR),
    ("attn",): ("attn", {"bias_k": ("bias_k", hfe._TOKEN), "bias_v": ("bias_v", hfe._TOKEN)}),
    ("mlp", "fc1"): ("mlp.fc1", hfe._LINEAR), ("mlp", "fc2"): ("mlp.fc2", hfe._LINEAR),
}


def _norm(ours: str, theirs: str) -> dict:
    return {(ours, "scale"): (theirs + "weight", hfe._SAME), (ours, "bias"): (theirs + "bias", hfe._SAME)}


_VISION_TOP = {
    ("patch_embed", "kernel"): (V_STEM, _CONV3D), ("class_embedding",): (V_CLS, hfe._TOKEN),
    ("position_embedding",): (V_POS, hfe._BATCH1), ("head", "projection", "kernel"): (V_HEAD, hfe._T),
    **_norm("pre_norm", "modality_trunks.vision.pre_transformer_layer.0."),
    **_norm("post_norm", "modality_heads.vision.0."),
}
_AUDIO_TOP = {
    ("patch_embed", "kernel"): (A_STEM, hfe._CONV), ("cls_token",): (A_CLS, hfe._TOKEN),
    ("position_embedding",): (A_POS, hfe._BATCH1), ("head", "projection", "kernel"): (A_HEAD, hfe._T),
    **_norm("patch_norm", A_STEM_NORM), **_norm("final_norm", "modality_heads.audio.0."),
}


@dataclasses.dataclass(frozen=True)
class ImportReport:
    """Tensor names as in the source: `used` by the loaded towers, `skipped` (other modalities' tensors) and
    `unknown` (no ImageBind modality; only ever non-empty with `strict=False`)."""

    used: tuple[str, ...]
    skipped: tuple[str, ...]
    unknown: tuple[str, ...]


@dataclasses.dataclass
class ImageBindTowers:
    """The imported towers; a modality not requested is None."""

    vision: VisionEncoder | None
    vision_config: VisionConfig | None
    audio: AudioEncoder | None
    audio_config: AudioConfig | None
    report: ImportReport


# ----------------------------------------------------------------------------------------------------------------
# Shapes → configs


def _heads(width: int, given: int | None, arg: str) -> int:
    if given is not None:
        return int(given)
    if width not in _DEFAULT_HEADS:
        raise ValueError(f"{arg}: the head count is not stored in an ImageBind checkpoint and width {width} is not "
                         f"one of ImageBind's ({sorted(_DEFAULT_HEADS)}); pass {arg}=")
    return _DEFAULT_HEADS[width]


def _blocks(shapes: Mapping[str, tuple], tower: str) -> int:
    ids = {int(m.group(2)) for n in shapes if (m := _BLOCK.match(n)) and m.group(1) == tower}
    if not ids or ids != set(range(len(ids))):
        raise ValueError(f"ImageBind {tower} trunk: blocks must be numbered 0..L-1, found {sorted(ids) or 'none'} "
                         f"(modality_trunks.{tower}.blocks.{{i}}.*)")
    return len(ids)


def _shape(shapes: Mapping[str, tuple], name: str, rank: int, what: str) -> tuple[int, ...]:
    if name not in shapes:
        raise ValueError(f"missing tensor {name} (needed to infer the {what})")
    shape = tuple(shapes[name])
    if len(shape) != rank:
        raise ValueError(f"tensor {name}: shape {list(shape)} is not {rank}-D (inferring the {what})")
    return shape


def _token_shapes(shapes, cls: str, pos: str, width: int, what: str) -> int:
    """Checks the class token `[1, 1, D]`; returns the number of position embeddings `[1, N, D]`."""
    c, p = _shape(shapes, cls, 3, what), _shape(shapes, pos, 3, what)
    if c != (1, 1, width):
        raise ValueError(f"tensor {cls}: shape {list(c)}, expected [1, 1, {width}] (one class token)")
    if p[0] != 1 or p[2] != width:
        raise ValueError(f"tensor {pos}: shape {list(p)}, expected [1, tokens, {width}]")
    return p[1]


def _fields_and_overrides(fields: dict, overrides: dict, cls, what: str):
    fixed = sorted(set(overrides) & set(fields))
    if fixed:
        raise ValueError(f"load_imagebind: {fixed} are read from the checkpoint and cannot be overridden")
    try:
        return cls(**fields, **overrides)
    except (TypeError, ValueError) as e:
        raise ValueError(f"ImageBind {what}: {e}") from e


def _vision_config(shapes, heads, overrides) -> VisionConfig:
    what = "vision tower's shape"
    d, c, t, kh, kw = _shape(shapes, V_STEM, 5, what)
    if kh != kw:
        raise ValueError(f"tensor {V_STEM}: kernel {kh}×{kw} is not square")
    n = _token_shapes(shapes, V_CLS, V_POS, d, what) - 1
    side = math.isqrt(n)
    if side * side != n:  # one temporal patch (ImageBind: 2 frames, tubelet 2) of a square image
        raise ValueError(f"tensor {V_POS}: {n} patch positions are not a square grid (one tubelet of a square image)")
    L = _blocks(shapes, "vision")
    if "modality_trunks.vision.blocks.0.attn.bias_k" in shapes:
        raise ValueError("ImageBind vision blocks have attn.bias_k/bias_v, which VisionConfig does not support")
    proj = _shape(shapes, V_HEAD, 2, what)
    fields = {"hidden_size": d, "num_layers": L, "num_heads": _heads(d, heads, "vision_num_heads"),
              "intermediate_size": _shape(shapes, "modality_trunks.vision.blocks.0.mlp.fc1.weight", 2, what)[0],
              "image_size": side * kh, "patch_size": kh, "num_channels": c, "tubelet_size": t,
              "layer_norm_eps": 1e-6, "hidden_act": "gelu", "qkv_bias": True, "projection_dim": proj[0],
              "normalize_embedding": True, "embedding_scale": 1.0}
    return _fields_and_overrides(fields, overrides, VisionConfig, "vision tower")


def _audio_config(shapes, heads, mel_bins, target_len, stride, logit_scale, overrides) -> AudioConfig:
    what = "audio tower's shape"
    d, c, kh, kw = _shape(shapes, A_STEM, 4, what)
    if kh != kw or c != 1:
        raise ValueError(f"tensor {A_STEM}: shape {[d, c, kh, kw]}, expected [D, 1, p, p]")
    tokens = _token_shapes(shapes, A_CLS, A_POS, d, what)
    if "modality_trunks.audio.pre_transformer_layer.0.weight" in shapes:
        raise ValueError("ImageBind audio trunk has a pre-transformer LayerNorm, which AudioEncoder does not have")
    proj = _shape(shapes, A_HEAD, 2, what)
    fields = {"hidden_size": d, "num_layers": _blocks(shapes, "audio"),
              "num_heads": _heads(d, heads, "audio_num_heads"),
              "intermediate_size": _shape(shapes, "modality_trunks.audio.blocks.0.mlp.fc1.weight", 2, what)[0],
              "patch_size": kh, "num_mel_bins": int(mel_bins), "max_length": int(target_len),
              "frequency_stride": int(stride), "time_stride": int(stride), "patch_bias": False,
              "patch_norm": A_STEM_NORM + "weight" in shapes, "patch_norm_eps": 1e-5, "num_special_tokens": 1,
              "attention_bias_kv": "modality_trunks.audio.blocks.0.attn.bias_k" in shapes,
              "layer_norm_eps": 1e-6, "hidden_act": "gelu", "qkv_bias": True, "projection_dim": proj[0],
              "normalize_embedding": True, "embedding_scale": float(logit_scale)}
    cfg = _fields_and_overrides(fields, overrides, AudioConfig, "audio tower")
    if cfg.num_tokens != tokens:
        raise ValueError(f"tensor {A_POS}: {tokens} position embeddings, but {mel_bins} mel bins × {target_len} "
                         f"frames with patch {kh} and stride {stride} give 1 + {cfg.frequency_patches}×"
                         f"{cfg.time_patches} = {cfg.num_tokens}; pass audio_num_mel_bins / audio_target_len / "
                         "audio_stride (ImageBindModel's arguments) to match the checkpoint")
    return cfg


def imagebind_configs_from_shapes(shapes: Mapping[str, Any], *, modalities=TOWERS, vision_num_heads=None,
                                  audio_num_heads=None, audio_num_mel_bins: int = 128, audio_target_len: int = 204,
                                  audio_stride: int = 10, audio_logit_scale: float = 20.0,
                                  **overrides) -> tuple[VisionConfig | None, AudioConfig | None]:
    """ImageBind tensor shapes (name → shape tuple, or anything with `.shape`; `module.` prefixes allowed) →
    `(VisionConfig, AudioConfig)` (None for a modality not in `modalities`). `audio_logit_scale` becomes
    `embedding_scale` (`load_imagebind` reads it from the checkpoint); `overrides` set non-shape fields (dtype,
    param_dtype, attention_impl, scan_layers, remat) of both configs."""
    modalities = _check_modalities(modalities)
    shapes = {(n.removeprefix("module.")): tuple(getattr(s, "shape", s))
              for n, s in shapes.items()}
    vision = _vision_config(shapes, vision_num_heads, overrides) if "vision" in modalities else None
    audio = _audio_config(shapes, audio_num_heads, audio_num_mel_bins, audio_target_len, audio_stride,
                          audio_logit_scale, overrides) if "audio" in modalities else None
    return vision, audio


def _check_modalities(modalities) -> tuple[str, ...]:
    modalities = (modalities,) if isinstance(modalities, str) else tuple(modalities)
    bad = [m for m in modalities if m not in TOWERS]
    if bad or not modalities:
        raise ValueError(f"modalities={modalities!r}: choose one or more of {TOWERS} (ImageBind's other modalities "
                         "have no tower here)")
    return modalities


# ----------------------------------------------------------------------------------------------------------------
# Sources


@dataclasses.dataclass(frozen=True)
class _ArrayTensor:
    """An in-memory tensor, with the fields `hf_encoders._load` reads from a safetensors `TensorInfo`."""

    name: str
    array: np.ndarray

    @property
    def dtype(self):
        return self.array.dtype

    @property
    def shape(self):
        return tuple(self.array.shape)


def _to_numpy(value, name: str) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor, without importing torch
        t = value.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":  # numpy has no bfloat16: reinterpret the bits
            import torch
            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()
    try:
        return np.asarray(value)
    except Exception as e:
        raise ValueError(f"state dict entry {name!r}: {type(value).__name__} is not an array or tensor") from e


def _torch_load(path: Path) -> Mapping:
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"{path}: reading a .pth/.pt checkpoint needs torch (pip install torch), or convert it "
                          "to .safetensors once and load that") from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(  # noqa: TRY004
            f"{path}: expected a state dict (name → tensor), got {type(state).__name__}")
    return state


def _open(source) -> tuple[str, dict, Any]:
    """→ (label for errors, {name: tensor info}, read(info) → np.ndarray, or None for memory-mapped safetensors)."""
    if isinstance(source, Mapping):
        return "ImageBind state dict", {n: _ArrayTensor(n, _to_numpy(v, n)) for n, v in source.items()}, \
            lambda info: info.array
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(  # noqa: TRY004  (bad arguments are ValueErrors throughout the package)
            f"load_imagebind: path_or_state_dict must be a mapping or a path, got {type(source).__name__}")
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"load_imagebind: {path} is not a file")
    if path.suffix == ".safetensors":
        return str(path), read_header(path)[0], None
    if path.suffix in (".pth", ".pt"):
        state = _torch_load(path)
        return str(path), {n: _ArrayTensor(n, _to_numpy(v, n)) for n, v in state.items()}, lambda info: info.array
    raise ValueError(f"load_imagebind: {path} is neither .safetensors nor .pth/.pt")


def _log_logit_scale(label: str, info, read) -> float:
    with SafetensorsReader() as reader:
        a = np.asarray((read or reader.array)(info), np.float32)
    if a.size != 1:
        raise ValueError(f"{label}: tensor {info.name}: shape {list(a.shape)}, expected a scalar")
    # LearnableLogitScaling: clip(exp(log_logit_scale), max=100), in the buffer's float32
    return float(min(np.exp(a.reshape(())), np.float32(MAX_LOGIT_SCALE)))


# ----------------------------------------------------------------------------------------------------------------
# Loading


def load_imagebind(path_or_state_dict, *, modalities=TOWERS, mesh: jax.sharding.Mesh | None = None, dtype=None,
                   compute_dtype=None, strict: bool = True, vision_num_heads: int | None = None,
                   audio_num_heads: int | None = None, audio_num_mel_bins: int = 128, audio_target_len: int = 204,
                   audio_stride: int = 10, **overrides) -> ImageBindTowers:
    """Imports ImageBind's vision and/or audio towers (see the module docstring for the mapping).

    path_or_state_dict: {name: numpy array | torch tensor}, a `.safetensors` file or a `.pth`/`.pt` state dict.
    modalities: which towers to build ("vision", "audio"). mesh: parameters are placed by the rule table (default:
    one device). dtype: parameter dtype (default float32); compute_dtype: activations (default float32).
    strict: False reports tensors of no ImageBind modality instead of raising. vision_num_heads, audio_num_heads,
    audio_num_mel_bins, audio_target_len, audio_stride: what shapes do not tell (ImageBind-huge's by default).
    overrides: other non-shape config fields (attention_impl, scan_layers, remat)."""
    modalities = _check_modalities(modalities)
    label, raw, read = _open(path_or_state_dict)
    tensors = hfe._canonical(raw, "module.")
    groups: dict[str, dict] = {m: {} for m in modalities}
    skipped, unknown = [], []
    for canon, info in tensors.items():
        m = _KEY.match(canon)
        if m and m.group(1) in groups:
            groups[m.group(1)][canon] = info
        elif m and m.group(1) in MODALITIES:
            skipped.append(info.name)
        else:
            unknown.append(info.name)
    if unknown and strict:
        raise ValueError(f"{label}: tensors of no ImageBind modality ({', '.join(MODALITIES)}): "
                         f"{hfe._names_list(unknown)} (strict=False skips them)")
    cfg_kw = {"vision_num_heads": vision_num_heads, "audio_num_heads": audio_num_heads,
              "audio_num_mel_bins": audio_num_mel_bins, "audio_target_len": audio_target_len,
              "audio_stride": audio_stride}
    overrides = hfe._dtype_overrides(dtype, compute_dtype, overrides)
    shapes = {n: info.shape for n, info in tensors.items()}
    vision = audio = vcfg = acfg = None
    used = []
    if "vision" in modalities:
        vcfg, _ = imagebind_configs_from_shapes(shapes, modalities="vision", **cfg_kw, **overrides)
        summary = (f"the ImageBind vision tower its shapes give ({vcfg.num_layers} blocks, hidden {vcfg.hidden_size}, "
                   f"image {vcfg.image_size}, patch {vcfg.tubelet_size}×{vcfg.patch_size}²)")
        vision = hfe._load(label, VisionEncoder, vcfg, groups["vision"], _VISION_TOP, _LAYER,
                           "modality_trunks.vision.blocks.", summary, mesh, 0, read=read)
        used += [info.name for info in groups["vision"].values()]
    if "audio" in modalities:
        audio_tensors = dict(groups["audio"])
        if A_LOGIT not in audio_tensors:
            raise ValueError(f"{label}: missing tensors: {A_LOGIT} (the audio embedding scale)")
        scale = _log_logit_scale(label, audio_tensors.pop(A_LOGIT), read)
        _, acfg = imagebind_configs_from_shapes(shapes, modalities="audio", audio_logit_scale=scale, **cfg_kw,
                                                **overrides)
        summary = (f"the ImageBind audio tower its shapes give ({acfg.num_layers} blocks, hidden {acfg.hidden_size}, "
                   f"{acfg.num_mel_bins} mels × {acfg.max_length} frames)")
        audio = hfe._load(label, AudioEncoder, acfg, audio_tensors, _AUDIO_TOP, _LAYER,
                          "modality_trunks.audio.blocks.", summary, mesh, 0, read=read)
        used += [info.name for info in groups["audio"].values()]
    report = ImportReport(used=tuple(sorted(used)), skipped=tuple(sorted(skipped)), unknown=tuple(sorted(unknown)))
    return ImageBindTowers(vision=vision, vision_config=vcfg, audio=audio, audio_config=acfg, report=report)


__all__ = ["ImageBindTowers", "ImportReport", "imagebind_configs_from_shapes", "load_imagebind"]
