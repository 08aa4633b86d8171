"""What stages b (`content`, L_ccl) and c (`style`, L_sal) train the Content Synchronizer and Style Disentangler to
hit: the generators' own encoders applied to the gold reply (DESIGN §1).

    targets = make_targets(config, model.cfg)          # config.targets.kind picks the implementation
    c = targets.content(batch)   # ContentTargets: C^s targets [B, Ts, Ds] + lengths, C^v targets [B, Tv, Dv] + lengths
    s = targets.style(batch)     # StyleTargets: S^s targets [B, Ss], S^v targets [B, Sv] + which rows have them

A `TargetEncoders` is any object with `content`, `style` and `batch_keys` (the pipeline keys it reads). The speech
generator supplies the speech half (its text encoder on the gold reply, its style encoder on the gold speech) and
the face generator the video half (its audio content encoder on the gold speech, its style encoder on the gold
video). Until they exist, `ReplyStatisticsTargets` stands in: a real, frozen, deterministic module that turns the
gold reply's log-mel and frames into features of exactly the generators' shapes — content that follows the speech
frame by frame, style from its statistics — so the stages, their losses and checkpoints run and learn end to end.
Its weights are fixed random projections held in `TargetWeight` variables (not `nnx.Param`): no optimiser ever sees
them, and the same seed rebuilds them bit for bit, so they need no checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ContentTargets:
    """L_ccl's targets; features are zero beyond each row's length, and a row without gold media has length 0."""

    speech: Float[Array, "B Ts Ds"]
    speech_len: Int[Array, "B"]
    video: Float[Array, "B Tv Dv"]
    video_len: Int[Array, "B"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class StyleTargets:
    """L_sal's targets and which rows have them (gold speech / gold video present)."""

    speech: Float[Array, "B Ss"]
    speech_valid: Bool[Array, "B"]
    video: Float[Array, "B Sv"]
    video_valid: Bool[Array, "B"]


class TargetEncoders(Protocol):
    """`content(batch, model)` / `style(batch, model)`: `model` is the Empatheia being trained, whose generators
    (`model.speech`) may supply the targets; their outputs are constants to the loss (no gradient)."""

    batch_keys: tuple[str, ...]

    def content(self, batch: Mapping[str, Any], model=None) -> ContentTargets: ...

    def style(self, batch: Mapping[str, Any], model=None) -> StyleTargets: ...


class TargetWeight(nnx.Variable):
    """A frozen weight of a target encoder: not an `nnx.Param`, so no stage's filter or optimiser selects it."""


def _masked_mean_std(x: Float[Array, "B T F"], valid: Bool[Array, "B T"]) -> Float[Array, "B 2F"]:
    w = valid.astype(jnp.float32)[..., None]
    n = jnp.maximum(jnp.sum(w, axis=1), 1.0)
    mean = jnp.sum(x * w, axis=1) / n
    var = jnp.sum(jnp.square(x - mean[:, None]) * w, axis=1) / n
    return jnp.concatenate([mean, jnp.sqrt(var + 1e-6)], axis=-1)


