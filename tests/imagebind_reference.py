"""A small PyTorch re-implementation of ImageBind's vision and audio paths (facebookresearch/ImageBind:
`imagebind/models/imagebind_model.py`, `multimodal_preprocessors.py`, `transformer.py`, `helpers.py`), written from
that source with the same module nesting, so `state_dict()` names are exactly ImageBind's for these modalities:

    preprocessor (stem → class token → + pos_embed) → trunk (pre-transformer layer, blocks) → head → postprocessor

Only what the vision and audio paths run is kept: no depth/text/thermal/IMU, no drop-path or dropout (eval mode),
no position-embedding interpolation (inputs have the trained size). `ImageBindReference.forward(inputs)` is
`ImageBindModel.forward` (inputs with ≥ 5 dims are several clips per sample, embedded and averaged);
`ImageBindReference.tower(modality, x)` also returns the trunk's tokens for comparisons.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn


@dataclasses.dataclass(frozen=True)
class ReferenceConfig:
    """`ImageBindModel.__init__`'s arguments for the vision and audio towers (+ image size, audio scale)."""

    vision_embed_dim: int = 32
    vision_num_blocks: int = 2
    vision_num_heads: int = 4
    kernel_size: tuple[int, int, int] = (2, 4, 4)
    video_frames: int = 2
    image_size: int = 16
    audio_embed_dim: int = 32
    audio_num_blocks: int = 2
    audio_num_heads: int = 4
    audio_kernel_size: int = 4
    audio_stride: int = 3
    audio_num_mel_bins: int = 16
    audio_target_len: int = 22
    out_embed_dim: int = 24
    audio_logit_scale: float = 20.0

    @classmethod
    def huge(cls) -> ReferenceConfig:
        """`imagebind_huge()`'s vision and audio towers."""
        return cls(vision_embed_dim=1280, vision_num_blocks=32, vision_num_heads=16, kernel_size=(2, 14, 14),
                   video_frames=2, image_size=224, audio_embed_dim=768, audio_num_blocks=12, audio_num_heads=12,
                   audio_kernel_size=16, audio_stride=10, audio_num_mel_bins=128, audio_target_len=204,
                   out_embed_dim=1024, audio_logit_scale=20.0)


# ---- helpers.py


class Normalize(nn.Module):
    def forward(self, x):
        return nn.functional.normalize(x, dim=-1, p=2)


class LearnableLogitScaling(nn.Module):
    def __init__(self, logit_scale_init: float, learnable: bool = False, max_logit_scale: float = 100):
        super().__init__()
        self.max_logit_scale = max_logit_scale
        log_logit_scale = torch.ones([]) * np.log(logit_scale_init)
        if learnable:
            self.log_logit_scale = nn.Parameter(log_logit_scale)
        else:
            self.register_buffer("log_logit_scale", log_logit_scale)

    def forward(self, x):
        return torch.clip(self.log_logit_scale.exp(), max=self.max_logit_scale) * x


class Rearrange(nn.Module):
    """EinOpsRearrange("b l d -> l b d") and back: a swap of the first two axes."""

    def forward(self, x):
        return x.transpose(0, 1)


class SelectElement(nn.Module):
    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def forward(self, x):
        return x[:, self.index, ...]


# ---- multimodal_preprocessors.py


class PadIm2Video(nn.Module):
    """An image [B, C, H, W] → a video [B, C, ntimes, H, W] by repetition (pad_type="repeat", time_dim=2)."""

    def __init__(self, ntimes: int):
        super().__init__()
        self.ntimes = ntimes

    def forward(self, x):
        if x.ndim == 4:
            x = x.unsqueeze(2)
        if x.shape[2] == 1:
            x = x.repeat(1, 1, self.ntimes, 1, 1)
        return x


class PatchEmbedGeneric(nn.Module):
    def __init__(self, proj_stem, norm_layer=None):
        super().__init__()
        # one-layer stems are stored unwrapped ("rgbt_stem.proj.weight"), as ImageBind does for its audio stem
        self.proj = nn.Sequential(*proj_stem) if len(proj_stem) > 1 else proj_stem[0]
        self.norm_layer = norm_layer

    def get_patch_layout(self, img_size):
        with torch.no_grad():
            out = self.proj(torch.zeros([1] + list(img_size)))
        return tuple(out.shape[2:]), int(np.prod(out.shape[2:])), out.shape[1]

    def forward(self, x):
        x = self.proj(x).flatten(2).transpose(1, 2)  # B C (T) H W → B (T)HW C
        return self.norm_layer(x) if self.norm_layer is not None else x


class SpatioTemporalPosEmbeddingHelper(nn.Module):
    def __init__(self, num_tokens: int, embed_dim: int):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))


