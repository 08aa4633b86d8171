"""The Style Disentangler (SD) and its style classifiers.

    memory, mask = FeatureMemory(features)     FFN + type/position embeddings + encoder (feature_memory.py), own
                                               parameters, built exactly as the Content Synchronizer's
    E^s, E^v, P^s, P^v = QueryDecoder(memory, mask)    4 learnable queries: emotion-speech, emotion-video,
                                                       profile-speech, profile-video → each [B, hidden]
    S^s = Dense(concat(E^s, P^s)) → speech_style_dim   (the speech generator's style-encoder output; L_sal)
    S^v = Dense(concat(E^v, P^v)) → video_style_dim    (the face generator's style-encoder output; L_sal)

`StyleClassifiers` (a separate module: training stage d trains it alone) reads the SD's output: emotion logits
(7 multimodal classes, 32 text classes) from the mean of E^s and E^v, profile logits (age, gender, timbre) from
the mean of P^s and P^v. `classification_loss` is L_cls.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from merg_jax.labels import AGES, EMOTIONS_7, EMOTIONS_32, GENDERS, TIMBRES
from merg_jax.models.feature_memory import FeatureMemory, MemoryConfig, QueryDecoder, _check_positive
from merg_jax.models.hidden_features import HiddenFeatures
from merg_jax.models.layers import Dense

QUERIES = ("emotion_speech", "emotion_video", "profile_speech", "profile_video")  # the decoder's query order
HEADS: dict[str, int] = {"emotion7": len(EMOTIONS_7), "emotion32": len(EMOTIONS_32), "age": len(AGES),
                         "gender": len(GENDERS), "timbre": len(TIMBRES)}  # classifier head → number of classes


@dataclasses.dataclass(frozen=True)
class DisentanglerConfig(MemoryConfig):
    """The SD and its classifiers (defaults: the paper's scale)."""

    speech_style_dim: int = 256  # StyleTTS2's acoustic + prosodic style
    video_style_dim: int = 256  # DreamTalk's style code

    def __post_init__(self):
        super().__post_init__()
        for f in ("speech_style_dim", "video_style_dim"):
            _check_positive(self, type(self).__name__, f)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class StyleOutput:
    """The SD's output. A pytree."""

    emotion_speech: Float[Array, "B H"]  # E^s
    emotion_video: Float[Array, "B H"]  # E^v
    profile_speech: Float[Array, "B H"]  # P^s
    profile_video: Float[Array, "B H"]  # P^v
    style_speech: Float[Array, "B Ss"]  # S^s
    style_video: Float[Array, "B Sv"]  # S^v


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class StyleLogits:
    """The classifiers' logits (float32). A pytree; field names are the keys of `HEADS`."""

    emotion7: Float[Array, "B 7"]
    emotion32: Float[Array, "B 32"]
    age: Float[Array, "B 4"]
    gender: Float[Array, "B 2"]
    timbre: Float[Array, "B 3"]


class StyleDisentangler(nnx.Module):
    """`sd(features)` → `StyleOutput`. features: `HiddenFeatures` (r^t, and r^s / r^v or None)."""

    def __init__(self, cfg: DisentanglerConfig, *, rngs: nnx.Rngs):
        if not isinstance(cfg, DisentanglerConfig):
            raise ValueError(f"cfg: expected a DisentanglerConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        kw = dict(use_bias=True, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
        self.memory = FeatureMemory(cfg, rngs=rngs)
        self.decoder = QueryDecoder(cfg, len(QUERIES), rngs=rngs)
        self.speech_style = Dense(2 * cfg.hidden_size, cfg.speech_style_dim, names=("embed", None), **kw)
        self.video_style = Dense(2 * cfg.hidden_size, cfg.video_style_dim, names=("embed", None), **kw)

    def __call__(self, features: HiddenFeatures) -> StyleOutput:
        memory, mask = self.memory(features)
        q = self.decoder(memory, mask)
        e_s, e_v, p_s, p_v = (q[:, i] for i in range(len(QUERIES)))
        return StyleOutput(emotion_speech=e_s, emotion_video=e_v, profile_speech=p_s, profile_video=p_v,
                           style_speech=self.speech_style(jnp.concatenate([e_s, p_s], axis=-1)),
                           style_video=self.video_style(jnp.concatenate([e_v, p_v], axis=-1)))


class StyleClassifiers(nnx.Module):
    """`clf(style: StyleOutput)` → `StyleLogits`: linear heads on the mean emotion / profile features."""

    def __init__(self, cfg: DisentanglerConfig, *, rngs: nnx.Rngs):
        if not isinstance(cfg, DisentanglerConfig):
            raise ValueError(f"cfg: expected a DisentanglerConfig, got {type(cfg).__name__}")
        kw = dict(use_bias=True, param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)  # float32 logits
        self.heads = nnx.Dict({name: Dense(cfg.hidden_size, n, names=("embed", None), **kw)
                               for name, n in HEADS.items()})

    def __call__(self, style: StyleOutput) -> StyleLogits:
        emotion = (style.emotion_speech.astype(jnp.float32) + style.emotion_video.astype(jnp.float32)) / 2
        profile = (style.profile_speech.astype(jnp.float32) + style.profile_video.astype(jnp.float32)) / 2
        return StyleLogits(**{name: self.heads[name](emotion if name.startswith("emotion") else profile)
                              for name in HEADS})


def classification_loss(logits: StyleLogits, labels: dict[str, Int[Array, "B"]]
                        ) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
    """L_cls: per head, the mean cross-entropy over the rows whose label is known (label >= 0; -1 = unknown),
    summed over heads → (loss, {head: accuracy over the known rows}). A head with no known label in the batch, or
    absent from `labels`, adds 0 to the loss and reports accuracy 0."""
    unknown = sorted(set(labels) - set(HEADS))
    if unknown:
        raise ValueError(f"labels: unknown heads {unknown}; the heads are {list(HEADS)}")
    total, accuracy = jnp.zeros((), jnp.float32), {}
    for name, n in HEADS.items():
        if name not in labels:
            continue
        lg, y = getattr(logits, name), jnp.asarray(labels[name])
        if y.shape != lg.shape[:1]:
            raise ValueError(f"labels[{name!r}]: shape {tuple(y.shape)} is not [B={lg.shape[0]}]")
        if not isinstance(labels[name], jax.core.Tracer):
            yn = np.asarray(labels[name])
            if yn.size and (yn.min() < -1 or yn.max() >= n):
                raise ValueError(f"labels[{name!r}]: values must be in [-1, {n - 1}], got {yn.min()}..{yn.max()}")
        known = y >= 0
        count = jnp.maximum(jnp.sum(known), 1).astype(jnp.float32)
        logp = jax.nn.log_softmax(lg.astype(jnp.float32), axis=-1)
        nll = -jnp.take_along_axis(logp, jnp.maximum(y, 0)[:, None], axis=-1)[:, 0]
        total = total + jnp.sum(jnp.where(known, nll, 0.0)) / count
        accuracy[name] = jnp.sum(known & (jnp.argmax(lg, axis=-1) == y)) / count
    return total, accuracy


__all__ = [
    "HEADS",
    "QUERIES",
    "DisentanglerConfig",
    "StyleClassifiers",
    "StyleDisentangler",
    "StyleLogits",
    "StyleOutput",
    "classification_loss",
]
