"""NNX models: the LLaMA-family LLM, the media encoders (CLIP / ImageBind vision, AST / ImageBind audio), and the
Empatheia core that wires them with the projections, the Content Synchronizer and the Style Disentangler."""

from merg_jax.models.disentangler import DisentanglerConfig, StyleClassifiers, StyleDisentangler
from merg_jax.models.empatheia import Empatheia, EmpatheiaConfig, EmpatheiaOutput
from merg_jax.models.encoders import AudioConfig, AudioEncoder, EncoderOutput, VisionConfig, VisionEncoder
from merg_jax.models.hidden_features import HiddenFeatureConfig, HiddenFeatures
from merg_jax.models.kv_cache import KVCache
from merg_jax.models.llm import Llm, LlmOutput
from merg_jax.models.llm_config import LlmConfig
from merg_jax.models.param_groups import GROUPS, STAGES, group_filter, param_counts, stage_filter
from merg_jax.models.projectors import ProjectionConfig
from merg_jax.models.synchronizer import ContentSynchronizer, SynchronizerConfig

__all__ = ["GROUPS", "STAGES", "AudioConfig", "AudioEncoder", "ContentSynchronizer", "DisentanglerConfig",
           "Empatheia", "EmpatheiaConfig", "EmpatheiaOutput", "EncoderOutput", "HiddenFeatureConfig",
           "HiddenFeatures", "KVCache", "Llm", "LlmConfig", "LlmOutput", "ProjectionConfig", "StyleClassifiers",
           "StyleDisentangler", "SynchronizerConfig", "VisionConfig", "VisionEncoder", "group_filter",
           "param_counts", "stage_filter"]
