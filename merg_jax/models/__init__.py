"""NNX models: the LLaMA-family LLM and the media encoders (CLIP-style vision, AST-style audio)."""

from merg_jax.models.encoders import AudioConfig, AudioEncoder, EncoderOutput, VisionConfig, VisionEncoder
from merg_jax.models.kv_cache import KVCache
from merg_jax.models.llm import Llm, LlmOutput
from merg_jax.models.llm_config import LlmConfig

__all__ = ["AudioConfig", "AudioEncoder", "EncoderOutput", "KVCache", "Llm", "LlmConfig", "LlmOutput",
           "VisionConfig", "VisionEncoder"]