class RGBDTPreprocessor(nn.Module):
    """Stem → class token first → + learned position embeddings (one class token)."""

    def __init__(self, rgbt_stem: PatchEmbedGeneric, img_size):
        super().__init__()
        _, num_patches, embed_dim = rgbt_stem.get_patch_layout(img_size)
        self.rgbt_stem = rgbt_stem
        self.pos_embedding_helper = SpatioTemporalPosEmbeddingHelper(1 + num_patches, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))

    def forward(self, x):
        tokens = self.rgbt_stem(x)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        assert tokens.shape[1] == self.pos_embedding_helper.pos_embed.shape[1], "no interpolation here"
        return tokens + self.pos_embedding_helper.pos_embed


# ---- transformer.py


class MultiheadAttention(nn.MultiheadAttention):
    def forward(self, x, attn_mask=None):
        return super().forward(x, x, x, need_weights=False, attn_mask=attn_mask)[0]


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class BlockWithMasking(nn.Module):
    def __init__(self, dim: int, num_heads: int, add_bias_kv: bool):
        super().__init__()
        self.attn = MultiheadAttention(embed_dim=dim, num_heads=num_heads, bias=True, add_bias_kv=add_bias_kv)
        self.norm_1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.norm_2 = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x, attn_mask=None):
        x = x + self.attn(self.norm_1(x), attn_mask)
        return x + self.mlp(self.norm_2(x))


class SimpleTransformer(nn.Module):
    """Tokens [B, L, D] → pre-transformer layer (LayerNorm or Identity, then to [L, B, D]) → blocks → [B, L, D]."""

    def __init__(self, dim: int, num_blocks: int, num_heads: int, pre_transformer_ln: bool, add_bias_kv: bool):
        super().__init__()
        self.pre_transformer_layer = nn.Sequential(nn.LayerNorm(dim, eps=1e-6) if pre_transformer_ln
                                                   else nn.Identity(), Rearrange())
        self.blocks = nn.Sequential(*[BlockWithMasking(dim, num_heads, add_bias_kv) for _ in range(num_blocks)])
        self.post_transformer_layer = Rearrange()

    def forward(self, tokens, attn_mask=None):
        tokens = self.pre_transformer_layer(tokens)
        for blk in self.blocks:
            tokens = blk(tokens, attn_mask=attn_mask)
        return self.post_transformer_layer(tokens)


# ---- imagebind_model.py


class ImageBindReference(nn.Module):
    def __init__(self, cfg: ReferenceConfig = ReferenceConfig()):
        super().__init__()
        self.cfg = cfg
        dv, da = cfg.vision_embed_dim, cfg.audio_embed_dim
        rgbt_stem = PatchEmbedGeneric([PadIm2Video(ntimes=2),
                                       nn.Conv3d(3, dv, kernel_size=cfg.kernel_size, stride=cfg.kernel_size,
                                                 bias=False)])
        audio_stem = PatchEmbedGeneric([nn.Conv2d(1, da, kernel_size=cfg.audio_kernel_size, stride=cfg.audio_stride,
                                                  bias=False)], norm_layer=nn.LayerNorm(da))
        self.modality_preprocessors = nn.ModuleDict({
            "vision": RGBDTPreprocessor(rgbt_stem, [3, cfg.video_frames, cfg.image_size, cfg.image_size]),
            "audio": RGBDTPreprocessor(audio_stem, [1, cfg.audio_num_mel_bins, cfg.audio_target_len]),
        })
        self.modality_trunks = nn.ModuleDict({
            "vision": SimpleTransformer(dv, cfg.vision_num_blocks, cfg.vision_num_heads, True, False),
            "audio": SimpleTransformer(da, cfg.audio_num_blocks, cfg.audio_num_heads, False, True),
        })
        self.modality_heads = nn.ModuleDict({
            m: nn.Sequential(nn.LayerNorm(d, eps=1e-6), SelectElement(0), nn.Linear(d, cfg.out_embed_dim, bias=False))
            for m, d in (("vision", dv), ("audio", da))})
        self.modality_postprocessors = nn.ModuleDict({
            "vision": Normalize(),
            "audio": nn.Sequential(Normalize(), LearnableLogitScaling(cfg.audio_logit_scale, learnable=False)),
        })

    def tower(self, modality: str, x) -> dict[str, torch.Tensor]:
        """One batch of single clips → {"trunk": trunk output [B, N, D], "normed": the head's LayerNorm of it,
        "embedding": the postprocessed embedding [B, E]}."""
        trunk = self.modality_trunks[modality](self.modality_preprocessors[modality](x))
        head = self.modality_heads[modality]
        return {"trunk": trunk, "normed": head[0](trunk),
                "embedding": self.modality_postprocessors[modality](head(trunk))}

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = {}
        for modality, value in inputs.items():
            reduce_list = value.ndim >= 5  # audio and video inputs consist of several clips
            if reduce_list:
                b, s = value.shape[:2]
                value = value.reshape(b * s, *value.shape[2:])
            value = self.tower(modality, value)["embedding"]
            if reduce_list:
                value = value.reshape(b, s, -1).mean(dim=1)
            outputs[modality] = value
        return outputs
