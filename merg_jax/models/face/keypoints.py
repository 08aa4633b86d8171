"""The keypoint detector: a frame → K learned keypoints (FOMM-style, no landmarks, no jacobians).

    kp = KeypointDetector(cfg, rngs=rngs)(frames)     # frames [B, S, S, 3] in [0, 1] → [B, K, 2] (x, y in [-1, 1])
    kp, code = detector.detect(frames)                # and the expression code [B, E] from the same features

An hourglass at `detector_size` (the frame is resized first) predicts K heatmaps at a quarter of that resolution;
each keypoint is the expectation of its softmax(heatmap / temperature) over the pixel coordinates, so it moves
smoothly with the image. Nothing tells it where faces are: the renderer's reconstruction and equivariance losses
place the keypoints where motion happens (head outline, brows). What moving points cannot say — a mouth that
opens, eyes that close, brows that rise — goes into a small expression code (`expression_dim` numbers), read by its
own encoder at the frame's full resolution (at the detector's half resolution a brow is under a pixel thick) through
as many learned attention maps; the renderer's decoder reads it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from merg_jax.models.face.blocks2d import ConvNormAct, Down, Up, conv
from merg_jax.models.face.config import FaceConfig
from merg_jax.models.face.warp import coordinate_grid, resize


class KeypointDetector(nnx.Module):
    def __init__(self, cfg: FaceConfig, *, rngs: nnx.Rngs):
        c = cfg.detector_channels
        self.cfg = cfg
        self.stem = ConvNormAct(3, c, rngs=rngs)
        self.down1 = Down(c, 2 * c, rngs=rngs)  # /2
        self.down2 = Down(2 * c, 4 * c, rngs=rngs)  # /4
        self.down3 = Down(4 * c, 4 * c, rngs=rngs)  # /8
        self.up = Up(4 * c, 2 * c, rngs=rngs)  # /4
        self.head = conv(6 * c, cfg.num_keypoints, 3, rngs=rngs)
        # Two encoders when the code has static numbers (config.static_dim): shared features let the same-clip
        # term, which wants what is constant in a clip, take them from the mouth, which changes in every frame.
        dynamic = cfg.expression_dim - cfg.static_dim
        self.expression = ExpressionEncoder(cfg, dynamic, rngs=rngs) if dynamic else None
        self.static_expression = ExpressionEncoder(cfg, cfg.static_dim, rngs=rngs) if cfg.static_dim else None

    def heatmaps(self, frames: Float[Array, "B S S 3"]) -> Float[Array, "B h w K"]:
        """The softmax heatmaps (each sums to 1 over its h×w pixels)."""
        n = self.cfg.detector_size
        skip = self.down2(self.down1(self.stem(resize(frames, n, n) - 0.5)))
        logits = self.head(jnp.concatenate([self.up(self.down3(skip)), skip], axis=-1))
        b, h, w, k = logits.shape
        p = jax.nn.softmax(logits.reshape(b, h * w, k).astype(jnp.float32) / self.cfg.kp_temperature, axis=1)
        return p.reshape(b, h, w, k)

    def detect(self, frames: Float[Array, "B S S 3"]) -> tuple[Float[Array, "B K 2"], Float[Array, "B E"]]:
        """(keypoints, expression code); the code is [B, 0] when `expression_dim` is 0."""
        return self(frames), self.code(frames)

    def code(self, frames: Float[Array, "B S S 3"]) -> Float[Array, "B E"]:
        """The expression code: the static numbers first, then the changing ones."""
        parts = [enc(frames) for enc in (self.static_expression, self.expression) if enc is not None]
        return jnp.concatenate(parts, axis=-1) if parts else jnp.zeros((frames.shape[0], 0), jnp.float32)

    def __call__(self, frames: Float[Array, "B S S 3"]) -> Float[Array, "B K 2"]:
        """The keypoints alone."""
        heat = self.heatmaps(frames)
        grid = coordinate_grid(heat.shape[1], heat.shape[2])
        return jnp.einsum("bhwk,hwc->bkc", heat, grid)


class ExpressionEncoder(nnx.Module):
    """A frame at full resolution → its expression code [B, E] in (-1, 1)."""

    def __init__(self, cfg: FaceConfig, dim: int, *, rngs: nnx.Rngs):
        c, e = cfg.detector_channels // 2, dim
        self.stem = ConvNormAct(3, c, rngs=rngs)
        self.down1 = Down(c, 2 * c, rngs=rngs)  # /2
        self.down2 = Down(2 * c, 4 * c, rngs=rngs)  # /4
        self.mix = ConvNormAct(4 * c, 4 * c, rngs=rngs)
        # The code reads features where E learned attention maps look (softmax over pixels, like a heatmap): a
        # plain spatial mean of GroupNorm-ed features is nearly the same for every frame (the norm fixes each
        # group's statistics), and a code pooled that way collapsed to a constant in training.
        self.attend = conv(4 * c, e, 3, rngs=rngs)
        self.out = nnx.Linear(e * 4 * c, e, rngs=rngs)

    def __call__(self, frames: Float[Array, "B S S 3"]) -> Float[Array, "B E"]:
        x = self.mix(self.down2(self.down1(self.stem(frames - 0.5))))
        b, h, w, c = x.shape
        attention = jax.nn.softmax(self.attend(x).reshape(b, h * w, -1).astype(jnp.float32), axis=1)
        pooled = jnp.einsum("bpe,bpc->bec", attention.astype(x.dtype), x.reshape(b, h * w, c))
        return jnp.tanh(self.out(pooled.reshape(b, -1))).astype(jnp.float32)


__all__ = ["ExpressionEncoder", "KeypointDetector"]
