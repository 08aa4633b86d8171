"""HiFi-GAN generator (V1/V3 layout, ResBlock1) in Flax NNX: log-mel frames → waveform.

    cfg = HifiGanConfig.tiny()                       # or HifiGanConfig.from_hf_config(json.load(...))
    vocoder = HifiGan(cfg, rngs=nnx.Rngs(0))
    wave = vocoder(mel)                              # mel [B, T, model_in_dim] → wave [B, T · hop_length]

The function is Hugging Face's `SpeechT5HifiGan` (and the original jik876/hifi-gan generator without weight
norm), to float rounding: optional `(mel - mean) / scale` (`normalize_before`), `conv_pre` (kernel 7), then per
upsampling stage i: leaky ReLU → `ConvTranspose1d(C/2^i → C/2^(i+1), kernel k_i, stride u_i, padding
(k_i - u_i) // 2)` → the mean of `len(resblock_kernel_sizes)` ResBlock1 stacks (multi-receptive-field fusion);
then leaky ReLU with slope 0.01 (PyTorch's default — both references call `leaky_relu` without the config's
slope there), `conv_post` (kernel 7, one channel) and tanh. The output length is exactly PyTorch's:
`sum over stages of (L - 1)·u - 2·((k - u) // 2) + k`, i.e. `T · prod(upsample_rates)` when every `k - u` is even
(all published configs); `output_length(T)` gives it for any config.

Channels-last throughout (`[B, T, C]`; XLA's native convolution layout). Kernels are stored `[k, in, out]` for
both kinds of convolution (Hugging Face: Conv1d `[out, in, k]`, ConvTranspose1d `[in, out, k]`; the importer is
`merg_jax.convert.load_hf_hifigan`). The transposed convolution is computed polyphase — one ordinary convolution
with `u · out` output channels over the un-dilated input, then interleaved — rather than as a convolution over the
zero-stuffed (`lhs_dilation`) input: same values, and XLA:CPU ran V3's last stage (80 k samples) 2.8× faster so.

Trainable as an ordinary module: every weight is an `nnx.Param` (initialised as HiFi-GAN does: N(0, 0.01) for
the upsampling and residual convolutions), while `mean` / `scale` (present when `normalize_before`) are `MelStat`
variables, which `nnx.Param` filters (optimisers, `nnx.split(model, nnx.Param, ...)`) leave out.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from merg_jax.models.layers import param

# HF config keys that carry no shape or function (initialisation, bookkeeping); accepted and dropped.
_HF_IGNORED_KEYS = frozenset({"initializer_range", "model_type", "architectures", "transformers_version",
                              "torch_dtype", "dtype", "_name_or_path", "return_dict", "output_hidden_states",
                              "output_attentions", "torchscript", "use_bfloat16", "tie_word_embeddings",
                              "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id",
                              "problem_type", "pruned_heads", "tf_legacy_loss", "add_cross_attention"})
# transformers ≥ 4.3x writes "speecht5_hifigan"; microsoft/speecht5_hifigan's config.json says "hifigan".
_HF_MODEL_TYPES = frozenset({"speecht5_hifigan", "hifigan"})
# The final activation's slope: PyTorch's `leaky_relu` default, which both references use after the last stage.
POST_LEAKY_RELU_SLOPE = 0.01
PRE_POST_KERNEL = 7  # conv_pre / conv_post kernel size (fixed in both references)


@dataclasses.dataclass(frozen=True)
class HifiGanConfig:
    """HiFi-GAN generator sizes; field names are `transformers.SpeechT5HifiGanConfig`'s (defaults: its defaults,
    microsoft/speecht5_hifigan's V1-like generator). `dtype` / `param_dtype` are ours (compute / storage)."""

    model_in_dim: int = 80  # mel bands
    sampling_rate: int = 16000
    upsample_initial_channel: int = 512
    upsample_rates: tuple[int, ...] = (4, 4, 4, 4)
    upsample_kernel_sizes: tuple[int, ...] = (8, 8, 8, 8)
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    leaky_relu_slope: float = 0.1
    normalize_before: bool = True
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        # JSON gives lists: store tuples, so the config stays hashable (a static jit argument).
        object.__setattr__(self, "upsample_rates", tuple(int(u) for u in self.upsample_rates))
        object.__setattr__(self, "upsample_kernel_sizes", tuple(int(k) for k in self.upsample_kernel_sizes))
        object.__setattr__(self, "resblock_kernel_sizes", tuple(int(k) for k in self.resblock_kernel_sizes))
        object.__setattr__(self, "resblock_dilation_sizes",
                           tuple(tuple(int(d) for d in ds) for ds in self.resblock_dilation_sizes))
        problems = []
        if self.model_in_dim < 1 or self.upsample_initial_channel < 1 or self.sampling_rate < 1:
            problems.append("model_in_dim, upsample_initial_channel and sampling_rate must be >= 1")
        if not self.upsample_rates or len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            problems.append(f"upsample_rates {list(self.upsample_rates)} and upsample_kernel_sizes "
                            f"{list(self.upsample_kernel_sizes)} must be non-empty and of the same length")
        for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes):
            if u < 1 or k < u:  # k < u: PyTorch's padding (k - u) // 2 would be negative
                problems.append(f"upsample rate {u} with kernel {k}: need 1 <= rate <= kernel")
        if not self.resblock_kernel_sizes or len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            problems.append(f"resblock_kernel_sizes {list(self.resblock_kernel_sizes)} and resblock_dilation_sizes "
                            f"must be non-empty and of the same length")
        if any(not ds or min(ds) < 1 for ds in self.resblock_dilation_sizes):
            problems.append(f"resblock_dilation_sizes {[list(d) for d in self.resblock_dilation_sizes]}: each "
                            f"stack needs at least one dilation, all >= 1")
        if self.upsample_initial_channel % (2 ** len(self.upsample_rates)):
            problems.append(f"upsample_initial_channel {self.upsample_initial_channel} must be divisible by "
                            f"2^{len(self.upsample_rates)} (channels halve at every upsampling stage)")
        if problems:
            raise ValueError("HifiGanConfig: " + "; ".join(problems))

    @property
    def hop_length(self) -> int:
        """Waveform samples per mel frame (when every `kernel - rate` is even): prod(upsample_rates)."""
        return math.prod(self.upsample_rates)

    def channels(self, stage: int) -> int:
        """Channels after upsampling stage `stage` (0-based); `channels(-1)` = upsample_initial_channel."""
        return self.upsample_initial_channel // (2 ** (stage + 1))

    def output_length(self, frames: int) -> int:
        """Waveform samples for `frames` mel frames — PyTorch's ConvTranspose1d lengths, stage by stage."""
        n = frames
        for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes):
            n = (n - 1) * u - 2 * ((k - u) // 2) + k
        return n

    @classmethod
    def tiny(cls, **overrides) -> HifiGanConfig:
        """Ours: a small V3-shaped generator for 16 kHz audio at hop 256 with 80 mels (the speech config's audio
        settings; `merg_jax.models.speech.config.SpeechConfig`), ResBlock1 with V3's kernels and dilations.
        About 0.2 M parameters: trains and runs in real time on a few CPU cores."""
        fields = dict(model_in_dim=80, sampling_rate=16000, upsample_initial_channel=64, upsample_rates=(8, 8, 4),
                      upsample_kernel_sizes=(16, 16, 8), resblock_kernel_sizes=(3, 5, 7),
                      resblock_dilation_sizes=((1, 2), (2, 6), (3, 12)), leaky_relu_slope=0.1,
                      normalize_before=False)
        return cls(**{**fields, **overrides})

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], *, source: str = "config.json", **overrides) -> HifiGanConfig:
        """A `SpeechT5HifiGanConfig` dict (config.json) → `HifiGanConfig`; missing keys take transformers'
        defaults, `overrides` set `dtype` / `param_dtype`. Unknown keys are errors (a different vocoder family —
        e.g. a ResBlock2 or a multi-speaker generator — would otherwise load into the wrong function)."""
        hf = dict(hf)
        model_type = hf.get("model_type", "speecht5_hifigan")
        if model_type not in _HF_MODEL_TYPES:
            raise ValueError(f"{source}: model_type={model_type!r} is not a SpeechT5HifiGan (one of "
                             f"{sorted(_HF_MODEL_TYPES)})")
        names = {f.name for f in dataclasses.fields(cls)} - {"dtype", "param_dtype"}
        unknown = sorted(k for k in hf if k not in names and k not in _HF_IGNORED_KEYS and not k.startswith("_"))
        if unknown:
            raise ValueError(f"{source}: keys {unknown} are not SpeechT5HifiGanConfig fields this generator knows")
        fixed = sorted(set(overrides) & names)
        if fixed:
            raise ValueError(f"from_hf_config: {fixed} are read from {source} and cannot be overridden")
        try:
            return cls(**{k: v for k, v in hf.items() if k in names}, **overrides)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from e


