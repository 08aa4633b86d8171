"""Media encoders in Flax NNX: a vision transformer for frames and clips (CLIP's vision tower, or ImageBind's with
2-frame tubelets) and an audio spectrogram transformer (Hugging Face `ASTModel`, or ImageBind's audio tower).

Both are pre-LayerNorm transformer encoders over patch tokens (`merg_jax.models.transformer`: LayerNorm →
multi-head self-attention through `merg_jax.kernels.attention`, non-causal → residual → LayerNorm → MLP →
residual) and both return an `EncoderOutput`: the token sequence `[B, N, D]` and one pooled embedding `[B, E]`.

- `VisionEncoder(pixels)`: patch convolution (stride = patch; over `tubelet_size` frames at once when > 1, an
  image being repeated to fill the tubelet, as ImageBind's `PadIm2Video`), class token, learned position
  embeddings, pre-LayerNorm, layers; `tokens` = the last layer's output (Hugging Face's `last_hidden_state`),
  `pooled` = the embedding head applied to the post-LayerNorm class token (`pooler_output` without a head).
  `encode_clip(frames [B, T, H, W, C])` runs every frame (every tubelet of frames) and averages the embeddings
  over time (optionally masked); `sample_frame_indices` picks the T frames of a longer video.
- `AudioEncoder(log_mel [B, time, mel])`: overlapping `patch × patch` patches of the log-mel with
  frequency/time strides (optionally LayerNorm-ed, ImageBind's stem), 1 or 2 special tokens (class, and AST's
  distillation token), position embeddings, layers (optionally with a learned extra key/value, ImageBind's
  `add_bias_kv`), final LayerNorm; `pooled` = the head applied to the mean of the special tokens.
  `encode_clips(log_mel [B, T, mel], lengths)` averages the embeddings of `num_clips` windows spread over each
  clip's valid frames (ImageBind embeds 3 two-second windows per utterance).

The embedding head (`projection_dim`, `normalize_embedding`, `embedding_scale`): an optional linear projection
without bias (CLIP's `visual_projection`, ImageBind's head), optional L2 normalisation and a fixed scale
(ImageBind's postprocessors: normalised; audio × 20). `cfg.embedding_dim` is the pooled width.
`VisionConfig.imagebind_huge()` / `AudioConfig.imagebind_huge()` are ImageBind-huge's towers.

Images are channels-last (`[H, W, C]`, as `merg_jax.data.features.video_frames` produces them; `normalize_clip`
applies CLIP's pixel statistics, which ImageBind shares) and log-mels are `[frames, n_mels]` (as `log_mel`
produces them; `fit_length` crops/pads to `max_length`, `normalize_ast` applies AST's statistics, which ImageBind
shares). Parameters carry logical axis names (`embed`, `q_heads`, `mlp`, `norm`, `layers`) so the sharding rule
table places them. Importers: `merg_jax.convert.hf_encoders`, `merg_jax.convert.imagebind`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from merg_jax.models.layers import Dense, masked_mean, param
from merg_jax.models.transformer import Encoder, LayerNorm, check_block_config
from merg_jax.sharding import constrain


def _check_head(cfg, name: str) -> None:
    if cfg.projection_dim < 0:
        raise ValueError(f"{name}: projection_dim={cfg.projection_dim} must be >= 0 (0: no projection)")
    if not cfg.embedding_scale > 0:
        raise ValueError(f"{name}: embedding_scale={cfg.embedding_scale} must be positive")


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
    tubelet_size: int = 1  # frames per patch (ImageBind: 2)
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    qkv_bias: bool = True
    projection_dim: int = 0  # 0: pooled = post-LayerNorm class token; else a bias-free projection to this width
    normalize_embedding: bool = False  # L2-normalise the pooled embedding
    embedding_scale: float = 1.0  # then multiply it by this
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    attention_impl: str = "auto"
    scan_layers: bool = True
    remat: bool = False  # recompute each layer's activations in the backward pass (fine-tuning at scale)

    def __post_init__(self):
        check_block_config(self, "VisionConfig")
        _check_head(self, "VisionConfig")
        if self.image_size % self.patch_size:
            raise ValueError(f"VisionConfig: image_size={self.image_size} is not a multiple of "
                             f"patch_size={self.patch_size}")
        if self.tubelet_size < 1:
            raise ValueError(f"VisionConfig: tubelet_size={self.tubelet_size} must be >= 1")

    @classmethod
    def imagebind_huge(cls, **overrides) -> VisionConfig:
        """ImageBind-huge's vision tower (ViT-H/14, 2×14×14 tubelets, 1024-d normalised embedding)."""
        return cls(**{**dict(hidden_size=1280, intermediate_size=5120, num_layers=32, num_heads=16, image_size=224,
                             patch_size=14, tubelet_size=2, layer_norm_eps=1e-6, hidden_act="gelu",
                             projection_dim=1024, normalize_embedding=True), **overrides})

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        return self.num_patches + 1  # + class token

    @property
    def embedding_dim(self) -> int:
        return self.projection_dim or self.hidden_size


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
    patch_bias: bool = True  # the patch convolution has a bias (AST) or not (ImageBind)
    patch_norm: bool = False  # LayerNorm over the patch tokens before the special tokens join (ImageBind)
    patch_norm_eps: float = 1e-5
    num_special_tokens: int = 2  # class + distillation (AST) or class only (ImageBind)
    attention_bias_kv: bool = False  # a learned extra key/value in every attention (ImageBind)
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    qkv_bias: bool = True
    projection_dim: int = 0
    normalize_embedding: bool = False
    embedding_scale: float = 1.0
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_impl: str = "auto"
    scan_layers: bool = True
    remat: bool = False  # recompute each layer's activations in the backward pass (fine-tuning at scale)

    def __post_init__(self):
        check_block_config(self, "AudioConfig")
        _check_head(self, "AudioConfig")
        if self.num_mel_bins < self.patch_size or self.max_length < self.patch_size:
            raise ValueError(f"AudioConfig: num_mel_bins={self.num_mel_bins} and max_length={self.max_length} must "
                             f"be at least patch_size={self.patch_size}")
        if self.num_special_tokens not in (1, 2):
            raise ValueError(f"AudioConfig: num_special_tokens={self.num_special_tokens} must be 1 (class) or 2 "
                             "(class and distillation)")

    @classmethod
    def imagebind_huge(cls, **overrides) -> AudioConfig:
        """ImageBind-huge's audio tower (ViT-B over 128 mels × 204 frames, 1024-d embedding, normalised × 20)."""
        return cls(**{**dict(hidden_size=768, intermediate_size=3072, num_layers=12, num_heads=12, patch_size=16,
                             num_mel_bins=128, max_length=204, frequency_stride=10, time_stride=10, patch_bias=False,
                             patch_norm=True, num_special_tokens=1, attention_bias_kv=True, layer_norm_eps=1e-6,
                             projection_dim=1024, normalize_embedding=True, embedding_scale=20.0), **overrides})

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
        return self.num_patches + self.num_special_tokens

    @property
    def embedding_dim(self) -> int:
        return self.projection_dim or self.hidden_size


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class EncoderOutput:
    """A pytree, so jitted functions can return it."""

    tokens: Float[Array, "B N D"]
    pooled: Float[Array, "B E"]
    frame_pooled: Float[Array, "B T E"] | None = None  # clips only: each frame's (tubelet's, window's) embedding


