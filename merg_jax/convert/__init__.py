"""Hugging Face checkpoints (local safetensors directories) ⇄ merg_jax models: LLaMA ⇄ `Llm`, and the
`CLIPVisionModel` / `ASTModel` towers → `VisionEncoder` / `AudioEncoder` (`load_hf_clip_vision`, `load_hf_ast`).

`load_hf_llama(path, mesh=..., dtype=..., **overrides) -> (model, config)` imports, sharded by the rule table
and read slice by slice; `save_hf_llama(model, path)` exports (LoRA merged, atomic, optionally sharded). No torch,
no pickle: only safetensors are read.
"""

from merg_jax.convert.hf_encoders import load_hf_ast, load_hf_clip_vision
from merg_jax.convert.imagebind import load_imagebind
from merg_jax.convert.hf_llama import (
    checkpoint_tensors,
    llm_config_from_hf,
    llm_config_to_hf,
    load_hf_llama,
    read_hf_config,
    save_hf_llama,
)

__all__ = ["checkpoint_tensors", "load_imagebind", "load_hf_ast", "load_hf_clip_vision", "llm_config_from_hf", "llm_config_to_hf", "load_hf_llama", "read_hf_config",
           "save_hf_llama"]
