"""Training: the staged trainer of Empatheia (`train_stages`: merg_jax/train/trainer.py, docs/training.md) and the
LLM-only loop of configs/tiny.py (`train_llm`), with their shared optimiser, batching and progress lines.

    from merg_jax.config import load_config
    from merg_jax.train import train_stages
    result = train_stages(load_config("configs/empatheia_tiny.py", ["--config.train.steps=2"]))
"""

from merg_jax.train.batching import (
    BATCH_KEYS,
    BatchIterator,
    LmExample,
    pack_examples,
    prompt_completion_example,
    shard_batch,
)
from merg_jax.train.loop import ProgressLogger, build_model, builtin_batches, train_llm
from merg_jax.train.optimizer import make_optimizer, make_schedule, trainable_filter
from merg_jax.train.step import eval_loss, lm_loss, train_step
from merg_jax.train.stages import STAGES, Stage, StageLoss, parse_stages, register
from merg_jax.train.trainer import StagedTrainer, TrainingError, TrainResult, train_stages

__all__ = [
    "BATCH_KEYS", "BatchIterator", "LmExample", "ProgressLogger", "build_model", "builtin_batches", "eval_loss",
    "lm_loss", "make_optimizer", "make_schedule", "pack_examples", "prompt_completion_example", "shard_batch",
    "train_llm", "train_step", "trainable_filter", "STAGES", "Stage", "StageLoss", "StagedTrainer", "TrainResult",
    "TrainingError", "parse_stages", "register", "train_stages",
]
