"""The Content Synchronizer (CS): the LLM's hidden features → speech content C^s and video content C^v.

C^s has the shape of the speech generator's text-encoder output (`speech_content_len` phoneme positions ×
`speech_content_dim`), C^v that of the face generator's audio-content-encoder output (`video_content_len` video
frames × `video_content_dim`); L_ccl (`masked_mse`) trains them to hit those encoders' outputs on the gold reply.

    memory, mask = FeatureMemory(features)            FFN + type/position embeddings + encoder (feature_memory.py)
    per modality m ∈ {speech, video}:
        C^m      = Dense(QueryDecoder_m(memory, mask))  content_len learnable queries → [B, T_m, content_dim_m]
        length_m = length head on the masked mean of the memory, positive, in target positions

The output's mask comes from the gold lengths when given (training) or from the predicted lengths, rounded and
clipped to [1, T_m] (inference); content outside the mask is zero.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from merg_jax.models.feature_memory import FeatureMemory, MemoryConfig, QueryDecoder, _check_positive
from merg_jax.models.hidden_features import HiddenFeatures
from merg_jax.models.layers import Dense, masked_mean

MODALITIES = ("speech", "video")


@dataclasses.dataclass(frozen=True)
class SynchronizerConfig(MemoryConfig):
    """The CS (defaults: the paper's scale). Content widths and lengths are the generators' encoder outputs."""

    speech_content_dim: int = 512  # StyleTTS2's text-encoder width
    speech_content_len: int = 256  # phoneme positions
    video_content_dim: int = 256  # DreamTalk-like audio content per video frame
    video_content_len: int = 200  # frames: 8 s at 25 fps

    def __post_init__(self):
        super().__post_init__()
        for m in MODALITIES:
            for f in (f"{m}_content_dim", f"{m}_content_len"):
                _check_positive(self, type(self).__name__, f)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ContentOutput:
    """The CS's output. A pytree. Content is zero where the mask is False."""

    speech: Float[Array, "B Ts Ds"]  # C^s
    speech_mask: Bool[Array, "B Ts"]
    speech_length: Float[Array, "B"]  # predicted, float32 (always the prediction, also when gold lengths are given)
    video: Float[Array, "B Tv Dv"]  # C^v
    video_mask: Bool[Array, "B Tv"]
    video_length: Float[Array, "B"]


def length_mask(lengths: Int[Array, "B"], max_len: int) -> Bool[Array, "B T"]:
    """mask[b, t] = t < lengths[b]."""
    return jnp.arange(max_len)[None, :] < lengths[:, None]


def predicted_mask(length: Float[Array, "B"], max_len: int) -> Bool[Array, "B T"]:
    """The inference mask: the predicted length rounded and clipped to [1, max_len]."""
    n = jnp.clip(jnp.round(jax.lax.stop_gradient(length)), 1, max_len).astype(jnp.int32)
    return length_mask(n, max_len)


class ContentSynchronizer(nnx.Module):
    """`cs(features, *, speech_lengths=None, video_lengths=None)` → `ContentOutput`.

    features: `HiddenFeatures` (r^t `[B, R, llm_dim]` + mask; r^s / r^v `[B, K, llm_dim]` + masks or None).
    speech_lengths / video_lengths: gold target lengths `[B]` (ints) or None to use the predicted ones.
    """

    def __init__(self, cfg: SynchronizerConfig, *, rngs: nnx.Rngs):
        if not isinstance(cfg, SynchronizerConfig):
            raise ValueError(f"cfg: expected a SynchronizerConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        kw = dict(use_bias=True, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.memory = FeatureMemory(cfg, rngs=rngs)
        self.speech_decoder = QueryDecoder(cfg, cfg.speech_content_len, rngs=rngs)
        self.video_decoder = QueryDecoder(cfg, cfg.video_content_len, rngs=rngs)
        self.speech_out = Dense(cfg.hidden_size, cfg.speech_content_dim, names=("embed", None), **kw)
        self.video_out = Dense(cfg.hidden_size, cfg.video_content_dim, names=("embed", None), **kw)
        # Length heads in float32: the length is a regression target of scale ~content_len.
        self.speech_length_head = Dense(cfg.hidden_size, 1, names=("embed", None), use_bias=True, rngs=rngs)
        self.video_length_head = Dense(cfg.hidden_size, 1, names=("embed", None), use_bias=True, rngs=rngs)

    def _length(self, head: Dense, pooled: Float[Array, "B H"], max_len: int) -> Float[Array, "B"]:
        # softplus(z)/log 2 is 1 at z = 0, so an untrained head predicts about half the maximum length and the
        # prediction grows linearly (not exponentially) with z.
        z = head(pooled)[:, 0]
        return jax.nn.softplus(z) / math.log(2.0) * (max_len / 2)

    def __call__(self, features: HiddenFeatures, *, speech_lengths: Int[Array, "B"] | None = None,
                 video_lengths: Int[Array, "B"] | None = None) -> ContentOutput:
        if not isinstance(features, HiddenFeatures) or features.text is None:
            raise ValueError(f"features: expected a HiddenFeatures with text, got {features!r:.80}")
        cfg, batch = self.cfg, features.text.shape[0]
        golds = {"speech": speech_lengths, "video": video_lengths}
        for m, gold in golds.items():
            if gold is not None and jnp.shape(gold) != (batch,):
                raise ValueError(f"{m}_lengths: shape {tuple(jnp.shape(gold))} is not [B={batch}]")
        memory, mask = self.memory(features)
        pooled = masked_mean(memory, mask)
        out = {}
        for m, gold in golds.items():
            max_len = getattr(cfg, f"{m}_content_len")
            length = self._length(getattr(self, f"{m}_length_head"), pooled, max_len)
            content_mask = predicted_mask(length, max_len) if gold is None else length_mask(jnp.asarray(gold), max_len)
            content = getattr(self, f"{m}_out")(getattr(self, f"{m}_decoder")(memory, mask))
            out[m] = content * content_mask[..., None].astype(content.dtype)
            out[f"{m}_mask"], out[f"{m}_length"] = content_mask, length
        return ContentOutput(**out)


def masked_mse(pred: Float[Array, "B T D"], target: Float[Array, "B T D"],
               mask: Bool[Array, "B T"]) -> Float[Array, ""]:
    """Mean squared error over the valid positions and all feature dims (float32); 0 when nothing is valid."""
    if pred.shape != target.shape:
        raise ValueError(f"masked_mse: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if pred.ndim != 3 or tuple(mask.shape) != tuple(pred.shape[:2]):
        raise ValueError(f"masked_mse: mask {tuple(mask.shape)} is not [B, T] of pred {tuple(pred.shape)}")
    w = mask.astype(jnp.float32)[..., None]
    sq = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
    # where, not multiply: a non-finite value at a padded position must not leak in as NaN.
    total = jnp.sum(jnp.where(w > 0, sq, 0.0))
    return total / jnp.maximum(jnp.sum(w) * pred.shape[-1], 1.0)


def length_loss(predicted: Float[Array, "B"], gold: Int[Array, "B"]) -> Float[Array, ""]:
    """Mean squared log-ratio of predicted to gold lengths over the rows whose gold length is positive (rows with
    no target, gold <= 0, are skipped; 0 when there are none). Scale-free, so phonemes and frames weigh alike."""
    if predicted.shape != gold.shape or predicted.ndim != 1:
        raise ValueError(f"length_loss: predicted {tuple(predicted.shape)} and gold {tuple(gold.shape)} must both "
                         "be [B]")
    valid = gold > 0
    err = jnp.log(jnp.maximum(predicted.astype(jnp.float32), 1e-6)) - jnp.log(jnp.maximum(gold, 1).astype(jnp.float32))
    return jnp.sum(jnp.where(valid, jnp.square(err), 0.0)) / jnp.maximum(jnp.sum(valid), 1)


__all__ = ["ContentOutput", "ContentSynchronizer", "SynchronizerConfig", "length_loss", "length_mask", "masked_mse",
           "predicted_mask"]
