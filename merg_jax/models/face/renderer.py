"""The portrait renderer: one source image + driving keypoints → frames (FOMM-style, occlusion-aware).

    r = FaceRenderer(cfg, rngs=rngs)
    src = r.source(portrait)                  # SourceState: the portrait's features and keypoints, computed once
    frames = r.render(src, kp_driving, code)  # kp [N, K, 2], expression code [N, E] → [N, S, S, 3] in [0, 1]
    frames = r.render(src, kp, code, out_size=256)  # a larger output: the warp reads the portrait at 256
    loss, metrics = r.losses(source, driving, key)   # self-supervised: rebuild `driving` from `source`

The generator encodes the source at 1/2 and 1/4 resolution, warps both levels with the dense motion (masked by the
occlusion map), decodes through residual blocks — at full resolution beside the warped source image itself — and
composites: out = α·warp(source) + (1 − α)·rgb. The driving expression code acts where no keypoint moves in two
ways: its change from the source's code adds a displacement field per code number to the flow (`DenseMotion`: a
brow that rises or tilts is the source's own brow, moved), and it modulates the decoder (a learned spatial map per
code number added at 1/4 and at 1/2 resolution, FiLM at both), which paints what the source does not show (the
inside of an open mouth). So
what the source shows keeps its pixels (identity, sharpness) and the network paints only what is new (the inside
of an opening mouth, closed eyelids). That is also how it renders above its trained size: the flow, α and rgb are
upsampled and the warp reads the full-resolution portrait.

Training needs no landmarks, 3-D face model or pretrained network: the keypoints are learned from the
reconstruction loss (L1 pyramid + SSIM, weighted towards pixels that differ between the two frames) and an
equivariance loss (keypoints of an affinely warped frame are the warped keypoints; the expression code is free).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from merg_jax import labels
from merg_jax.models.face.blocks2d import ConvNormAct, Down, Res, Up, conv
from merg_jax.models.face.config import FaceConfig
from merg_jax.models.face.dense_motion import DenseMotion
from merg_jax.models.face.image_losses import (affine_warp_images, apply_affine, pyramid_l1, random_affine,
                                               ssim_map)
from merg_jax.models.face.keypoints import KeypointDetector
from merg_jax.models.face.warp import resize, resize_field, warp


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SourceState:
    """What the renderer keeps of a source image: the image, its keypoints, expression code and encoder features."""

    image: Float[Array, "B S S 3"]
    kp: Float[Array, "B K 2"]
    code: Float[Array, "B E"]
    features: tuple[Float[Array, "B S S C0"], Float[Array, "B S2 S2 C1"], Float[Array, "B S4 S4 C2"]]

    def repeat(self, r: int) -> SourceState:
        """Each source for r frames in a row (batch B → B·r; batch 1 → r: one source for all frames)."""
        return jax.tree.map(lambda x: jnp.repeat(x, r, axis=0), self)


class FaceRenderer(nnx.Module):
    def __init__(self, cfg: FaceConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        c0, c1, c2 = cfg.channels
        self.kp = KeypointDetector(cfg, rngs=rngs)
        self.dense = DenseMotion(cfg, rngs=rngs)
        self.enc0 = ConvNormAct(3, c0, rngs=rngs)
        self.enc1 = Down(c0, c1, rngs=rngs)
        self.enc2 = Down(c1, c2, rngs=rngs)
        self.mid = nnx.List([Res(c2, rngs=rngs) for _ in range(cfg.blocks)])
        self.dec1 = Up(c2, c1, rngs=rngs)
        self.fuse1 = ConvNormAct(2 * c1, c1, rngs=rngs)
        self.half = nnx.List([Res(c1, rngs=rngs) for _ in range(cfg.half_blocks)])
        self.dec0 = Up(c1, c0, rngs=rngs)
        self.fuse0 = ConvNormAct(c0 + 4, c0, rngs=rngs)  # + the warped source image and the occlusion
        self.head = conv(c0, 4, 3, rngs=rngs)
        e = cfg.expression_dim
        self.film = (nnx.Linear(e, 2 * (c2 + c1), kernel_init=nnx.initializers.zeros, rngs=rngs) if e else None)
        # A learned feature map per code number at 1/4 resolution, added where it applies: a channel-wise FiLM says
        # what to paint but not where, and the brows, eyes and mouth corners an emotion moves are small and sit at
        # nearly the same place in every avatar.
        s4 = cfg.size // 4
        self.expression_maps = nnx.Param(jnp.zeros((s4, s4, e, c2), jnp.float32)) if e else None
        # and at 1/2 resolution, where a brow is a pixel thick instead of a quarter of one
        s2 = cfg.size // 2
        self.half_maps = nnx.Param(jnp.zeros((s2, s2, e, c1), jnp.float32)) if e else None
        self.emotion_head = (nnx.Linear(cfg.static_dim, len(labels.EMOTIONS_7), rngs=rngs)
                             if cfg.emotion_weight else None)

    def _check(self, images, what: str):
        s = self.cfg.size
        if images.ndim != 4 or images.shape[1:] != (s, s, 3):
            raise ValueError(f"face renderer: {what} must be [N, {s}, {s}, 3] (empatheia.face.size={s}), "
                             f"got {tuple(images.shape)}")

    def source(self, image: Float[Array, "B S S 3"]) -> SourceState:
        self._check(image, "the source image")
        e0 = self.enc0(image - 0.5)
        e1 = self.enc1(e0)
        e2 = self.enc2(e1)
        kp, code = self.kp.detect(image)
        return SourceState(image=image, kp=kp, code=code, features=(e0, e1, e2))

    def motion(self, src: SourceState, kp_driving: Float[Array, "B K 2"], code: Float[Array, "B E"] | None = None):
        """(flow [B, m, m, 2], occlusion [B, m, m, 1]) from the source to the driving keypoints and code."""
        return self.dense(src.image, src.kp, kp_driving, None if code is None else code - src.code)

    def decode(self, src: SourceState, flow, occlusion, code: Float[Array, "B E"]
               ) -> tuple[Float[Array, "B S S 3"], Float[Array, "B S S 1"]]:
        """(rgb, α) at the trained size."""
        e0, e1, e2 = src.features
        c1, c2 = self.cfg.channels[1], self.cfg.channels[2]
        if self.film is not None:
            g2, b2, g1, b1 = jnp.split(self.film(code)[:, None, None, :], [c2, 2 * c2, 2 * c2 + c1], axis=-1)
        else:
            g2 = b2 = g1 = b1 = 0.0

        def warped(f):
            occ = resize_field(occlusion, f.shape[1], f.shape[2])
            return warp(f, flow) * occ

        x = warped(e2)
        if self.expression_maps is not None:
            x = x + jnp.einsum("be,hwec->bhwc", code, self.expression_maps[...]).astype(x.dtype)
        for block in self.mid:
            x = block(x)
        x = x * (1.0 + g2) + b2
        x = self.fuse1(jnp.concatenate([self.dec1(x), warped(e1)], axis=-1))
        if self.half_maps is not None:
            x = x + jnp.einsum("be,hwec->bhwc", code, self.half_maps[...]).astype(x.dtype)
        for block in self.half:
            x = block(x)
        x = x * (1.0 + g1) + b1
        # Full resolution reads the warped image, not warped features: a gather of 4 channels instead of c0 (the
        # warps' gathers and their scatter-add gradients dominate a CPU step).
        occ = resize_field(occlusion, e0.shape[1], e0.shape[2])
        x = self.fuse0(jnp.concatenate([self.dec0(x), warp(src.image, flow) - 0.5, occ], axis=-1))
        h = self.head(x).astype(jnp.float32)
        return jax.nn.sigmoid(h[..., :3]), jax.nn.sigmoid(h[..., 3:])

    def render(self, src: SourceState, kp_driving: Float[Array, "B K 2"], code: Float[Array, "B E"] | None = None,
               *, out_size: int | None = None, portrait: Float[Array, "B O O 3"] | None = None
               ) -> Float[Array, "B O O 3"]:
        """Frames for the driving keypoints and expression codes (default: the source's code; src batch 1 is shared
        by all of them). At `out_size` above the trained size, `portrait` (the same image at out_size; default the
        source upsampled) is warped at full size."""
        n = kp_driving.shape[0]
        if src.image.shape[0] == 1 and n > 1:
            src = src.repeat(n)
        code = src.code if code is None else code
        flow, occlusion = self.motion(src, kp_driving, code)
        rgb, alpha = self.decode(src, flow, occlusion, code)
        size = out_size or self.cfg.size
        if size == self.cfg.size:
            image = src.image
        else:
            image = resize(src.image, size, size) if portrait is None else jnp.broadcast_to(
                portrait, (n, size, size, 3))
            rgb, alpha = resize(rgb, size, size), resize_field(alpha, size, size)
        return jnp.clip(alpha * warp(image, flow) + (1.0 - alpha) * rgb, 0.0, 1.0)

    def __call__(self, source: Float[Array, "B S S 3"], driving: Float[Array, "B S S 3"]) -> Float[Array, "B S S 3"]:
        """Rebuild each driving frame from its source frame and the driving frame's keypoints and expression."""
        self._check(driving, "the driving frames")
        return self.render(self.source(source), *self.kp.detect(driving))

    def losses(self, source: Float[Array, "B S S 3"], driving: Float[Array, "B S S 3"], key: jax.Array,
               *, neutral: Float[Array, "B S S 3"] | None = None, emotion: Int[Array, "B"] | None = None,
               equivariance: float = 10.0) -> tuple[Float[Array, ""], dict]:
        """The self-supervised losses of one batch of (source, driving) pairs, images in [0, 1]. With B sources and
        B·R driving frames, source b drives frames b·R … b·R + R − 1 (its features are computed once); those R
        frames come from one clip. `neutral` (default: the sources) is each row's neutral face, the avatar's
        portrait: the code's static numbers are read as offsets from its code. `emotion` (index into
        `labels.EMOTIONS_7`, −1: none) is each row's annotated emotion, for the `emotion_weight` term."""
        b, n = source.shape[0], driving.shape[0]
        if n % b:
            raise ValueError(f"face renderer: {n} driving frames for {b} sources (expected a multiple)")
        src = self.source(source)
        r = n // b
        if neutral is None:
            neutral_code = src.code
        elif neutral.shape[0] != b:
            raise ValueError(f"face renderer: {neutral.shape[0]} neutral faces for {b} sources (expected one each)")
        else:
            self._check(neutral, "the neutral faces")
            neutral_code = self.kp.code(neutral)
        if r > 1:
            src = src.repeat(r)
        source = src.image
        kp_d, code_d = self.kp.detect(driving)
        pred = self.render(src, kp_d, code_d)
        # Pixels that change between the frames (a mouth opening, eyes closing) are few; without this weight the
        # loss is all background and head outline.
        weight = 1.0 + self.cfg.change_weight * jnp.mean(jnp.abs(driving - source), axis=-1, keepdims=True)
        l1 = pyramid_l1(pred, driving, weight)
        ssim = jnp.mean(ssim_map(pred, driving))
        affine = random_affine(key, driving.shape[0])
        kp_t = self.kp(affine_warp_images(driving, affine))
        equi = jnp.mean(jnp.abs(apply_affine(affine, kp_t) - kp_d))
        loss = l1 + 0.5 * (1.0 - ssim) + equivariance * equi
        metrics = {"l1": l1, "ssim": ssim, "equivariance": equi}
        s = self.cfg.static_dim
        if code_d.shape[-1] > s:
            # Left to the reconstruction loss alone, the expression code collapses to a constant in the first
            # 50 steps (its random variation only adds noise to the decoder) and never opens a mouth; a constant
            # code also satisfies any "same code under a small warp" term, so there is none. Instead each changing
            # code number must change between the two frames of a pair (VICReg's variance hinge on the
            # difference): what changes within a clip is expression and pose, never identity.
            spread = jnp.std(code_d[:, s:] - src.code[:, s:], axis=0)
            loss = loss + jnp.mean(jax.nn.relu(self.cfg.code_spread - spread))
            metrics["code_spread"] = jnp.mean(spread)
        # The static numbers as offsets from the neutral face: a frame's raw code also tells the avatar apart.
        offset = code_d[:, :s] - jnp.repeat(neutral_code[:, :s], r, axis=0)
        if s and r > 1:
            # The same within a clip, different between clips.
            nce = same_clip_contrastive(offset, jnp.arange(n) // r, self.cfg.clip_temperature)
            loss = loss + self.cfg.clip_weight * nce
            metrics["clip_nce"] = nce
        if self.emotion_head is not None and emotion is not None:
            # The static offset must tell the annotated emotion (a linear read-out): what the decoder and the
            # code's flow then learn to draw from it is that emotion's brows, eyes and mouth corners.
            target = jnp.repeat(jnp.asarray(emotion, jnp.int32), r, axis=0)
            ce, right = emotion_cross_entropy(self.emotion_head(offset), target)
            loss = loss + self.cfg.emotion_weight * ce
            metrics["emotion_ce"], metrics["emotion_acc"] = ce, right
        return loss, metrics


def emotion_cross_entropy(logits: Float[Array, "N C"], target: Int[Array, "N"]
                          ) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """(mean cross-entropy, accuracy) over the rows with a label (target ≥ 0); both 0 when no row has one."""
    known = target >= 0
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.maximum(target, 0)[:, None], axis=-1)[:, 0]
    count = jnp.maximum(jnp.sum(known), 1)
    right = jnp.sum(known & (jnp.argmax(logits, axis=-1) == target)) / count
    return jnp.sum(jnp.where(known, nll, 0.0)) / count, right


def same_clip_contrastive(z: Float[Array, "N D"], clip: Int[Array, "N"], temperature: float) -> Float[Array, ""]:
    """Supervised contrastive loss (Khosla et al. 2020) with a Gaussian kernel: for each row, −mean over the other
    rows of its clip of log softmax_{j ≠ i}(−|z_i − z_j|² / temperature); rows alone in their clip are left out."""
    n = z.shape[0]
    d2 = jnp.sum(jnp.square(z[:, None, :] - z[None, :, :]), axis=-1)
    other = ~jnp.eye(n, dtype=bool)
    logp = jax.nn.log_softmax(jnp.where(other, -d2 / temperature, -jnp.inf), axis=1)
    positive = other & (clip[:, None] == clip[None, :])
    count = jnp.sum(positive, axis=1)
    per_row = -jnp.sum(jnp.where(positive, logp, 0.0), axis=1) / jnp.maximum(count, 1)
    return jnp.sum(jnp.where(count > 0, per_row, 0.0)) / jnp.maximum(jnp.sum(count > 0), 1)


__all__ = ["FaceRenderer", "SourceState", "emotion_cross_entropy", "same_clip_contrastive"]
