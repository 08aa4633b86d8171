"""Empatheia (DESIGN §1): media encoders → projections → LLM (LoRA) → hidden features → Content Synchronizer and
Style Disentangler (+ classifiers), as one NNX module whose attributes are the parameter groups
(`merg_jax.models.param_groups`): `encoders`, `projections`, `llm` (lora + llm_base), `synchronizer`,
`disentangler`, `classifiers`.

    cfg = EmpatheiaConfig.from_config(config, tokenizer)   # a merg_jax config with `model` and `empatheia`
    model = Empatheia(cfg, rngs=nnx.Rngs(0))
    out = model(batch)   # batch: the data pipeline's dict (merg_jax/data/pipeline.py)

`out.logits [B, L, V]` train the CoE text (stage a); `out.content` (C^s, C^v) and `out.style` (S^s, S^v) the
generator-facing stages b and c; `out.style_logits` stage d. Each piece is also callable alone (`encode_media`,
`embed_inputs`, `run_llm`, `heads`) so a stage runs only what it needs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from merg_jax.models.disentangler import (DisentanglerConfig, StyleClassifiers, StyleDisentangler, StyleLogits,
                                         StyleOutput)
from merg_jax.labels import EMOTIONS_7
from merg_jax.speech_symbols import num_symbols
from merg_jax.models.encoders import (AudioConfig, AudioEncoder, EncoderOutput, VisionConfig, VisionEncoder, fit_length,
                                      normalize_ast, normalize_clip)
from merg_jax.models.layers import Dense
from merg_jax.models.transformer import LayerNorm
from merg_jax.models.hidden_features import HiddenFeatureConfig, HiddenFeatures, SignalTokens, extract_features
from merg_jax.models.llm import Llm, LlmOutput
from merg_jax.models.llm_config import LlmConfig
from merg_jax.models.multimodal_input import splice_media
from merg_jax.models.projectors import MediaProjector, ProjectionConfig
from merg_jax.models.face.config import FaceConfig
from merg_jax.models.face.generator import FaceGenerator
from merg_jax.models.speech.config import SpeechConfig
from merg_jax.models.speech.generator import SpeechGenerator
from merg_jax.models.synchronizer import ContentOutput, ContentSynchronizer, SynchronizerConfig


@dataclasses.dataclass(frozen=True)
class EmpatheiaConfig:
    """The whole model. `vision` / `audio` None: that modality is not encoded (its slots keep their token
    embedding). `audio_windows`: windows of `audio.max_length` frames embedded and averaged per clip (ImageBind
    embeds 3). `clip_emotion_head`: a 7-way emotion head on each tower's clip embedding, trained by the `encoders`
    stage when the towers are trained here from scratch (no ImageBind); part of the `encoders` group."""

    llm: LlmConfig
    vision: VisionConfig | None
    audio: AudioConfig | None
    projection: ProjectionConfig = ProjectionConfig()
    features: HiddenFeatureConfig = HiddenFeatureConfig()
    synchronizer: SynchronizerConfig = SynchronizerConfig()
    disentangler: DisentanglerConfig = DisentanglerConfig()
    audio_windows: int = 1
    clip_emotion_head: bool = False
    speech: SpeechConfig | None = None  # the speech generator (`models/speech`), or None: the model writes text only
    face: FaceConfig | None = None  # the talking-face generator (`models/face`), or None: no reply video

    def __post_init__(self):
        d = self.llm.hidden_size
        for name in ("synchronizer", "disentangler"):
            if getattr(self, name).llm_dim != d:
                raise ValueError(f"EmpatheiaConfig.{name}.llm_dim={getattr(self, name).llm_dim} must equal the "
                                 f"LLM's hidden_size={d}")
        if self.audio_windows < 1:
            raise ValueError(f"EmpatheiaConfig.audio_windows={self.audio_windows} must be >= 1")

    @classmethod
    def from_config(cls, config: Mapping[str, Any], tokenizer=None) -> EmpatheiaConfig:
        """From a merg_jax config: `model` (the LLM's fields) and `empatheia` with sections `vision`, `audio`
        (None or {} to leave a modality out), `projection`, `features`, `synchronizer`, `disentangler` and
        `audio_windows`. `llm_dim` is filled in from the LLM; the `<response>` ids from `tokenizer` when given."""
        from merg_jax.config import llm_config

        llm = llm_config(config)
        e = dict(config["empatheia"])
        section = lambda key: dict(e.get(key) or {})  # noqa: E731

        def build(kind, key, required=False, **extra):
            fields = section(key)
            if not fields and not required:
                return None
            try:
                return kind(**{**fields, **extra})
            except TypeError as err:  # unknown field
                raise ValueError(f"config.empatheia.{key}: {err}") from err

        features = build(HiddenFeatureConfig, "features", True)
        if tokenizer is not None:
            if tokenizer.vocab_size > llm.vocab_size:
                raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but config.model.vocab_size is "
                                 f"{llm.vocab_size}: raise it (an imported checkpoint: merg_jax.models.vocab."
                                 "resize_vocab adds the rows)")
            features = features.with_tokenizer(tokenizer)
        return cls(llm=llm, vision=build(VisionConfig, "vision"), audio=build(AudioConfig, "audio"),
                   projection=build(ProjectionConfig, "projection", True), features=features,
                   synchronizer=build(SynchronizerConfig, "synchronizer", True, llm_dim=llm.hidden_size),
                   disentangler=build(DisentanglerConfig, "disentangler", True, llm_dim=llm.hidden_size),
                   audio_windows=int(e.get("audio_windows", 1)),
                   clip_emotion_head=bool(e.get("clip_emotion_head", False)),
                   speech=SpeechConfig.from_dict(e["speech"]) if e.get("speech") else None,
                   face=FaceConfig.from_dict(e["face"]) if e.get("face") else None)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class MediaTokens:
    """Projected media tokens per clip, `[B, C, N, D]`, and which clips have that modality. A pytree."""

    audio: Float[Array, "B C N D"] | None
    audio_present: Bool[Array, "B C"] | None
    video: Float[Array, "B C N D"] | None
    video_present: Bool[Array, "B C"] | None


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class EmpatheiaOutput:
    logits: Float[Array, "B L V"]  # the text positions only (signal positions dropped)
    features: HiddenFeatures
    content: ContentOutput
    style: StyleOutput
    style_logits: StyleLogits


class ClipEmotionHead(nnx.Module):
    """A clip embedding `[N, E]` → 7 emotion logits: LayerNorm, then a linear layer. The norm matters: the towers'
    embeddings are L2-normalised (ImageBind's vision embedding has norm 1), so a bare linear head would need huge
    weights to be confident and learns slowly."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.norm = LayerNorm(dim, eps=1e-6, rngs=rngs)
        self.linear = Dense(dim, len(EMOTIONS_7), names=(None, None), use_bias=True, rngs=rngs)

    def __call__(self, embedding: Float[Array, "N E"]) -> Float[Array, "N 7"]:
        return self.linear(self.norm(embedding.astype(jnp.float32)))


class MediaEncoders(nnx.Module):
    def __init__(self, cfg: EmpatheiaConfig, *, rngs: nnx.Rngs):
        self.vision = VisionEncoder(cfg.vision, rngs=rngs) if cfg.vision is not None else None
        self.audio = AudioEncoder(cfg.audio, rngs=rngs) if cfg.audio is not None else None

        def head(tower_cfg):
            return ClipEmotionHead(tower_cfg.embedding_dim, rngs=rngs) if cfg.clip_emotion_head and tower_cfg else None

        self.audio_emotion = head(cfg.audio)
        self.video_emotion = head(cfg.vision)


class MediaProjections(nnx.Module):
    def __init__(self, cfg: EmpatheiaConfig, *, rngs: nnx.Rngs):
        d = cfg.llm.hidden_size
        self.audio = MediaProjector(cfg.projection, embedding_dim=cfg.audio.embedding_dim,
                                    token_dim=cfg.audio.hidden_size, llm_dim=d, rngs=rngs) if cfg.audio else None
        self.video = MediaProjector(cfg.projection, embedding_dim=cfg.vision.embedding_dim,
                                    token_dim=cfg.vision.hidden_size, llm_dim=d, rngs=rngs) if cfg.vision else None
        self.signals = SignalTokens(cfg.features.num_signal_tokens, d, param_dtype=cfg.llm.weight_dtype,
                                    rngs=rngs) if cfg.features.source == "signal_tokens" else None


def _need(batch: Mapping[str, Any], *keys: str) -> list:
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(f"Empatheia: the batch lacks {missing} (merg_jax/data/pipeline.py lists the keys; the "
                         "config's data.audio/video frames must be > 0 for the modalities the model encodes)")
    return [batch[k] for k in keys]


class Empatheia(nnx.Module):
    def __init__(self, cfg: EmpatheiaConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.encoders = MediaEncoders(cfg, rngs=rngs)
        self.projections = MediaProjections(cfg, rngs=rngs)
        self.llm = Llm(cfg.llm, rngs=rngs)
        self.synchronizer = ContentSynchronizer(cfg.synchronizer, rngs=rngs)
        self.disentangler = StyleDisentangler(cfg.disentangler, rngs=rngs)
        self.classifiers = StyleClassifiers(cfg.disentangler, rngs=rngs)
        self.speech = SpeechGenerator(cfg.speech, num_symbols(), rngs=rngs) if cfg.speech is not None else None
        self.face = FaceGenerator(cfg.face, rngs=rngs) if cfg.face is not None else None

    # ------------------------------------------------------------------------------------------------ media

    def audio_clips(self, mel: Float[Array, "B C T M"], lengths: Int[Array, "B C"]) -> EncoderOutput:
        """Each clip's log-mel (`features.log_mel`) → AST statistics → tower (`audio_windows` windows), clips
        flattened: `pooled [B*C, E]`, `tokens [B*C, N, H]`."""
        b, c = mel.shape[:2]
        # Pad short clips before normalising, as ImageBind pads its fbank: padding reads as log-mel 0.
        mel = fit_length(mel.reshape(b * c, *mel.shape[2:]), max(mel.shape[2], self.cfg.audio.max_length))
        return self.encoders.audio.encode_clips(normalize_ast(mel), lengths.reshape(b * c),
                                                num_windows=self.cfg.audio_windows)

    def video_clips(self, frames: Int[Array, "B C F S S 3"], lengths: Int[Array, "B C"]) -> EncoderOutput:
        """Each clip's uint8 frames → CLIP statistics → tower, averaged over the valid frames, clips flattened."""
        b, c, f = frames.shape[:3]
        size = self.cfg.vision.image_size
        if frames.shape[3:] != (size, size, self.cfg.vision.num_channels):
            raise ValueError(f"Empatheia: video frames are {list(frames.shape[3:])} but the vision tower takes "
                             f"[{size}, {size}, {self.cfg.vision.num_channels}] (data.video.size)")
        valid = jnp.arange(f)[None] < lengths.reshape(b * c, 1)
        return self.encoders.vision.encode_clip(normalize_clip(frames.reshape(b * c, *frames.shape[2:])), valid)

    def encode_audio(self, mel: Float[Array, "B C T M"], lengths: Int[Array, "B C"]) -> Float[Array, "B C N D"]:
        """Each clip's speech → the LLM tokens that stand for it."""
        out = self.projections.audio(self.audio_clips(mel, lengths))
        return out.reshape(*mel.shape[:2], *out.shape[1:])

    def encode_video(self, frames: Int[Array, "B C F S S 3"], lengths: Int[Array, "B C"]) -> Float[Array, "B C N D"]:
        """Each clip's face video → the LLM tokens that stand for it."""
        out = self.projections.video(self.video_clips(frames, lengths))
        return out.reshape(*frames.shape[:2], *out.shape[1:])

    def clip_emotion_logits(self, batch: Mapping[str, Any]) -> dict[str, Float[Array, "B C 7"]]:
        """{"audio", "video"}: each history clip's 7-way emotion logits from its tower's embedding (float32);
        needs `clip_emotion_head`."""
        if self.encoders.audio_emotion is None and self.encoders.video_emotion is None:
            raise ValueError("Empatheia.clip_emotion_logits: the model has no clip emotion heads "
                             "(config.empatheia.clip_emotion_head=True)")
        out = {}
        if self.encoders.audio_emotion is not None:
            mel, lengths = _need(batch, "audio_mel", "audio_len")
            logits = self.encoders.audio_emotion(self.audio_clips(mel, lengths).pooled).astype(jnp.float32)
            out["audio"] = logits.reshape(*mel.shape[:2], -1)
        if self.encoders.video_emotion is not None:
            frames, lengths = _need(batch, "video_frames", "video_len")
            logits = self.encoders.video_emotion(self.video_clips(frames, lengths).pooled).astype(jnp.float32)
            out["video"] = logits.reshape(*frames.shape[:2], -1)
        return out

    def encode_media(self, batch: Mapping[str, Any]) -> MediaTokens:
        audio = audio_present = video = video_present = None
        if self.encoders.audio is not None:
            mel, lengths, audio_present = _need(batch, "audio_mel", "audio_len", "audio_mask")
            audio = self.encode_audio(mel, lengths)
        if self.encoders.vision is not None:
            frames, lengths, video_present = _need(batch, "video_frames", "video_len", "video_mask")
            video = self.encode_video(frames, lengths)
        return MediaTokens(audio, audio_present, video, video_present)

    # ------------------------------------------------------------------------------------------------ LLM

    def embed_inputs(self, batch: Mapping[str, Any], media: MediaTokens
                     ) -> tuple[Float[Array, "B L D"], Int[Array, "B L"]]:
        """(interleaved embeddings, span ids): text embeddings with the media tokens at their slots."""
        tokens, kind, clip = _need(batch, "tokens", "media_kind", "media_clip")
        return splice_media(self.llm.embed_tokens(tokens), kind, clip, media.audio, media.video,
                            media.audio_present, media.video_present)

    def run_llm(self, batch: Mapping[str, Any], media: MediaTokens | None = None, *,
                dropout_rng: jax.Array | None = None) -> tuple[LlmOutput, HiddenFeatures]:
        """The LLM over the interleaved prompt + target (+ signal tokens) → (output over the text positions,
        hidden features r^t / r^s / r^v)."""
        media = self.encode_media(batch) if media is None else media
        tokens, segment_ids = _need(batch, "tokens", "segment_ids")
        positions = batch.get("positions")
        x, spans = self.embed_inputs(batch, media)
        if self.projections.signals is not None:
            x, positions, segment_ids, extra = self.projections.signals.append(x, segment_ids, positions)
            spans = extra.at[:, :spans.shape[1]].set(spans)
        out = self.llm.forward(embeddings=x, positions=positions, segment_ids=segment_ids, span_ids=spans,
                               dropout_rng=dropout_rng)
        features = extract_features(self.cfg.features, out.hidden, tokens, batch["segment_ids"])
        length = tokens.shape[1]
        return dataclasses.replace(out, logits=out.logits[:, :length], hidden=out.hidden[:, :length]), features

    # ------------------------------------------------------------------------------------------------ heads

    def heads(self, features: HiddenFeatures, *, speech_lengths=None, video_lengths=None
              ) -> tuple[ContentOutput, StyleOutput, StyleLogits]:
        content = self.synchronizer(features, speech_lengths=speech_lengths, video_lengths=video_lengths)
        style = self.disentangler(features)
        return content, style, self.classifiers(style)

    def __call__(self, batch: Mapping[str, Any], *, dropout_rng: jax.Array | None = None, speech_lengths=None,
                 video_lengths=None) -> EmpatheiaOutput:
        out, features = self.run_llm(batch, dropout_rng=dropout_rng)
        content, style, logits = self.heads(features, speech_lengths=speech_lengths, video_lengths=video_lengths)
        return EmpatheiaOutput(logits=out.logits, features=features, content=content, style=style,
                               style_logits=logits)


__all__ = ["Empatheia", "EmpatheiaConfig", "EmpatheiaOutput", "MediaTokens"]
