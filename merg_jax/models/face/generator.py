"""The talking-face generator: audio content encoder, style encoder (+ label route), motion diffusion, renderer.

    face = FaceGenerator(cfg, rngs=rngs)
    c = face.content(mel, mel_len, frames)          # the speech generator's log-mel → [B, frames, content_dim] (C^v)
    s = face.style(motion, motion_len)              # a reference clip's keypoint offsets [B, T, 2K] → [B, S] (S^v)
    s = face.label_style(emotion7, intensity)       # no reference clip: emotion + intensity → [B, S]
    x0 = face.denoise(x_t, t, c, s, mask)           # one denoiser call on a window (normalised motion)
    loss, metrics = face.motion_losses(batch, key)  # stage face_motion
    loss, metrics = face.renderer_losses(batch, key)  # stage face_renderer
    face.renderer                                   # FaceRenderer: keypoints, dense motion, warping generator

Motion is the renderer's keypoints and expression code relative to the portrait's (`motion_of`: `[T, 2K + E]`),
so it carries expression and head motion but no face shape: generated motion is added to any portrait's own
keypoints and code (`pose_of`). The
denoiser works on motion normalised by `motion_mean` / `motion_std` (statistics of the training tracks, filled
before the motion stage; not trained). Sampling windows and joining them: `merg_jax.infer.face`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from merg_jax.models.face.audio_content import AudioContentEncoder
from merg_jax.models.face.config import FaceConfig
from merg_jax.models.face.denoiser import MotionDenoiser
from merg_jax.models.face.diffusion import Schedule
from merg_jax.models.face.renderer import FaceRenderer
from merg_jax.models.face.style_encoder import LabelStyle, MotionStyleEncoder

# The batches of the face stages (merg_jax.data.face_corpus).
RENDERER_KEYS = ("portrait", "frames")
MOTION_KEYS = ("mel", "mel_len", "motion", "motion_len", "window_start", "style_start", "emotion7")


def motion_of(kp: Float[Array, "T K 2"], code: Float[Array, "T E"], kp0: Float[Array, "K 2"],
              code0: Float[Array, "E"]) -> Float[Array, "T D"]:
    """Frames' keypoints and expression codes → motion relative to a portrait's (kp0, code0)."""
    t = kp.shape[0]
    return jnp.concatenate([(kp - kp0).reshape(t, -1), code - code0], axis=-1)


def pose_of(motion: Float[Array, "T D"], kp0: Float[Array, "K 2"], code0: Float[Array, "E"]
            ) -> tuple[Float[Array, "T K 2"], Float[Array, "T E"]]:
    """The inverse of `motion_of`: a portrait's keypoints and code moved by `motion`."""
    k = kp0.shape[0]
    return kp0 + motion[:, :2 * k].reshape(-1, k, 2), code0 + motion[:, 2 * k:]


class MotionStats(nnx.Variable):
    """Normalisation statistics of the motion (not an nnx.Param: filled from data, never trained)."""


def _slice_rows(x: Float[Array, "B T ..."], start: Int[Array, "B"], size: int) -> Float[Array, "B size ..."]:
    pad = [(0, 0), (0, size)] + [(0, 0)] * (x.ndim - 2)
    x = jnp.pad(x, pad)
    return jax.vmap(lambda row, s: jax.lax.dynamic_slice_in_dim(row, s, size, axis=0))(x, start)


def _masked_mse(pred, target, mask) -> Float[Array, ""]:
    w = mask[..., None].astype(jnp.float32)
    return jnp.sum(jnp.square(pred - target) * w) / jnp.maximum(jnp.sum(w) * pred.shape[-1], 1.0)