# ----------------------------------------------------------------------------------------------------------------
# Building blocks


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


class EmbeddingHead(nnx.Module):
    """pooled `[B, D]` → optional bias-free projection → optional L2 normalisation → × scale: `[B, E]`."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        self.normalize, self.scale = cfg.normalize_embedding, cfg.embedding_scale
        self.projection = Dense(cfg.hidden_size, cfg.projection_dim, names=("embed", None), use_bias=False,
                                dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
                                rngs=rngs) if cfg.projection_dim else None

    def __call__(self, x: Float[Array, "B D"]) -> Float[Array, "B E"]:
        if self.projection is not None:
            x = self.projection(x)
        if self.normalize:
            xf = x.astype(jnp.float32)
            # torch.nn.functional.normalize: x / max(||x||, 1e-12)
            x = (xf / jnp.maximum(jnp.linalg.norm(xf, axis=-1, keepdims=True), 1e-12)).astype(x.dtype)
        return x * self.scale if self.scale != 1.0 else x


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
    """CLIP / ImageBind vision tower. `model(pixels)` → EncoderOutput(tokens [B, 1 + patches, D], pooled [B, E]).

    pixels: `[B, H, W, C]` images, or `[B, tubelet_size, H, W, C]` when `tubelet_size > 1` (an image is repeated
    over the tubelet). The patch kernel is stored as `[p, p, tubelet·C, D]`, input channels time-major (frame 0's
    channels first), so a tubelet is one 2-D convolution over its frames stacked on the channel axis."""

    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, pdt = cfg.hidden_size, jnp.dtype(cfg.param_dtype)
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.tubelet_size * cfg.num_channels, d,
                                      (cfg.patch_size, cfg.patch_size), use_bias=False, dtype=jnp.dtype(cfg.dtype),
                                      param_dtype=pdt, rngs=rngs)
        self.class_embedding = param(rngs, nnx.initializers.normal(stddev=d ** -0.5), (d,), ("embed",), pdt)
        self.position_embedding = param(rngs, nnx.initializers.normal(stddev=0.02), (cfg.num_tokens, d),
                                        (None, "embed"), pdt)
        self.pre_norm = LayerNorm(d, eps=cfg.layer_norm_eps, param_dtype=pdt, rngs=rngs)
        self.encoder = Encoder(cfg, rngs=rngs)
        self.post_norm = LayerNorm(d, eps=cfg.layer_norm_eps, param_dtype=pdt, rngs=rngs)
        self.head = EmbeddingHead(cfg, rngs=rngs)

    def __call__(self, pixels: Float[Array, "B *T H W C"]) -> EncoderOutput:
        cfg = self.cfg
        image = (cfg.image_size, cfg.image_size, cfg.num_channels)
        if pixels.ndim == 4 and pixels.shape[1:] == image:
            pixels = jnp.broadcast_to(pixels[:, None], (pixels.shape[0], cfg.tubelet_size, *image))
        elif not (pixels.ndim == 5 and pixels.shape[1:] == (cfg.tubelet_size, *image)):
            want = f"[B, {', '.join(map(str, image))}]" + (
                f" or [B, {cfg.tubelet_size}, {', '.join(map(str, image))}]" if cfg.tubelet_size > 1 else "")
            raise ValueError(f"VisionEncoder: expected pixels {want} (channels last), got {list(pixels.shape)}")
        dt = jnp.dtype(cfg.dtype)
        b = pixels.shape[0]
        stacked = jnp.moveaxis(pixels, 1, 3).reshape(b, *image[:2], cfg.tubelet_size * cfg.num_channels)
        x = self.patch_embed(stacked)
        cls = jnp.broadcast_to(self.class_embedding[...].astype(dt), (b, 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1) + self.position_embedding[...].astype(dt)[None]
        x = constrain(self.pre_norm(x), ("batch", "length", "act_embed"))
        tokens = self.encoder(x)
        return EncoderOutput(tokens=tokens, pooled=self.head(self.post_norm(tokens[:, 0])))

    def encode_clip(self, frames: Float[Array, "B T H W C"], frame_mask=None) -> EncoderOutput:
        """Every frame (every `tubelet_size` consecutive frames) through the tower; `pooled` = mean over time of
        their embeddings (over the steps whose first frame is true in `frame_mask [B, T]`, when given); `tokens`
        = the steps' tokens one after another, `[B, steps·(1 + patches), D]`; `frame_pooled` = `[B, steps, E]`."""
        t_size = self.cfg.tubelet_size
        if frames.ndim != 5 or frames.shape[1] % t_size:
            raise ValueError(f"VisionEncoder.encode_clip: expected frames [B, T, H, W, C] with T a multiple of "
                             f"tubelet_size={t_size}, got {list(frames.shape)}")
        b, steps = frames.shape[0], frames.shape[1] // t_size
        chunks = frames.reshape(b * steps, t_size, *frames.shape[2:])
        out = self(chunks[:, 0] if t_size == 1 else chunks)
        per_step = out.pooled.reshape(b, steps, -1)
        mask = None if frame_mask is None else jnp.asarray(frame_mask)[:, ::t_size]
        tokens = out.tokens.reshape(b, steps * out.tokens.shape[1], -1)
        pooled = masked_mean(per_step, mask).astype(per_step.dtype)
        return EncoderOutput(tokens=tokens, pooled=pooled, frame_pooled=per_step)


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



