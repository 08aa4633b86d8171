"""FLOPs of one stage-a (coe) training row, counted term by term.

    f = coe_flops(config, empatheia_cfg)
    f.model_per_row        # the FLOPs MFU is measured against (no recomputation)
    f.hardware_per_row     # what the chips execute: + the attention forward that remat recomputes

Notation: T tokens per row, N_mm the LLM's matmul weights (7 projections per layer and the LM head; the embedding is
a gather, not a matmul), N_lora the LoRA adapters, the only LLM weights stage a trains.

- forward: 2·N·T for N = N_mm + N_lora.
- backward, activation gradients: 2·N·T. The gradient must reach the media projections below the first layer, so
  every layer — frozen weights included — multiplies its output cotangent by its weights.
- backward, weight gradients: 2·N_lora·T only. A frozen weight needs no gradient, so the frozen base skips this
  matmul: the LLM costs ≈ 4·N·T, not the 6·N·T of full fine-tuning.
- attention: QKᵀ and AV are 4·T²·(Hq·hd) per layer forward, halved by the causal mask (MaxText counts causal
  attention the same way since July 2025); backward is twice the forward.
- media projections (1024 → 4096 per clip): forward and weight gradient; their input comes from frozen towers, so
  no activation gradient.
- frozen towers: forward only, every clip slot of the fixed-shape batch (`data.max_clips`, the video's
  `frames / tubelet_size` tubelets, the audio's `audio_windows` windows), patch embedding, layers with their
  (bidirectional) attention, embedding head.

`dots_no_batch` does not keep the attention kernel's output, so its forward runs again in the backward pass:
`hardware_per_row` includes that; `model_per_row` (what MFU divides) does not, as MFU conventionally excludes
recomputation.
"""

from __future__ import annotations

import dataclasses

from merg_jax.models.llm_config import LlmConfig


@dataclasses.dataclass(frozen=True)
class RowFlops:
    tokens: int
    llm_forward: float
    llm_activation_grads: float
    llm_weight_grads: float
    attention: float  # forward + backward, causal
    projections: float
    towers_forward: float
    attention_recompute: float  # remat: the attention forward again (hardware only)
    n_matmul: int
    n_lora: int

    @property
    def model_per_row(self) -> float:
        return (self.llm_forward + self.llm_activation_grads + self.llm_weight_grads + self.attention
                + self.projections + self.towers_forward)

    @property
    def hardware_per_row(self) -> float:
        return self.model_per_row + self.attention_recompute

    def describe(self) -> list[tuple[str, float]]:
        return [("LLM forward (2·N·T)", self.llm_forward),
                ("LLM backward, activation gradients (2·N·T, frozen weights too)", self.llm_activation_grads),
                ("LLM backward, weight gradients (2·N_lora·T, LoRA only)", self.llm_weight_grads),
                ("attention QKᵀ and AV, causal (forward + backward)", self.attention),
                ("media projections (forward + weight gradients)", self.projections),
                ("frozen towers (forward only)", self.towers_forward)]


def llm_matmul_params(cfg: LlmConfig) -> tuple[int, int]:
    """(N_mm, N_lora): the LLM's matmul weights (layers and LM head, no embedding gather) and its LoRA adapters."""
    d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_heads * hd, cfg.num_kv_heads * hd
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * f
    n_mm = cfg.num_layers * per_layer + d * cfg.vocab_size  # the LM head (or the tied embedding used as one)
    io = {"q": (d, q), "k": (d, kv), "v": (d, kv), "o": (q, d), "gate": (d, f), "up": (d, f), "down": (f, d)}
    n_lora = cfg.num_layers * sum(cfg.lora_rank * sum(io[t]) for t in cfg.lora_targets) if cfg.lora_rank else 0
    return n_mm, n_lora


def _encoder_layers_flops(tower, tokens: int) -> float:
    """Forward FLOPs of a transformer tower's layers on one input of `tokens` tokens (bidirectional attention)."""
    h, i = tower.hidden_size, tower.intermediate_size
    return tower.num_layers * (2 * tokens * (4 * h * h + 2 * h * i) + 4 * tokens * tokens * h)


def vision_flops_per_clip(vision, frames: int) -> float:
    """ImageBind / CLIP vision tower, forward, one clip of `frames` frames (tubelets of `tubelet_size`)."""
    steps = max(frames // vision.tubelet_size, 1)
    patch = 2 * vision.num_patches * vision.patch_size ** 2 * vision.num_channels * vision.tubelet_size * \
        vision.hidden_size
    head = 2 * vision.hidden_size * vision.projection_dim
    return steps * (patch + _encoder_layers_flops(vision, vision.num_tokens) + head)


def audio_flops_per_clip(audio, windows: int) -> float:
    """ImageBind / AST audio tower, forward, one clip embedded as `windows` windows."""
    patch = 2 * audio.num_patches * audio.patch_size ** 2 * audio.hidden_size
    head = 2 * audio.hidden_size * audio.projection_dim
    return windows * (patch + _encoder_layers_flops(audio, audio.num_tokens) + head)


def coe_flops(config, ecfg) -> RowFlops:
    """Stage a's FLOPs per row for a merg_jax config (`data`, `train`) and its `EmpatheiaConfig`."""
    cfg = ecfg.llm
    data = config.data
    tokens = int(data.get("seq_len", 0) or config.train.seq_len) + ecfg.features.signal_tokens
    n_mm, n_lora = llm_matmul_params(cfg)
    n = n_mm + n_lora
    q = cfg.num_heads * cfg.head_dim
    attn_fwd = cfg.num_layers * 4 * tokens * tokens * q / 2  # causal: half the score matrix
    clips = int(data.get("max_clips", 0) or 0)
    towers, proj = 0.0, 0.0
    video_frames = int(data.video.get("frames", 0) or 0) if data.get("video") else 0
    audio_frames = int(data.audio.get("frames", 0) or 0) if data.get("audio") else 0
    if ecfg.vision is not None and video_frames and clips:
        towers += clips * vision_flops_per_clip(ecfg.vision, video_frames)
        proj += clips * 2 * 2 * ecfg.vision.embedding_dim * cfg.hidden_size * ecfg.projection.num_tokens
    if ecfg.audio is not None and audio_frames and clips:
        towers += clips * audio_flops_per_clip(ecfg.audio, ecfg.audio_windows)
        proj += clips * 2 * 2 * ecfg.audio.embedding_dim * cfg.hidden_size * ecfg.projection.num_tokens
    return RowFlops(tokens=tokens, llm_forward=2.0 * n * tokens, llm_activation_grads=2.0 * n * tokens,
                    llm_weight_grads=2.0 * n_lora * tokens, attention=3 * attn_fwd, projections=proj,
                    towers_forward=towers, attention_recompute=attn_fwd if cfg.remat != "none" else 0.0,
                    n_matmul=n_mm, n_lora=n_lora)


__all__ = ["RowFlops", "audio_flops_per_clip", "coe_flops", "llm_matmul_params", "vision_flops_per_clip"]
