"""The talking-face generator's sizes (`config.empatheia.face`).

    cfg = FaceConfig.from_dict(config.empatheia.face)   # unknown keys are errors that name the key

Video: `size`×`size` RGB frames at `fps`. Motion: `num_keypoints` learned keypoints per frame and an
`expression_dim` expression code, as offsets from the portrait's own (`[T, 2K + E]`: x, y in [-1, 1] image
coordinates, then the code), so a motion sequence carries no face shape and drives any portrait. Audio: the speech
generator's log-mel (`sample_rate`, `n_fft`, `hop`, `n_mels`, `fmin`, `fmax`; the same feature, so a reply's
generated mel drives the face without a second analysis).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from merg_jax.config_sections import from_section


@dataclasses.dataclass(frozen=True)
class FaceConfig:
    # video
    size: int = 96
    fps: float = 25.0
    # renderer: keypoint detector, dense motion, warping generator
    num_keypoints: int = 10
    expression_dim: int = 8  # a code for what keypoints cannot move (an opening mouth, closing eyes); 0: none
    detector_size: int = 48  # the keypoint detector's input resolution
    detector_channels: int = 16
    kp_temperature: float = 0.1
    kp_variance: float = 0.01  # of the Gaussian heatmaps the dense-motion network reads
    motion_size: int = 24  # resolution of the dense motion field (size / 4)
    channels: tuple[int, ...] = (16, 32, 64)  # generator widths at size, size/2, size/4
    blocks: int = 2  # residual blocks at size/4
    half_blocks: int = 1  # residual blocks at size/2 (the mouth's detail: teeth, lip edges)
    change_weight: float = 4.0  # the reconstruction loss's extra weight on pixels that differ between the two frames
    code_flow: float = 0.1  # the largest flow the expression code adds to the keypoints' (image half-widths); 0: none
    code_spread: float = 0.1  # each changing code number's least spread (std over a batch) between two frames
    # The code's first `static_dim` numbers are trained to stay constant within a clip and differ between clips
    # (a contrastive term on their offset from the avatar's portrait): an emotion's brows, eyes and blush hold for
    # a whole clip while the mouth moves, and left to the reconstruction loss the mouth takes the whole code.
    static_dim: int = 0
    clip_weight: float = 0.05  # weight of that same-clip contrastive term
    clip_temperature: float = 0.05  # its logits are −(squared distance) / temperature
    # Weight of a 7-way emotion cross-entropy on the static offset of clips with an annotated speaker emotion (a
    # linear head; 0: none). Same-clip contrast alone separates clips by whatever differs between them: on run r5
    # the static offsets told 7 emotions apart for 33 % of test clips (chance 14 %) and two numbers were dead.
    emotion_weight: float = 0.0
    # audio (the speech generator's log-mel)
    sample_rate: int = 16000
    n_fft: int = 1024
    hop: int = 256
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0
    # audio content encoder: mel -> one vector per video frame (C^v's target)
    content_dim: int = 32
    content_hidden: int = 128
    content_layers: int = 4
    # style encoder: a reference clip's motion -> a style code (S^v's target); a label route for emotion+intensity
    style_dim: int = 32
    style_hidden: int = 128
    style_layers: int = 3
    style_frames: int = 64
    # motion generator: a diffusion transformer over windows of `window` frames
    dim: int = 128
    layers: int = 3
    heads: int = 4
    window: int = 64
    overlap: int = 16
    diffusion_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    sample_steps: int = 10  # DDIM steps
    guidance: float = 1.5  # classifier-free guidance scale on style
    null_style_prob: float = 0.1
    max_frames: int = 256  # video frames per training clip for the motion generator (longer clips are left out)

    def __post_init__(self):
        if self.size % 4 or self.motion_size * 4 != self.size:
            raise ValueError(f"empatheia.face: size={self.size} must be 4 × motion_size={self.motion_size}")
        if len(self.channels) != 3:
            raise ValueError(f"empatheia.face.channels={self.channels}: expected three widths (size, /2, /4)")
        if self.dim % self.heads:
            raise ValueError(f"empatheia.face: dim={self.dim} is not divisible by heads={self.heads}")
        if not 0 <= self.overlap < self.window // 2 + 1:
            raise ValueError(f"empatheia.face: overlap={self.overlap} must be in [0, window/2]")
        if self.emotion_weight < 0 or (self.emotion_weight and not self.static_dim):
            raise ValueError(f"empatheia.face.emotion_weight={self.emotion_weight}: expected >= 0, and static_dim > 0 "
                             f"for it to act on")
        if not 0 <= self.static_dim <= self.expression_dim:
            raise ValueError(f"empatheia.face.static_dim={self.static_dim}: expected 0..expression_dim="
                             f"{self.expression_dim}")
        if self.sample_steps < 1 or self.sample_steps > self.diffusion_steps:
            raise ValueError(f"empatheia.face.sample_steps={self.sample_steps}: expected 1..diffusion_steps")

    @property
    def motion_dim(self) -> int:
        """Per frame: the keypoints' offsets (2K) then the expression code's offset (expression_dim)."""
        return 2 * self.num_keypoints + self.expression_dim

    @property
    def mel_fps(self) -> float:
        return self.sample_rate / self.hop

    def mel_frames(self, video_frames: int) -> int:
        """Mel frames that cover `video_frames` video frames (the centred STFT adds one)."""
        return int(math.ceil(video_frames * self.mel_fps / self.fps)) + 1

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> FaceConfig:
        return from_section(cls, d, "empatheia.face", channels=lambda c: tuple(int(x) for x in c))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["channels"] = list(self.channels)
        return d
