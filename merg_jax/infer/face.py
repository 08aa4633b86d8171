"""Talking-face animation with the trained face generator (`Empatheia.face`): any portrait, any length of speech.

    anim = Animator(model.face)
    content = anim.content_from_speech(wave, sr)              # or C^v from the Content Synchronizer: [F, C]
    style = anim.style_from_label("happy", intensity=0.8)     # or style_from_reference(frames), or S^v, or None
    frames = anim.animate(portrait, content, style)           # uint8 [F, size, size, 3] at anim.fps
    animate(model.face, portrait, speech=(wave, sr), emotion="sad", size=256)   # the same in one call

Motion comes from the diffusion transformer in windows of `window` frames: each window after the first keeps the
last `overlap` frames of the one before fixed while it is denoised (they are set in every step's x0), so the
windows join without a jump, and any length works. DDIM with `sample_steps` steps; classifier-free guidance on
style (`guidance`). The renderer warps the portrait by its keypoints plus the motion; above the trained size the
warp reads the portrait at full resolution. Every jitted function runs at fixed shapes (one window; chunks of
`RENDER_CHUNK` frames; content in mel buckets), so after the first call nothing compiles again.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from merg_jax.labels import EMOTIONS_7

RENDER_CHUNK = 25  # frames per renderer call
MEL_BUCKET = 256  # content is computed on mel padded to a multiple of this many frames
MIN_SPEECH_S = 0.2
SILENCE_RMS = 1e-4


class AnimationError(ValueError):
    """Bad input to animation (unreadable portrait, silent or empty audio, a wrong size): a one-line message."""


def _as_portrait(image: np.ndarray, size: int) -> np.ndarray:
    from merg_jax.data.features import center_crop_resize

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise AnimationError(f"portrait must be a uint8 RGB image [H, W, 3], got {image.dtype} {image.shape}")
    if min(image.shape[:2]) < 16:
        raise AnimationError(f"portrait of {image.shape[1]}×{image.shape[0]} pixels is too small (at least 16×16)")
    return center_crop_resize(np.ascontiguousarray(image[..., :3]), size)


class Animator:
    def __init__(self, face, *, steps: int | None = None, guidance: float | None = None, seed: int = 0):
        if face is None:
            raise AnimationError("this model has no face generator (config.empatheia.face)")
        self.face = face
        self.cfg = cfg = face.cfg
        self.fps = cfg.fps
        self.steps = int(steps or cfg.sample_steps)
        self.guidance = float(cfg.guidance if guidance is None else guidance)
        self.seed = seed
        if not 1 <= self.steps <= cfg.diffusion_steps:
            raise AnimationError(f"steps={self.steps}: expected 1..{cfg.diffusion_steps}")
        graphdef, state = nnx.split(face)
        self._state = state
        ts = face.schedule.ddim_timesteps(self.steps)
        schedule = face.schedule

        @jax.jit
        def content(state, mel, mel_len, frames_like):
            return nnx.merge(graphdef, state).content(mel, mel_len, frames_like.shape[1])

        @jax.jit
        def style(state, motion, n):
            return nnx.merge(graphdef, state).style(motion, n)

        @jax.jit
        def label_style(state, e, x):
            return nnx.merge(graphdef, state).label_style(e, x)

        @jax.jit
        def window(state, x_known, known, content, mask, style, has_style, key, guidance):
            f = nnx.merge(graphdef, state)
            x = jax.random.normal(key, x_known.shape)
            use = jnp.stack([has_style, jnp.zeros_like(has_style)])
            for i, t in enumerate(ts):
                both = f.denoise(jnp.concatenate([x, x]), jnp.full((2,), t), jnp.concatenate([content, content]),
                                 jnp.concatenate([style, style]), jnp.concatenate([mask, mask]), use)
                x0 = both[1:] + guidance * (both[:1] - both[1:])
                x0 = jnp.where(known[..., None], x_known, x0)
                t_prev = int(ts[i + 1]) if i + 1 < len(ts) else -1
                x = schedule.ddim_step(x, x0, jnp.full((1,), t), jnp.full((1,), t_prev))
            return f.denormalise(x[0]), x[0]

        @jax.jit
        def source(state, image):
            return nnx.merge(graphdef, state).renderer.source(image)

        @jax.jit
        def pose(state, frames):
            return nnx.merge(graphdef, state).renderer.kp.detect(frames)

        def render(state, src, kp, code, portrait, out_size):
            r = nnx.merge(graphdef, state).renderer
            return r.render(src, kp, code, out_size=out_size, portrait=portrait)

        self._content, self._style, self._label_style = content, style, label_style
        self._window, self._source, self._pose = window, source, pose
        self._render = jax.jit(render, static_argnames="out_size")

    # ------------------------------------------------------------------------------------------------ inputs

    def content_from_mel(self, mel: np.ndarray, frames: int | None = None) -> np.ndarray:
        """The speech generator's log-mel `[M, n_mels]` → content `[frames, content_dim]` (default: as long as the
        speech)."""
        from merg_jax.models.face.audio_content import video_frames_of

        mel = np.asarray(mel, np.float32)
        m = mel.shape[0]
        n = int(video_frames_of(jnp.asarray([m]), self.cfg)[0]) if frames is None else int(frames)
        if n < 1:
            raise AnimationError("the speech is too short to animate (no video frame)")
        pad_m = MEL_BUCKET * math.ceil(m / MEL_BUCKET)
        pad_f = MEL_BUCKET * math.ceil(n / MEL_BUCKET)
        x = np.zeros((1, pad_m, mel.shape[1]), np.float32)
        x[0, :m] = mel
        c = self._content(self._state, jnp.asarray(x), jnp.asarray([m]), jnp.zeros((1, pad_f)))
        return np.asarray(c[0, :n])

    def content_from_speech(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        """A mono waveform → content `[round(seconds · fps), content_dim]`. Silent or empty audio is an error."""
        from merg_jax.data.features import resample, to_float_mono
        from merg_jax.data.speech_corpus import speech_mel

        wave = to_float_mono(np.asarray(wave))
        seconds = len(wave) / float(sample_rate)
        if seconds < MIN_SPEECH_S:
            raise AnimationError(f"the audio is {seconds:.2f} s long: too short to animate (at least {MIN_SPEECH_S} s)")
        if float(np.sqrt(np.mean(np.square(wave, dtype=np.float64)))) < SILENCE_RMS:
            raise AnimationError("the audio is silent: nothing to animate")
        wave = resample(wave, int(sample_rate), self.cfg.sample_rate).astype(np.float32)
        frames = max(1, int(round(seconds * self.fps)))
        return self.content_from_mel(speech_mel(wave, self.cfg), frames)

    def pose(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 frames [T, size, size, 3] → (keypoints [T, K, 2], expression codes [T, E])."""
        kps, codes = [], []
        for s in range(0, len(frames), RENDER_CHUNK):
            x = np.zeros((RENDER_CHUNK, *frames.shape[1:]), np.uint8)
            chunk = frames[s:s + RENDER_CHUNK]
            x[:len(chunk)] = chunk
            kp, code = self._pose(self._state, jnp.asarray(x, jnp.float32) / 255.0)
            kps.append(np.asarray(kp)[:len(chunk)])
            codes.append(np.asarray(code)[:len(chunk)])
        return np.concatenate(kps), np.concatenate(codes)

    def motion_of_clip(self, frames: np.ndarray, neutral: np.ndarray) -> np.ndarray:
        """A clip (uint8 [T, H, W, 3] at `fps`) → its motion [min(T, max_frames), D] read against `neutral`, a
        still, neutral image of the same face; `render(neutral, motion)` replays the clip on that face."""
        size = self.cfg.size
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[0] < 2:
            raise AnimationError(f"the reference clip must be frames [T ≥ 2, H, W, 3], got {frames.shape}")
        from merg_jax.models.face.generator import motion_of

        frames = np.stack([_as_portrait(f, size) for f in frames[:self.cfg.max_frames]])
        kp, code = self.pose(np.concatenate([_as_portrait(neutral, size)[None], frames]))
        return np.asarray(motion_of(kp[1:], code[1:], kp[0], code[0]))

    def style_from_reference(self, frames: np.ndarray, neutral: np.ndarray) -> np.ndarray:
        """A reference clip (uint8 [T, H, W, 3] at `fps`) → style code [S]. Its motion is read against `neutral`, a
        still, neutral image of the same face (the animated portrait when the reference shows the same avatar)."""
        return self.style_from_motion(self.motion_of_clip(frames, neutral))

    def style_from_motion(self, motion: np.ndarray) -> np.ndarray:
        """A clip's motion (`motion_of_clip`) → style code [S]."""
        n = len(motion)
        pad = np.zeros((1, self.cfg.max_frames, motion.shape[1]), np.float32)
        pad[0, :n] = motion
        return np.asarray(self._style(self._state, jnp.asarray(pad), jnp.asarray([n]))[0])

    def style_from_label(self, emotion: str, intensity: float = 1.0) -> np.ndarray:
        """One of the 7 emotions at an intensity (0: the still neutral face, 1: as in the training clips)."""
        if emotion not in EMOTIONS_7:
            raise AnimationError(f"emotion {emotion!r} is not one of {list(EMOTIONS_7)}")
        if not 0.0 <= float(intensity) <= 2.0:
            raise AnimationError(f"intensity {intensity}: expected a number in [0, 2]")
        e = jnp.asarray([EMOTIONS_7.index(emotion)])
        return np.asarray(self._label_style(self._state, e, jnp.asarray([float(intensity)]))[0])

    # ------------------------------------------------------------------------------------------------ motion

    def motion(self, content: np.ndarray, style: np.ndarray | None, *, seed: int | None = None) -> np.ndarray:
        """Content [F, C] (+ style [S] or None) → keypoint motion [F, 2K], window by window."""
        cfg = self.cfg
        content = np.asarray(content, np.float32)
        if content.ndim != 2 or content.shape[1] != cfg.content_dim or content.shape[0] < 1:
            raise AnimationError(f"content must be [frames ≥ 1, {cfg.content_dim}], got {content.shape}")
        f, w, o = content.shape[0], cfg.window, cfg.overlap
        has_style = style is not None
        s = jnp.asarray(np.zeros(cfg.style_dim, np.float32) if style is None else np.asarray(style, np.float32))
        if s.shape != (cfg.style_dim,):
            raise AnimationError(f"style must be [{cfg.style_dim}], got {tuple(s.shape)}")
        key = jax.random.key(self.seed if seed is None else seed)
        out = np.zeros((f, cfg.motion_dim), np.float32)
        out_n = np.zeros((f, cfg.motion_dim), np.float32)  # normalised, for the next window's known frames
        start, first = 0, True
        while True:
            c = np.zeros((1, w, cfg.content_dim), np.float32)
            n = min(w, f - start)
            c[0, :n] = content[start:start + n]
            mask = np.zeros((1, w), bool)
            mask[0, :n] = True
            known = np.zeros((1, w), bool)
            x_known = np.zeros((1, w, cfg.motion_dim), np.float32)
            if not first:
                k = min(o, n)
                known[0, :k] = True
                x_known[0, :k] = out_n[start:start + k]
            motion, motion_n = self._window(self._state, jnp.asarray(x_known), jnp.asarray(known), jnp.asarray(c),
                                            jnp.asarray(mask), s[None], jnp.asarray(has_style),
                                            jax.random.fold_in(key, start), self.guidance)
            out[start:start + n] = np.asarray(motion)[:n]
            out_n[start:start + n] = np.asarray(motion_n)[:n]
            if start + n >= f:
                return out
            start, first = start + w - o, False

    # ------------------------------------------------------------------------------------------------ frames

    def render(self, portrait: np.ndarray, motion: np.ndarray, *, size: int | None = None) -> np.ndarray:
        """The portrait (uint8 [H, W, 3], any size) moved by `motion` [F, 2K] → uint8 [F, size, size, 3]."""
        cfg = self.cfg
        size = int(size or cfg.size)
        if size < cfg.size or size % 2:
            raise AnimationError(f"size {size}: expected an even number ≥ the trained size {cfg.size}")
        image = _as_portrait(portrait, cfg.size)
        src = self._source(self._state, jnp.asarray(image[None], jnp.float32) / 255.0)
        big = None if size == cfg.size else jnp.asarray(_as_portrait(portrait, size)[None], jnp.float32) / 255.0
        from merg_jax.models.face.generator import pose_of

        motion = np.asarray(motion, np.float32)
        if motion.ndim != 2 or motion.shape[1] != cfg.motion_dim:
            raise AnimationError(f"motion must be [frames, {cfg.motion_dim}], got {motion.shape}")
        kp0, code0 = np.asarray(src.kp[0]), np.asarray(src.code[0])
        kp, code = (np.asarray(x) for x in pose_of(motion, kp0, code0))
        out = []
        for s in range(0, len(kp), RENDER_CHUNK):
            n = len(kp[s:s + RENDER_CHUNK])
            x = np.repeat(kp0[None], RENDER_CHUNK, axis=0)
            c = np.repeat(code0[None], RENDER_CHUNK, axis=0)
            x[:n], c[:n] = kp[s:s + RENDER_CHUNK], code[s:s + RENDER_CHUNK]
            frames = self._render(self._state, src, jnp.asarray(x), jnp.asarray(c), big, out_size=size)
            out.append((np.asarray(frames[:n]) * 255.0 + 0.5).astype(np.uint8))
        return np.concatenate(out)

    def animate(self, portrait: np.ndarray, content: np.ndarray, style: np.ndarray | None, *,
                size: int | None = None, seed: int | None = None) -> np.ndarray:
        return self.render(portrait, self.motion(content, style, seed=seed), size=size)


