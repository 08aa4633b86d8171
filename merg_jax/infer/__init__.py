"""Inference: text decoding with a KV cache (`generate`, `merg-jax generate`), Empatheia's replies (`reply`),
`respond` (one dialogue turn → reply.json, `merg-jax respond`) and model loading / bundles (`bundle`,
`merg-jax export`). The Empatheia modules are imported on use: `from merg_jax.infer.respond import respond`."""

from merg_jax.infer.generate import GenerateOutput, generate, generate_with_info, left_pad
from merg_jax.infer.sampling import SamplingConfig, sample_logits, top_k_filter, top_p_filter, warp_logits

__all__ = ["GenerateOutput", "SamplingConfig", "generate", "generate_with_info", "left_pad", "sample_logits", "top_k_filter",
           "top_p_filter", "warp_logits"]
