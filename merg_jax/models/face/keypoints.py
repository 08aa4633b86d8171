"""The keypoint detector: a frame → K learned keypoints (FOMM-style, no landmarks, no jacobians).

    kp = KeypointDetector(cfg, rngs=rngs)(frames)     # frames [B, S, S, 3] in [0, 1] → [B, K, 2] (x, y in [-1, 1])
    kp, code = detector.detect(frames)                # and the expression code [B, E] from the same features

An hourglass at `detector_size` (the frame is resized first) predicts K heatmaps at a quarter of that resolution;
each keypoint is the expectation of its softmax(heatmap / temperature) over the pixel coordinates, so it moves
smoothly with the image. Nothing tells it where faces are: the renderer's reconstruction and equivariance losses
place the keypoints where motion happens (head outline, brows). What moving points cannot say — a mouth that
opens, eyes that close — goes into a small expression code (`expression_dim` numbers), read from the same features
through as many learned attention maps, which the renderer's decoder reads.
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
        e = cfg.expression_dim
        # The code reads features where E learned attention maps look (softmax over pixels, like a heatmap): a
        # plain spatial mean of GroupNorm-ed features is nearly the same for every frame (the norm fixes each
        # group's statistics), and a code pooled that way collapsed to a constant in training.
        self.attend = conv(6 * c, e, 3, rngs=rngs) if e else None
        self.expression = nnx.Linear(e * 6 * c, e, rngs=rngs) if e else None

    def _features(self, frames: Float[Array, "B S S 3"]) -> Float[Array, "B h w C"]:
        n = self.cfg.detector_size
        x = self.stem(resize(frames, n, n) - 0.5)
        x = self.down1(x)
        skip = self.down2(x)
        return jnp.concatenate([self.up(self.down3(skip)), skip], axis=-1)

    def _heatmaps(self, x: Float[Array, "B h w C"]) -> Float[Array, "B h w K"]:
        logits = self.head(x)
        b, h, w, k = logits.shape
        p = jax.nn.softmax(logits.reshape(b, h * w, k).astype(jnp.float32) / self.cfg.kp_temperature, axis=1)
        return p.reshape(b, h, w, k)

    def heatmaps(self, frames: Float[Array, "B S S 3"]) -> Float[Array, "B h w K"]:
        """The softmax heatmaps (each sums to 1 over its h×w pixels)."""
        return self._heatmaps(self._features(frames))

    def detect(self, frames: Float[Array, "B S S 3"]) -> tuple[Float[Array, "B K 2"], Float[Array, "B E"]]:
        """(keypoints, expression code); the code is [B, 0] when `expression_dim` is 0."""
        x = self._features(frames)
        heat = self._heatmaps(x)
        grid = coordinate_grid(heat.shape[1], heat.shape[2])
        kp = jnp.einsum("bhwk,hwc->bkc", heat, grid)
        if self.expression is None:
            return kp, jnp.zeros((frames.shape[0], 0), jnp.float32)
        b, h, w, c = x.shape
        attention = jax.nn.softmax(self.attend(x).reshape(b, h * w, -1).astype(jnp.float32), axis=1)
        pooled = jnp.einsum("bpe,bpc->bec", attention.astype(x.dtype), x.reshape(b, h * w, c))
        return kp, jnp.tanh(self.expression(pooled.reshape(b, -1))).astype(jnp.float32)

    def __call__(self, frames: Float[Array, "B S S 3"]) -> Float[Array, "B K 2"]:
        return self.detect(frames)[0]


__all__ = ["KeypointDetector"]