def animate(face, portrait: np.ndarray, *, content: np.ndarray | None = None,
            speech: tuple[np.ndarray, int] | None = None, style: np.ndarray | None = None,
            reference: np.ndarray | None = None, reference_neutral: np.ndarray | None = None,
            emotion: str | None = None, intensity: float = 1.0, size: int | None = None, seed: int = 0,
            animator: Animator | None = None) -> np.ndarray:
    """portrait + (content | speech=(wave, sr)) + (style | reference clip frames | emotion [+ intensity] | nothing)
    → uint8 frames [F, size, size, 3] at the generator's fps. See the module docstring."""
    anim = animator or Animator(face, seed=seed)
    if (content is None) == (speech is None):
        raise AnimationError("give exactly one of content (C^v) and speech (wave, sample_rate)")
    given = [x is not None for x in (style, reference, emotion)]
    if sum(given) > 1:
        raise AnimationError("give at most one of style, reference and emotion")
    c = np.asarray(content) if content is not None else anim.content_from_speech(*speech)
    if reference is not None:
        s = anim.style_from_reference(reference, portrait if reference_neutral is None else reference_neutral)
    elif emotion is not None:
        s = anim.style_from_label(emotion, intensity)
    else:
        s = None if style is None else np.asarray(style, np.float32)
    return anim.animate(portrait, c, s, size=size, seed=seed)


__all__ = ["AnimationError", "Animator", "animate"]