class FaceGenerator(nnx.Module):
    def __init__(self, cfg: FaceConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.renderer = FaceRenderer(cfg, rngs=rngs)
        self.content_encoder = AudioContentEncoder(cfg, rngs=rngs)
        self.style_encoder = MotionStyleEncoder(cfg, rngs=rngs)
        self.label_codes = LabelStyle(cfg, rngs=rngs)
        self.denoiser = MotionDenoiser(cfg, rngs=rngs)
        self.readout = nnx.Linear(cfg.content_dim, cfg.motion_dim, rngs=rngs)
        self.motion_mean = MotionStats(jnp.zeros((cfg.motion_dim,), jnp.float32))
        self.motion_std = MotionStats(jnp.ones((cfg.motion_dim,), jnp.float32))

    @property
    def schedule(self) -> Schedule:
        c = self.cfg
        return Schedule.linear(c.diffusion_steps, c.beta_start, c.beta_end)

    # ------------------------------------------------------------------------------------------------ motion space

    def normalise(self, motion: Float[Array, "... D"]) -> Float[Array, "... D"]:
        return (motion - self.motion_mean[...]) / self.motion_std[...]

    def denormalise(self, motion: Float[Array, "... D"]) -> Float[Array, "... D"]:
        return motion * self.motion_std[...] + self.motion_mean[...]

    # ------------------------------------------------------------------------------------------------ encoders

    def content(self, mel: Float[Array, "B M N"], mel_len: Int[Array, "B"], frames: int) -> Float[Array, "B F C"]:
        return self.content_encoder(mel, mel_len, frames)

    def style(self, motion: Float[Array, "B T D"], lengths: Int[Array, "B"]) -> Float[Array, "B S"]:
        """The style code of raw keypoint offsets (a reference clip's motion)."""
        mask = (jnp.arange(motion.shape[1])[None] < lengths[:, None])[..., None]
        return self.style_encoder(jnp.where(mask, self.normalise(motion), 0.0), lengths)

    def neutral_style(self) -> Float[Array, "S"]:
        """The code of a still, neutral face: the portrait itself held for `style_frames` frames."""
        still = jnp.zeros((1, self.cfg.style_frames, self.cfg.motion_dim), jnp.float32)
        return self.style(still, jnp.array([self.cfg.style_frames]))[0]

    def label_style(self, emotion7: Int[Array, "B"], intensity: Float[Array, "B"] | float = 1.0) -> Float[Array, "B S"]:
        intensity = jnp.broadcast_to(jnp.asarray(intensity, jnp.float32), emotion7.shape)
        return self.label_codes(emotion7, intensity, jax.lax.stop_gradient(self.neutral_style()))

    def denoise(self, x_t: Float[Array, "B W D"], t: Int[Array, "B"], content: Float[Array, "B W C"],
                style: Float[Array, "B S"] | None, mask: Bool[Array, "B W"], use_style=None) -> Float[Array, "B W D"]:
        return self.denoiser(x_t, t, content, style, mask, use_style)

    # ------------------------------------------------------------------------------------------------ losses

    def motion_losses(self, batch: Mapping[str, Any], key: jax.Array) -> tuple[Float[Array, ""], dict]:
        """Stage face_motion: DDPM (x0-prediction) on one random window per clip, its style from another window
        of the same clip; plus the content's direct motion read-out and the label route's regression."""
        cfg = self.cfg
        w = cfg.window
        motion = jnp.asarray(batch["motion"], jnp.float32)
        n = jnp.asarray(batch["motion_len"], jnp.int32)
        f = motion.shape[1]
        valid = jnp.arange(f)[None] < n[:, None]
        x_all = jnp.where(valid[..., None], self.normalise(motion), 0.0)
        content_all = self.content(jnp.asarray(batch["mel"], jnp.float32), jnp.asarray(batch["mel_len"]), f)
        start = jnp.asarray(batch["window_start"], jnp.int32)
        x0 = _slice_rows(x_all, start, w)
        content = _slice_rows(content_all, start, w)
        mask = _slice_rows(valid, start, w)
        s_start = jnp.asarray(batch["style_start"], jnp.int32)
        style_len = jnp.clip(n - s_start, 0, cfg.style_frames)
        style = self.style_encoder(_slice_rows(x_all, s_start, cfg.style_frames), style_len)

        k_t, k_noise, k_drop = jax.random.split(key, 3)
        b = x0.shape[0]
        t = jax.random.randint(k_t, (b,), 0, cfg.diffusion_steps)
        x_t = self.schedule.q_sample(x0, t, jax.random.normal(k_noise, x0.shape))
        use_style = jax.random.uniform(k_drop, (b,)) >= cfg.null_style_prob
        x0_hat = self.denoiser(x_t, t, content, style, mask, use_style)
        diffusion = _masked_mse(x0_hat, x0, mask)
        vmask = mask[:, 1:] & mask[:, :-1]
        velocity = _masked_mse(jnp.diff(x0_hat, axis=1), jnp.diff(x0, axis=1), vmask)
        readout = _masked_mse(self.readout(content), x0, mask)

        e = jnp.asarray(batch["emotion7"], jnp.int32)
        labelled = (e >= 0) & (n > 0)
        target = jax.lax.stop_gradient(style)
        err = jnp.mean(jnp.square(self.label_style(e, 1.0) - target), axis=-1)
        label = jnp.sum(jnp.where(labelled, err, 0.0)) / jnp.maximum(jnp.sum(labelled), 1)
        loss = diffusion + velocity + 0.5 * readout + label
        return loss, {"diffusion": diffusion, "velocity": velocity, "readout": readout, "label_style": label}

    def renderer_losses(self, batch: Mapping[str, Any], key: jax.Array) -> tuple[Float[Array, ""], dict]:
        """Stage face_renderer: each row's P frames; the source is the portrait (half the rows: how the renderer
        is driven at inference) or the clip's first sampled frame, and the other P - 1 frames are rebuilt.
        `emotion7` (optional, −1: none) is each row's annotated emotion."""
        k_src, k_loss = jax.random.split(key)
        portrait = jnp.asarray(batch["portrait"], jnp.float32) / 255.0
        frames = jnp.asarray(batch["frames"], jnp.float32) / 255.0
        b, p = frames.shape[:2]
        use_portrait = jax.random.bernoulli(k_src, 0.5, (b,))
        source = jnp.where(use_portrait[:, None, None, None], portrait, frames[:, 0])
        driving = frames[:, 1:].reshape(b * (p - 1), *frames.shape[2:])
        emotion = jnp.asarray(batch["emotion7"], jnp.int32) if "emotion7" in batch else None
        return self.renderer.losses(source, driving, k_loss, neutral=portrait, emotion=emotion)


__all__ = ["FaceGenerator", "MOTION_KEYS", "MotionStats", "RENDERER_KEYS", "motion_of", "pose_of"]
