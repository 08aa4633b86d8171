"""Inference: text decoding with a KV cache (`generate`) and the `merg-jax generate` command."""

from merg_jax.infer.generate import GenerateOutput, generate, generate_with_info, left_pad
from merg_jax.infer.sampling import SamplingConfig, sample_logits, top_k_filter, top_p_filter, warp_logits

__all__ = ["GenerateOutput", "SamplingConfig", "generate", "generate_with_info", "left_pad", "sample_logits", "top_k_filter",
           "top_p_filter", "warp_logits"]
