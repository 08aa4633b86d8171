"""Media encoders in Flax NNX: a vision transformer for frames and clips (CLIP vision tower layout) and an audio
spectrogram transformer (Hugging Face `ASTModel` layout).

Both are pre-LayerNorm transformer encoders over patch tokens — LayerNorm → multi-head self-attention (through
`merg_jax.kernels.attention`, non-causal) → residual → LayerNorm → MLP (quick_gelu / gelu) → residual — and
both return an `EncoderOutput`: the token sequence `[B, N, D]` and one pooled embedding `[B, D]`.

- `VisionEncoder(pixels [B, H, W, C])`: patch convolution (stride = patch), class token, learned position
  embeddings, pre-LayerNorm, layers; `tokens` = the last layer's output (Hugging Face's `last_hidden_state`),
  `pooled` = post-LayerNorm of the class token (`pooler_output`). `encode_clip(frames [B, T, H, W, C])` runs
  every frame and pools per-frame embeddings over time (mean, optionally masked); `sample_frame_indices` picks
  the T frames of a longer video.
- `AudioEncoder(log_mel [B, time, mel])`: overlapping `patch × patch` patches of the log-mel with
  frequency/time strides, class + distillation tokens, position embeddings, layers, final LayerNorm;
  `pooled` = mean of the two special tokens' outputs.

Images are channels-last (`[H, W, C]`, as `merg_jax.data.features.video_frames` produces them; `normalize_clip`
applies CLIP's pixel statistics) and log-mels are `[frames, n_mels]` (as `log_mel` produces them; `fit_length`
crops/pads to `max_length`, `normalize_ast` applies AST's statistics). Parameters carry logical axis names
(`embed`, `q_heads`, `mlp`, `norm`, `layers`) so the sharding rule table places them; the layers are stacked on a
leading `layers` axis and scanned (or unrolled, optionally rematerialised), like the LLM.
Importers: `merg_jax.convert.hf_encoders`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float

from merg_jax.kernels import attention
from merg_jax.models.layers import Dense, param
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


def _check_common(cfg, name: str) -> None:
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
class VisionConfig:
    """A CLIP-style vision tower (defaults: CLIP ViT-L/14 at 224 px). Hashable: usable as a static jit arg."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    qkv_bias: bool = True
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    attention_impl: str = "auto"
    scan_layers: bool = True
    remat: bool = False  # recompute each layer's activations in the backward pass (fine-tuning at scale)

    def __post_init__(self):
        _check_common(self, "VisionConfig")
        if self.image_size % self.patch_size:
            raise ValueError(f"VisionConfig: image_size={self.image_size} is not a multiple of "
                             f"patch_size={self.patch_size}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        return self.num_patches + 1  # + class token


@dataclasses.dataclass(frozen=True)
class AudioConfig:
    """An Audio Spectrogram Transformer (defaults: MIT/ast-finetuned-audioset-10-10-0.4593)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    patch_size: int = 16
    num_mel_bins: int = 128
    max_length: int = 1024  # spectrogram frames (time)
    frequency_stride: int = 10
    time_stride: int = 10
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    qkv_bias: bool = True
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_impl: str = "auto"
    scan_layers: bool = True
    remat: bool = False  # recompute each layer's activations in the backward pass (fine-tuning at scale)

    def __post_init__(self):
        _check_common(self, "AudioConfig")
        if self.num_mel_bins < self.patch_size or self.max_length < self.patch_size:
            raise ValueError(f"AudioConfig: num_mel_bins={self.num_mel_bins} and max_length={self.max_length} must "
                             f"be at least patch_size={self.patch_size}")

    @property
    def frequency_patches(self) -> int:
        return (self.num_mel_bins - self.patch_size) // self.frequency_stride + 1

    @property
    def time_patches(self) -> int:
        return (self.max_length - self.patch_size) // self.time_stride + 1

    @property
    def num_patches(self) -> int:
        return self.frequency_patches * self.time_patches

    @property
    def num_tokens(self) -> int:
        return self.num_patches + 2  # + class and distillation tokens


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class EncoderOutput:
    """A pytree, so jitted functions can return it."""

    tokens: Float[Array, "B N D"]
    pooled: Float[Array, "B D"]
    frame_pooled: Float[Array, "B T D"] | None = None  # clips only: each frame's pooled embedding


# ----------------------------------------------------------------------------------------------------------------
# Building blocks


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


class PatchEmbed(nnx.Module):
    """A strided convolution over channels-last input: `[B, H, W, C]` → `[B, (H'·W'), D]` (row-major patches)."""

    def __init__(self, patch: int, channels: int, dim: int, strides: tuple[int, int], *, use_bias: bool,
                 dtype, param_dtype, rngs: nnx.Rngs | None):
        self.strides, self.dtype = tuple(strides), dtype
        fan_in = patch * patch * channels
        self.kernel = param(rngs, nnx.initializers.normal(stddev=1.0 / math.sqrt(fan_in)),
                            (patch, patch, channels, dim), (None, None, None, "embed"), param_dtype)
        self.bias = param(rngs, nnx.initializers.zeros, (dim,), ("embed",), param_dtype) if use_bias else None

    def __call__(self, x: Float[Array, "B H W C"]) -> Float[Array, "B N D"]:
        y = jax.lax.conv_general_dilated(x.astype(self.dtype), self.kernel[...].astype(self.dtype), self.strides,
                                         "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y.reshape(y.shape[0], -1, y.shape[-1])


class SelfAttention(nnx.Module):
    def __init__(self, cfg, *, rngs: nnx.Rngs):
        d, dt, pdt = cfg.hidden_size, jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.num_heads, self.impl = cfg.num_heads, cfg.attention_impl
        kw = dict(dtype=dt, param_dtype=pdt, rngs=rngs)
        self.q_proj = Dense(d, d, names=("embed", "q_heads"), use_bias=cfg.qkv_bias, **kw)
        self.k_proj = Dense(d, d, names=("embed", "q_heads"), use_bias=cfg.qkv_bias, **kw)
        self.v_proj = Dense(d, d, names=("embed", "q_heads"), use_bias=cfg.qkv_bias, **kw)
        self.o_proj = Dense(d, d, names=("q_heads", "embed"), use_bias=True, **kw)

    def __call__(self, x: Float[Array, "B L D"]) -> Float[Array, "B L D"]:
        b, length, d = x.shape
        heads = (b, length, self.num_heads, d // self.num_heads)
        names = ("batch", "length", "act_heads", None)
        q = constrain(self.q_proj(x).reshape(heads), names)
        k = constrain(self.k_proj(x).reshape(heads), names)
        v = constrain(self.v_proj(x).reshape(heads), names)
        out = constrain(attention(q, k, v, causal=False, impl=self.impl), names)
        return self.o_proj(out.reshape(b, length, d))


class Mlp(nnx.Module):
    def __init__(self, cfg, *, rngs: nnx.Rngs):
        kw = dict(use_bias=True, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
        self.act = cfg.hidden_act
        self.fc1 = Dense(cfg.hidden_size, cfg.intermediate_size, names=("embed", "mlp"), **kw)
        self.fc2 = Dense(cfg.intermediate_size, cfg.hidden_size, names=("mlp", "embed"), **kw)

    def __call__(self, x: Float[Array, "B L D"]) -> Float[Array, "B L D"]:
        h = ACTIVATIONS[self.act](self.fc1(x))
        return self.fc2(constrain(h, ("batch", "length", "act_mlp")))


class EncoderLayer(nnx.Module):
    """Pre-LayerNorm block: x + attn(ln1(x)), then + mlp(ln2(·))."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        kw = dict(eps=cfg.layer_norm_eps, param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
        self.norm1 = LayerNorm(cfg.hidden_size, **kw)
        self.attn = SelfAttention(cfg, rngs=rngs)
        self.norm2 = LayerNorm(cfg.hidden_size, **kw)
        self.mlp = Mlp(cfg, rngs=rngs)

    def __call__(self, x: Float[Array, "B L D"]) -> Float[Array, "B L D"]:
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return constrain(x, ("batch", "length", "act_embed"))


class Encoder(nnx.Module):
    """`num_layers` EncoderLayers, parameters stacked on a leading `layers` axis; scanned or unrolled."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        self.num_layers, self.scan, self.remat = cfg.num_layers, cfg.scan_layers, cfg.remat

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_layers(rngs):
            return EncoderLayer(cfg, rngs=rngs)

        self.layers = make_layers(rngs)

    def __call__(self, x: Float[Array, "B L D"]) -> Float[Array, "B L D"]:
        graphdef, params = nnx.split(self.layers)

        def body(h, layer_params):
            return nnx.merge(graphdef, layer_params)(h), None

        if self.remat:
            body = jax.checkpoint(body, prevent_cse=not self.scan)
        if self.scan:
            return jax.lax.scan(body, x, params)[0]
        for i in range(self.num_layers):
            x, _ = body(x, jax.tree.map(lambda a: a[i], params))
        return x


# ----------------------------------------------------------------------------------------------------------------
# Vision


def sample_frame_indices(num_available: int, num_frames: int) -> np.ndarray:
    """`num_frames` frame indices spread evenly over `num_available` frames: the centre of each of `num_frames`
    equal segments (repeats frames when the video is shorter than `num_frames`)."""
    if num_available < 1 or num_frames < 1:
        raise ValueError(f"sample_frame_indices: need at least one frame, got num_available={num_available}, "
                         f"num_frames={num_frames}")
    idx = np.floor((np.arange(num_frames) + 0.5) * num_available / num_frames).astype(np.int64)
    return np.minimum(idx, num_available - 1)


def sample_frames(frames, num_frames: int, axis: int = 0):
    """`frames` (numpy or jax, time on `axis`) at `sample_frame_indices(len, num_frames)`."""
    idx = sample_frame_indices(frames.shape[axis], num_frames)
    return frames.take(idx, axis=axis) if isinstance(frames, np.ndarray) else jnp.take(frames, idx, axis=axis)


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's RGB statistics (transformers' CLIPImageProcessor)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def normalize_clip(pixels, mean=CLIP_MEAN, std=CLIP_STD):
    """uint8 RGB `[..., H, W, 3]` (0..255; floats are taken as 0..1) → the float32 input CLIP towers expect:
    (x - mean) / std per channel. Resize / centre-crop to `image_size` first (`data.features.video_frames`)."""
    xp = np if isinstance(pixels, np.ndarray) else jnp
    x = pixels.astype(xp.float32)
    if pixels.dtype == xp.uint8:
        x = x / 255.0
    return (x - xp.asarray(mean, xp.float32)) / xp.asarray(std, xp.float32)


class VisionEncoder(nnx.Module):
    """CLIP vision tower. `model(pixels [B, H, W, C])` → EncoderOutput(tokens [B, 1 + patches, D], pooled)."""

    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, pdt = cfg.hidden_size, jnp.dtype(cfg.param_dtype)
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.num_channels, d, (cfg.patch_size, cfg.patch_size),
                                      use_bias=False, dtype=jnp.dtype(cfg.dtype), param_dtype=pdt, rngs=rngs)
        self.class_embedding = param(rngs, nnx.initializers.normal(stddev=d ** -0.5), (d,), ("embed",), pdt)
        self.position_embedding = param(rngs, nnx.initializers.normal(stddev=0.02), (cfg.num_tokens, d),
                                        (None, "embed"), pdt)
        self.pre_norm = LayerNorm(d, eps=cfg.layer_norm_eps, param_dtype=pdt, rngs=rngs)
        self.encoder = Encoder(cfg, rngs=rngs)
        self.post_norm = LayerNorm(d, eps=cfg.layer_norm_eps, param_dtype=pdt, rngs=rngs)

    def __call__(self, pixels: Float[Array, "B H W C"]) -> EncoderOutput:
        cfg = self.cfg
        if pixels.ndim != 4 or pixels.shape[1:] != (cfg.image_size, cfg.image_size, cfg.num_channels):
            raise ValueError(f"VisionEncoder: expected pixels [B, {cfg.image_size}, {cfg.image_size}, "
                             f"{cfg.num_channels}] (channels last), got {list(pixels.shape)}")
        dt = jnp.dtype(cfg.dtype)
        x = self.patch_embed(pixels)
        cls = jnp.broadcast_to(self.class_embedding[...].astype(dt), (x.shape[0], 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1) + self.position_embedding[...].astype(dt)[None]
        x = constrain(self.pre_norm(x), ("batch", "length", "act_embed"))
        tokens = self.encoder(x)
        return EncoderOutput(tokens=tokens, pooled=self.post_norm(tokens[:, 0]))

    def encode_clip(self, frames: Float[Array, "B T H W C"], frame_mask=None) -> EncoderOutput:
        """Every frame through the tower; `pooled` = mean over time of the per-frame pooled embeddings (over the
        frames where `frame_mask [B, T]` is true, when given); `tokens` = the frames' tokens one after another,
        `[B, T·(1 + patches), D]`; `frame_pooled` = `[B, T, D]`."""
        if frames.ndim != 5:
            raise ValueError(f"VisionEncoder.encode_clip: expected frames [B, T, H, W, C], got {list(frames.shape)}")
        b, t = frames.shape[:2]
        out = self(frames.reshape(b * t, *frames.shape[2:]))
        per_frame = out.pooled.reshape(b, t, -1)
        if frame_mask is None:
            pooled = jnp.mean(per_frame.astype(jnp.float32), axis=1)
        else:
            w = jnp.asarray(frame_mask, jnp.float32).reshape(b, t, 1)
            pooled = jnp.sum(per_frame.astype(jnp.float32) * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)
        tokens = out.tokens.reshape(b, t * out.tokens.shape[1], -1)
        return EncoderOutput(tokens=tokens, pooled=pooled.astype(per_frame.dtype), frame_pooled=per_frame)


# ----------------------------------------------------------------------------------------------------------------
# Audio


def fit_length(log_mel, max_length: int, pad_value: float = 0.0):
    """Crops or pads (with `pad_value`, at the end) a log-mel `[..., time, mel]` to `max_length` frames, as the
    AST feature extractor does before normalisation."""
    n = log_mel.shape[-2]
    xp = np if isinstance(log_mel, np.ndarray) else jnp
    if n >= max_length:
        return log_mel[..., :max_length, :]
    pad = [(0, 0)] * (log_mel.ndim - 2) + [(0, max_length - n), (0, 0)]
    return xp.pad(log_mel, pad, constant_values=pad_value)


# AudioSet statistics of the pretrained AST checkpoints' Kaldi fbank features (transformers' ASTFeatureExtractor).
AST_MEAN, AST_STD = -4.2677393, 4.5689974


def normalize_ast(log_mel, mean: float = AST_MEAN, std: float = AST_STD):
    """(x - mean) / (2·std), as `ASTFeatureExtractor(do_normalize=True)` does; the model itself does not normalise.
    Pretrained AST checkpoints were trained on Kaldi fbank features (25 ms Hanning window, 10 ms shift,
    128 mel bins), which `merg_jax.data.features.log_mel` only approximates."""
    return (log_mel - mean) / (2.0 * std)


class AudioEncoder(nnx.Module):
    """Audio Spectrogram Transformer. `model(log_mel [B, max_length, num_mel_bins])` →
    EncoderOutput(tokens [B, 2 + patches, D] after the final LayerNorm, pooled = mean of the two special tokens)."""

    def __init__(self, cfg: AudioConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, pdt = cfg.hidden_size, jnp.dtype(cfg.param_dtype)
        # The spectrogram is seen as an image [frequency, time, 1]: H = mel bins, W = frames.
        self.patch_embed = PatchEmbed(cfg.patch_size, 1, d, (cfg.frequency_stride, cfg.time_stride), use_bias=True,
                                      dtype=jnp.dtype(cfg.dtype), param_dtype=pdt, rngs=rngs)
        init = nnx.initializers.normal(stddev=0.02)
        self.cls_token = param(rngs, init, (d,), ("embed",), pdt)
        self.distillation_token = param(rngs, init, (d,), ("embed",), pdt)
        self.position_embedding = param(rngs, init, (cfg.num_tokens, d), (None, "embed"), pdt)
        self.encoder = Encoder(cfg, rngs=rngs)
        self.final_norm = LayerNorm(d, eps=cfg.layer_norm_eps, param_dtype=pdt, rngs=rngs)

    def __call__(self, log_mel: Float[Array, "B T F"]) -> EncoderOutput:
        cfg = self.cfg
        if log_mel.ndim != 3 or log_mel.shape[1:] != (cfg.max_length, cfg.num_mel_bins):
            raise ValueError(f"AudioEncoder: expected log_mel [B, {cfg.max_length}, {cfg.num_mel_bins}] "
                             f"(frames, mel bins; see fit_length), got {list(log_mel.shape)}")
        dt = jnp.dtype(cfg.dtype)
        x = self.patch_embed(jnp.swapaxes(log_mel, 1, 2)[..., None])  # [B, F, T, 1] → [B, F'·T', D]
        b, _, d = x.shape
        special = jnp.stack([self.cls_token[...], self.distillation_token[...]]).astype(dt)
        x = jnp.concatenate([jnp.broadcast_to(special, (b, 2, d)), x], axis=1)
        x = constrain(x + self.position_embedding[...].astype(dt)[None], ("batch", "length", "act_embed"))
        tokens = self.final_norm(self.encoder(x))
        return EncoderOutput(tokens=tokens, pooled=(tokens[:, 0] + tokens[:, 1]) / 2)
