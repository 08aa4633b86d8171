"""Training: the optimiser, the LM loss and jitted step, batching, and the loop (`train_llm`).

Planned (later issues): the multi-stage Empatheia trainer (CoE learning, content consistency, style alignment,
style consistency), orbax checkpoints with the data iterator state, grain pipelines and metrics logging.
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

__all__ = [
    "BATCH_KEYS", "BatchIterator", "LmExample", "ProgressLogger", "build_model", "builtin_batches", "eval_loss",
    "lm_loss", "make_optimizer", "make_schedule", "pack_examples", "prompt_completion_example", "shard_batch",
    "train_llm", "train_step", "trainable_filter",
]
