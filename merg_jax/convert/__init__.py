"""Checkpoints ⇄ merg_jax models: Hugging Face LLaMA ⇄ `Llm`; the `CLIPVisionModel` / `ASTModel` towers →
`VisionEncoder` / `AudioEncoder` (`load_hf_clip_vision`, `load_hf_ast`); ImageBind's vision and audio trunks →
the same towers (`load_imagebind`); a `SpeechT5HifiGan` vocoder directory → `HifiGan` (`load_hf_hifigan`).

`load_hf_llama(path, mesh=..., dtype=..., **overrides) -> (model, config)` imports, sharded by the rule table
and read slice by slice; `save_hf_llama(model, path)` exports (LoRA merged, atomic, optionally sharded). The
Hugging Face importers read safetensors only (no torch, no pickle). `load_imagebind` also takes the released
`imagebind_huge.pth`, read with `torch.load(weights_only=True)` (tensors only, no arbitrary code) when torch
is installed; a safetensors copy of it needs no torch.
"""

from merg_jax.convert.hf_encoders import load_hf_ast, load_hf_clip_vision
from merg_jax.convert.hifigan import load_hf_hifigan
from merg_jax.convert.imagebind import load_imagebind
from merg_jax.convert.hf_llama import (
    checkpoint_tensors,
    llm_config_from_hf,
    llm_config_to_hf,
    load_hf_llama,
    read_hf_config,
    save_hf_llama,
)

__all__ = ["checkpoint_tensors", "llm_config_from_hf", "llm_config_to_hf", "load_hf_ast", "load_hf_clip_vision",
           "load_hf_hifigan", "load_hf_llama", "load_imagebind", "read_hf_config", "save_hf_llama"]