class MelStat(nnx.Variable):
    """A fixed input statistic (`mean` / `scale` of the log-mels): part of the state and the checkpoint, not a
    trainable parameter."""


def _conv_init(stddev: float | None):
    """N(0, stddev) (HiFi-GAN's `init_weights`), or PyTorch's default fan-in uniform when `stddev` is None."""
    if stddev is not None:
        return nnx.initializers.normal(stddev=stddev)
    return nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", in_axis=(0, 1), out_axis=2)


class Conv1d(nnx.Module):
    """A stride-1 'same' convolution over `[B, T, C_in]` → `[B, T, C_out]` (PyTorch `Conv1d` with padding
    `dilation·(k - 1) // 2`, odd k). Kernel `[k, in, out]`, bias `[out]`."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, *, dilation: int = 1, stddev: float | None = None,
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        self.dilation, self.dtype = dilation, dtype
        self.pad = dilation * (kernel_size - 1) // 2
        # The vocoder is small: every axis replicated (None), so the rule table never shards it.
        self.kernel = param(rngs, _conv_init(stddev), (kernel_size, in_ch, out_ch), (None, None, None), param_dtype)
        self.bias = param(rngs, nnx.initializers.zeros, (out_ch,), (None,), param_dtype)

    def __call__(self, x: Float[Array, "B T I"]) -> Float[Array, "B T O"]:
        y = jax.lax.conv_general_dilated(x.astype(self.dtype), self.kernel[...].astype(self.dtype), (1,),
                                         [(self.pad, self.pad)], rhs_dilation=(self.dilation,),
                                         dimension_numbers=("NWC", "WIO", "NWC"))
        return y + self.bias[...].astype(self.dtype)


class ConvTranspose1d(nnx.Module):
    """PyTorch `ConvTranspose1d(in, out, k, stride=u, padding=(k - u) // 2)` over `[B, L, in]` → `[B, L', out]`,
    L' = (L - 1)·u - 2·padding + k. Kernel `[k, in, out]` (= PyTorch's `[in, out, k]` transposed, not flipped).

    Computed polyphase: output sample n = m·u + r (before cropping `padding`) only meets taps j ≡ r (mod u), so
    phase r is an ordinary causal convolution of the input with taps w[r], w[u + r], …; all u phases are one
    convolution with `u·out` channels, and a reshape interleaves them."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int, *, stddev: float | None = None,
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        self.stride, self.kernel_size, self.dtype = stride, kernel_size, dtype
        self.padding = (kernel_size - stride) // 2
        self.kernel = param(rngs, _conv_init(stddev), (kernel_size, in_ch, out_ch), (None, None, None), param_dtype)
        self.bias = param(rngs, nnx.initializers.zeros, (out_ch,), (None,), param_dtype)

    def output_length(self, length: int) -> int:
        return (length - 1) * self.stride - 2 * self.padding + self.kernel_size

    def __call__(self, x: Float[Array, "B L I"]) -> Float[Array, "B L2 O"]:
        b, length, _ = x.shape
        u, k = self.stride, self.kernel_size
        taps = -(-k // u)  # Q: taps per phase
        w = self.kernel[...].astype(self.dtype)
        _, cin, cout = w.shape
        w = jnp.pad(w, ((0, taps * u - k), (0, 0), (0, 0))).reshape(taps, u, cin, cout)  # w[q·u + r] = w[q, r]
        # z_r[m] = Σ_q x[m - q]·w[q, r]: a correlation with the taps reversed over x padded by Q - 1 on both sides
        # (m runs over every position any tap reaches: 0 … L + Q - 2).
        w = w[::-1].transpose(0, 2, 1, 3).reshape(taps, cin, u * cout)  # output channel r·out + o
        z = jax.lax.conv_general_dilated(x.astype(self.dtype), w, (1,), [(taps - 1, taps - 1)],
                                         dimension_numbers=("NWC", "WIO", "NWC"))
        z = z.reshape(b, (length + taps - 1) * u, cout)  # sample m·u + r
        y = jax.lax.slice_in_dim(z, self.padding, self.padding + self.output_length(length), axis=1)
        return y + self.bias[...].astype(self.dtype)


class ResBlock1(nnx.Module):
    """HiFi-GAN's ResBlock1 over `[B, T, C]`: for each dilation d, x += conv2(lrelu(conv1_d(lrelu(x)))), conv1
    dilated by d, conv2 undilated, both 'same' with kernel k."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int], *, slope: float, dtype,
                 param_dtype, rngs: nnx.Rngs | None):
        self.slope = slope
        kw = dict(stddev=0.01, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.convs1 = nnx.List([Conv1d(channels, channels, kernel_size, dilation=d, **kw) for d in dilations])
        self.convs2 = nnx.List([Conv1d(channels, channels, kernel_size, **kw) for _ in dilations])

    def __call__(self, x: Float[Array, "B T C"]) -> Float[Array, "B T C"]:
        for c1, c2 in zip(self.convs1, self.convs2):
            h = c1(jax.nn.leaky_relu(x, self.slope))
            x = x + c2(jax.nn.leaky_relu(h, self.slope))
        return x


class HifiGan(nnx.Module):
    """The generator. `HifiGan(cfg, rngs=nnx.Rngs(0))(mel [B, T, model_in_dim]) -> [B, cfg.output_length(T)]`
    (= `[B, T · cfg.hop_length]` for the usual even `kernel - rate`), values in (-1, 1).

    Submodule names follow Hugging Face's (`conv_pre`, `upsampler.{i}`, `resblocks.{i·K + j}.convs{1,2}.{d}`,
    `conv_post`, `mean`, `scale`), so a checkpoint maps name for name."""

    def __init__(self, config: HifiGanConfig, *, rngs: nnx.Rngs | None = None):
        self.config = cfg = config
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv_pre = Conv1d(cfg.model_in_dim, cfg.upsample_initial_channel, PRE_POST_KERNEL, **kw)
        self.upsampler = nnx.List([
            ConvTranspose1d(cfg.channels(i - 1), cfg.channels(i), k, u, stddev=0.01, **kw)
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes))])
        self.resblocks = nnx.List([
            ResBlock1(cfg.channels(i), k, ds, slope=cfg.leaky_relu_slope, **kw)
            for i in range(len(cfg.upsample_rates))
            for k, ds in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)])
        self.conv_post = Conv1d(cfg.channels(len(cfg.upsample_rates) - 1), 1, PRE_POST_KERNEL, **kw)
        if cfg.normalize_before:
            self.mean = param(rngs, nnx.initializers.zeros, (cfg.model_in_dim,), (None,), param_dtype, MelStat)
            self.scale = param(rngs, nnx.initializers.ones, (cfg.model_in_dim,), (None,), param_dtype, MelStat)
        else:
            self.mean = self.scale = None

    def __call__(self, mel: Float[Array, "B T M"]) -> Float[Array, "B S"]:
        cfg = self.config
        if mel.ndim != 3 or mel.shape[-1] != cfg.model_in_dim:
            raise ValueError(f"HifiGan: expected mel [B, T, {cfg.model_in_dim}], got {tuple(mel.shape)}")
        x = mel.astype(jnp.dtype(cfg.dtype))
        if self.mean is not None:
            x = (x - self.mean[...].astype(x.dtype)) / self.scale[...].astype(x.dtype)
        x = self.conv_pre(x)
        num_kernels = len(cfg.resblock_kernel_sizes)
        for i, up in enumerate(self.upsampler):
            x = up(jax.nn.leaky_relu(x, cfg.leaky_relu_slope))
            # Multi-receptive-field fusion: the mean of the stage's ResBlocks, all reading the same input.
            blocks = self.resblocks[i * num_kernels:(i + 1) * num_kernels]
            x = sum(block(x) for block in blocks) / num_kernels
        x = self.conv_post(jax.nn.leaky_relu(x, POST_LEAKY_RELU_SLOPE))
        return jnp.tanh(x[..., 0])


__all__ = ["Conv1d", "ConvTranspose1d", "HifiGan", "HifiGanConfig", "MelStat", "ResBlock1"]