class ReplyStatisticsTargets(nnx.Module):
    """The stand-in target encoders (see the module docstring), shaped like the generators' encoders.

    speech content: the gold log-mel averaged over windows of `ceil(T_mel / Ts)` frames → a fixed projection →
      tanh, `[B, Ts, Ds]`, length `ceil(mel_len / window)`;
    video content: the gold log-mel sampled at the video frame rate → projection → tanh, `[B, Tv, Dv]`, length
      the gold video's frames (or the speech's duration in frames when the video is missing);
    speech style: mean and standard deviation of the gold log-mel over time → projection → tanh, `[B, Ss]`;
    video style: mean and standard deviation over the valid frames of the gold video pooled to 8×8 grey →
      projection → tanh, `[B, Sv]`.
    """

    batch_keys = ("reply_mel", "reply_mel_len", "reply_audio_mask", "reply_frames", "reply_frames_len",
                  "reply_video_mask")

    def __init__(self, *, n_mels: int, mel_fps: float, video_fps: float, speech_content: tuple[int, int],
                 video_content: tuple[int, int], speech_style_dim: int, video_style_dim: int, seed: int = 0):
        self.mel_fps, self.video_fps = float(mel_fps), float(video_fps)
        self.speech_len, speech_dim = speech_content
        self.video_len, video_dim = video_content
        keys = jax.random.split(jax.random.key(seed), 4)

        def weight(key, n_in, n_out):
            return TargetWeight(jax.random.normal(key, (n_in, n_out), jnp.float32) * (2.0 / n_in) ** 0.5)

        self.speech_content_w = weight(keys[0], n_mels, speech_dim)
        self.video_content_w = weight(keys[1], n_mels, video_dim)
        self.speech_style_w = weight(keys[2], 2 * n_mels, speech_style_dim)
        self.video_style_w = weight(keys[3], 2 * 64, video_style_dim)

    @classmethod
    def from_config(cls, config, model_cfg) -> ReplyStatisticsTargets:
        ra, rv = config.data.reply_audio, config.data.reply_video
        sync, dis = model_cfg.synchronizer, model_cfg.disentangler
        return cls(n_mels=int(ra.n_mels), mel_fps=float(ra.sample_rate) / float(ra.hop), video_fps=float(rv.fps),
                   speech_content=(sync.speech_content_len, sync.speech_content_dim),
                   video_content=(sync.video_content_len, sync.video_content_dim),
                   speech_style_dim=dis.speech_style_dim, video_style_dim=dis.video_style_dim,
                   seed=int(config.targets.get("seed", 0)))

    def content(self, batch: Mapping[str, Any], model=None) -> ContentTargets:
        mel = jnp.asarray(batch["reply_mel"], jnp.float32)
        b, t, m = mel.shape
        has_speech = jnp.asarray(batch["reply_audio_mask"])
        mel_len = jnp.where(has_speech, batch["reply_mel_len"], 0)
        frame_ok = jnp.arange(t)[None] < mel_len[:, None]
        # Speech content: window means, one per target position.
        window = math.ceil(t / self.speech_len)
        pad = window * self.speech_len - t
        x = jnp.pad(jnp.where(frame_ok[..., None], mel, 0.0), ((0, 0), (0, pad), (0, 0)))
        w = jnp.pad(frame_ok.astype(jnp.float32), ((0, 0), (0, pad)))
        sums = x.reshape(b, self.speech_len, window, m).sum(2)
        counts = w.reshape(b, self.speech_len, window).sum(2)
        pooled = sums / jnp.maximum(counts, 1.0)[..., None]
        speech_len = jnp.minimum((mel_len + window - 1) // window, self.speech_len)
        speech = jnp.tanh(pooled @ self.speech_content_w[...])
        speech = jnp.where((jnp.arange(self.speech_len)[None] < speech_len[:, None])[..., None], speech, 0.0)
        # Video content: the speech at each video frame's time.
        frame = jnp.arange(self.video_len)
        at = jnp.clip(jnp.round(frame * self.mel_fps / self.video_fps).astype(jnp.int32), 0, t - 1)
        from_speech = jnp.round(mel_len * self.video_fps / self.mel_fps).astype(jnp.int32)
        if "reply_frames_len" in batch:
            has_video = jnp.asarray(batch["reply_video_mask"])
            video_len = jnp.where(has_video, batch["reply_frames_len"], from_speech)
        else:
            video_len = from_speech
        video_len = jnp.where(has_speech, jnp.minimum(video_len, self.video_len), 0)
        video = jnp.tanh(mel[:, at] @ self.video_content_w[...])
        video = jnp.where((frame[None] < video_len[:, None])[..., None], video, 0.0)
        return ContentTargets(speech=speech, speech_len=speech_len.astype(jnp.int32), video=video,
                              video_len=video_len.astype(jnp.int32))

    def style(self, batch: Mapping[str, Any], model=None) -> StyleTargets:
        mel = jnp.asarray(batch["reply_mel"], jnp.float32)
        has_speech = jnp.asarray(batch["reply_audio_mask"])
        frame_ok = jnp.arange(mel.shape[1])[None] < batch["reply_mel_len"][:, None]
        speech = jnp.tanh(_masked_mean_std(mel, frame_ok) @ self.speech_style_w[...])
        frames = jnp.asarray(batch["reply_frames"], jnp.float32) / 255.0  # [B, F, S, S, 3]
        b, f, s = frames.shape[:3]
        grey = frames.mean(-1)
        k = s // 8
        grey = grey[:, :, :8 * k, :8 * k].reshape(b, f, 8, k, 8, k).mean((3, 5)).reshape(b, f, 64)
        frame_ok = jnp.arange(f)[None] < batch["reply_frames_len"][:, None]
        video = jnp.tanh(_masked_mean_std(grey, frame_ok) @ self.video_style_w[...])
        return StyleTargets(speech=speech, speech_valid=has_speech, video=video,
                            video_valid=jnp.asarray(batch["reply_video_mask"]))


class GeneratorTargets(nnx.Module):
    """The targets from the generators themselves (DESIGN §1). Speech half, from the trained speech generator
    (`model.speech`): its content encoder on the gold reply's symbols (C^s target, one vector per symbol) and its
    style encoder on the gold reply's log-mel (S^s target). Video half, from the trained face generator
    (`model.face`): its audio content encoder on the gold reply's log-mel (C^v target, one vector per video frame)
    and its style encoder on the gold reply video's motion relative to the listener's portrait (S^v
    target); without a face generator, `ReplyStatisticsTargets` stands in for the video half. Shapes are checked
    once, here, against the config: the synchronizer's and disentangler's sizes must be the generators', and
    `data.reply_audio` / `data.reply_video` must be the generators' mel and frames."""

    def __init__(self, video: ReplyStatisticsTargets | None, *, video_len: int = 0):
        self.video = video
        self.video_len = video_len

    @property
    def batch_keys(self) -> tuple[str, ...]:
        speech = ("reply_mel", "reply_mel_len", "reply_audio_mask", "reply_symbols", "reply_symbols_len")
        if self.video is not None:
            return (*self.video.batch_keys, "reply_symbols", "reply_symbols_len")
        return (*speech, "reply_frames", "reply_frames_len", "reply_video_mask", "reply_portrait")

    @classmethod
    def from_config(cls, config, model_cfg) -> GeneratorTargets:
        sp, fc = model_cfg.speech, model_cfg.face
        if sp is None:
            raise ValueError("config.targets.kind='generators' needs the speech generator (config.empatheia.speech)")
        sync, dis = model_cfg.synchronizer, model_cfg.disentangler
        ra, rv = config.data.reply_audio, config.data.reply_video
        want = {"empatheia.synchronizer.speech_content_len": (sync.speech_content_len, sp.max_tokens),
                "empatheia.synchronizer.speech_content_dim": (sync.speech_content_dim, sp.content_dim),
                "empatheia.disentangler.speech_style_dim": (dis.speech_style_dim, sp.style_dim),
                "data.reply_audio.sample_rate": (int(ra.sample_rate), sp.sample_rate),
                "data.reply_audio.n_fft": (int(ra.n_fft), sp.n_fft), "data.reply_audio.hop": (int(ra.hop), sp.hop),
                "data.reply_audio.n_mels": (int(ra.n_mels), sp.n_mels),
                "data.reply_audio.power": (float(ra.get("power", 2.0)), 1.0),
                "data.reply_audio.fmax": (float(ra.get("fmax") or 0.0), float(sp.fmax))}
        if fc is not None:
            want.update({
                "empatheia.synchronizer.video_content_dim": (sync.video_content_dim, fc.content_dim),
                "empatheia.disentangler.video_style_dim": (dis.video_style_dim, fc.style_dim),
                "data.reply_video.size": (int(rv.size), fc.size), "data.reply_video.fps": (float(rv.fps), fc.fps),
                "data.reply_video.crop": (float(rv.get("crop", 1.0)), 1.0),
                "empatheia.face.sample_rate": (fc.sample_rate, sp.sample_rate),
                "empatheia.face.n_fft": (fc.n_fft, sp.n_fft), "empatheia.face.hop": (fc.hop, sp.hop),
                "empatheia.face.n_mels": (fc.n_mels, sp.n_mels), "empatheia.face.fmin": (fc.fmin, sp.fmin),
                "empatheia.face.fmax": (fc.fmax, sp.fmax)})
        wrong = [f"{k}={have} (the generators need {need})" for k, (have, need) in want.items() if have != need]
        if wrong:
            raise ValueError("config.targets.kind='generators': " + "; ".join(wrong))
        if fc is not None:
            return cls(None, video_len=sync.video_content_len)
        return cls(ReplyStatisticsTargets.from_config(config, model_cfg))

    def content(self, batch: Mapping[str, Any], model=None) -> ContentTargets:
        n = jnp.asarray(batch["reply_symbols_len"], jnp.int32)
        speech = jax.lax.stop_gradient(model.speech.content(jnp.asarray(batch["reply_symbols"]), n))
        if self.video is not None:
            video = self.video.content(batch)
            return ContentTargets(speech=speech, speech_len=n, video=video.video, video_len=video.video_len)
        from merg_jax.models.face.audio_content import video_frames_of

        has = jnp.asarray(batch["reply_audio_mask"])
        mel_len = jnp.where(has, jnp.asarray(batch["reply_mel_len"]), 0)
        video = jax.lax.stop_gradient(model.face.content(jnp.asarray(batch["reply_mel"], jnp.float32), mel_len,
                                                         self.video_len))
        video_len = jnp.where(has, jnp.minimum(video_frames_of(mel_len, model.face.cfg), self.video_len), 0)
        return ContentTargets(speech=speech, speech_len=n, video=video, video_len=video_len.astype(jnp.int32))

    def style(self, batch: Mapping[str, Any], model=None) -> StyleTargets:
        has = jnp.asarray(batch["reply_audio_mask"])
        mel_len = jnp.maximum(jnp.asarray(batch["reply_mel_len"]), 1)
        speech = jax.lax.stop_gradient(model.speech.style(jnp.asarray(batch["reply_mel"], jnp.float32), mel_len))
        if self.video is not None:
            video = self.video.style(batch)
            return StyleTargets(speech=speech, speech_valid=has, video=video.video, video_valid=video.video_valid)
        from merg_jax.models.face.generator import motion_of

        face = model.face
        frames = jnp.asarray(batch["reply_frames"])
        b, f = frames.shape[:2]
        kp, code = face.renderer.kp.detect(frames.reshape(b * f, *frames.shape[2:]).astype(jnp.float32) / 255.0)
        kp0, code0 = face.renderer.kp.detect(jnp.asarray(batch["reply_portrait"]).astype(jnp.float32) / 255.0)
        motion = jax.vmap(motion_of)(kp.reshape(b, f, *kp.shape[1:]), code.reshape(b, f, -1), kp0, code0)
        n = jnp.asarray(batch["reply_frames_len"], jnp.int32)
        video = jax.lax.stop_gradient(face.style(motion, n))
        return StyleTargets(speech=speech, speech_valid=has, video=video,
                            video_valid=jnp.asarray(batch["reply_video_mask"]) & (n > 0))


TARGET_KINDS = {"reply_statistics": ReplyStatisticsTargets, "generators": GeneratorTargets}


def make_targets(config, model_cfg) -> TargetEncoders:
    """The target encoders `config.targets.kind` names (the speech and face issues register theirs here)."""
    kind = str(config.targets.kind)
    if kind not in TARGET_KINDS:
        raise ValueError(f"config.targets.kind={kind!r}: expected one of {sorted(TARGET_KINDS)}")
    return TARGET_KINDS[kind].from_config(config, model_cfg)


__all__ = ["ContentTargets", "GeneratorTargets", "ReplyStatisticsTargets", "StyleTargets", "TARGET_KINDS",
           "TargetEncoders", "TargetWeight", "make_targets"]