def window_starts(lengths: Int[Array, "B"], window: int, num_windows: int) -> Int[Array, "B W"]:
    """Start frames of `num_windows` windows of `window` frames spread evenly from the start to the end of each
    clip's `lengths` valid frames (all at 0 when a clip is shorter than a window)."""
    span = jnp.maximum(jnp.asarray(lengths, jnp.int32) - window, 0)
    if num_windows == 1:
        return (span // 2)[:, None]
    frac = jnp.arange(num_windows, dtype=jnp.float32) / (num_windows - 1)
    return jnp.floor(span[:, None].astype(jnp.float32) * frac[None]).astype(jnp.int32)


class AudioEncoder(nnx.Module):
    """AST / ImageBind audio tower. `model(log_mel [B, max_length, num_mel_bins])` →
    EncoderOutput(tokens [B, special + patches, D] after the final LayerNorm, pooled = the head applied to the
    mean of the special tokens)."""

    def __init__(self, cfg: AudioConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, pdt = cfg.hidden_size, jnp.dtype(cfg.param_dtype)
        # The spectrogram is seen as an image [frequency, time, 1]: H = mel bins, W = frames.
        self.patch_embed = PatchEmbed(cfg.patch_size, 1, d, (cfg.frequency_stride, cfg.time_stride),
                                      use_bias=cfg.patch_bias, dtype=jnp.dtype(cfg.dtype), param_dtype=pdt, rngs=rngs)
        self.patch_norm = LayerNorm(d, eps=cfg.patch_norm_eps, param_dtype=pdt, rngs=rngs) if cfg.patch_norm else None
        init = nnx.initializers.normal(stddev=0.02)
        self.cls_token = param(rngs, init, (d,), ("embed",), pdt)
        self.distillation_token = param(rngs, init, (d,), ("embed",), pdt) if cfg.num_special_tokens == 2 else None
        self.position_embedding = param(rngs, init, (cfg.num_tokens, d), (None, "embed"), pdt)
        self.encoder = Encoder(cfg, rngs=rngs)
        self.final_norm = LayerNorm(d, eps=cfg.layer_norm_eps, param_dtype=pdt, rngs=rngs)
        self.head = EmbeddingHead(cfg, rngs=rngs)

    def __call__(self, log_mel: Float[Array, "B T F"]) -> EncoderOutput:
        cfg = self.cfg
        if log_mel.ndim != 3 or log_mel.shape[1:] != (cfg.max_length, cfg.num_mel_bins):
            raise ValueError(f"AudioEncoder: expected log_mel [B, {cfg.max_length}, {cfg.num_mel_bins}] "
                             f"(frames, mel bins; see fit_length), got {list(log_mel.shape)}")
        dt = jnp.dtype(cfg.dtype)
        x = self.patch_embed(jnp.swapaxes(log_mel, 1, 2)[..., None])  # [B, F, T, 1] → [B, F'·T', D]
        if self.patch_norm is not None:
            x = self.patch_norm(x)
        b, _, d = x.shape
        tokens = [self.cls_token] + ([self.distillation_token] if self.distillation_token is not None else [])
        special = jnp.stack([t[...] for t in tokens]).astype(dt)
        x = jnp.concatenate([jnp.broadcast_to(special, (b, len(tokens), d)), x], axis=1)
        x = constrain(x + self.position_embedding[...].astype(dt)[None], ("batch", "length", "act_embed"))
        tokens = self.final_norm(self.encoder(x))
        return EncoderOutput(tokens=tokens, pooled=self.head(jnp.mean(tokens[:, :cfg.num_special_tokens], axis=1)))

    def encode_clips(self, log_mel: Float[Array, "B T F"], lengths: Int[Array, "B"] | None = None, *,
                     num_windows: int = 1) -> EncoderOutput:
        """Embeds clips of any length: `num_windows` windows of `max_length` frames spread over each clip's
        `lengths` valid frames (all T when None; a clip shorter than a window is zero-padded, as `fit_length`),
        each through the tower; `pooled` = the mean of the windows' embeddings, `frame_pooled` = `[B, W, E]`,
        `tokens` = the windows' tokens one after another."""
        cfg = self.cfg
        if log_mel.ndim != 3 or log_mel.shape[2] != cfg.num_mel_bins:
            raise ValueError(f"AudioEncoder.encode_clips: expected log_mel [B, T, {cfg.num_mel_bins}], "
                             f"got {list(log_mel.shape)}")
        b, t = log_mel.shape[:2]
        if lengths is None:
            lengths = jnp.full((b,), t, jnp.int32)
        if t < cfg.max_length:
            log_mel = fit_length(log_mel, cfg.max_length)
        starts = window_starts(jnp.minimum(lengths, log_mel.shape[1]), cfg.max_length, num_windows)
        take = jax.vmap(jax.vmap(lambda m, s: jax.lax.dynamic_slice_in_dim(m, s, cfg.max_length, axis=0),
                                 in_axes=(None, 0)))
        windows = take(log_mel, starts)  # [B, W, max_length, F]
        out = self(windows.reshape(b * num_windows, cfg.max_length, cfg.num_mel_bins))
        per_window = out.pooled.reshape(b, num_windows, -1)
        return EncoderOutput(tokens=out.tokens.reshape(b, num_windows * out.tokens.shape[1], -1),
                             pooled=masked_mean(per_window).astype(per_window.dtype), frame_pooled=per_window)
