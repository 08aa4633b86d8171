"""NNX models."""

from merg_jax.models.kv_cache import KVCache
from merg_jax.models.llm import Llm, LlmOutput
from merg_jax.models.llm_config import LlmConfig

__all__ = ["KVCache", "Llm", "LlmConfig", "LlmOutput"]
