"""The training loop of the LLM backbone (the text stage): model on the mesh, optimiser, batches, progress.

`train_llm(config)` is what the `merg-jax train` command and the tests call. Later stages (CoE learning with
media, CS/SD training) reuse its pieces: `build_model`, `make_optimizer`/`trainable_filter`, `train_step`,
`ProgressLogger`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator

import jax
import ml_collections
import numpy as np
from flax import nnx

from merg_jax.config import llm_config
from merg_jax.data import ByteTokenizer, builtin_exchanges
from merg_jax.models import Llm, LlmConfig
from merg_jax.sharding import create_sharded, make_mesh
from merg_jax.train.batching import BatchIterator, pack_examples, prompt_completion_example, shard_batch
from merg_jax.train.optimizer import make_optimizer, make_schedule, trainable_filter
from merg_jax.train.progress import ProgressLogger  # noqa: F401 - re-exported
from merg_jax.train.step import train_step

log = logging.getLogger(__name__)


def build_model(model_cfg: LlmConfig, mesh: jax.sharding.Mesh, seed: int = 0) -> Llm:
    """A freshly initialised `Llm`, every parameter created directly in its shard on `mesh`."""
    return create_sharded(lambda: Llm(model_cfg, rngs=nnx.Rngs(seed)), mesh)


def builtin_batches(config: ml_collections.ConfigDict, tokenizer: ByteTokenizer | None = None) -> BatchIterator:
    """Batches of the built-in empathetic-dialogue corpus, packed to `config.train.seq_len`."""
    tokenizer = tokenizer or ByteTokenizer()
    examples = [prompt_completion_example(tokenizer, ex.prompt, ex.completion) for ex in builtin_exchanges()]
    rows = pack_examples(examples, int(config.train.seq_len), pad_id=tokenizer.pad_id)
    return BatchIterator(rows, int(config.train.batch_size), seed=int(config.seed))


def check_batch_divides_mesh(batch_size: int, mesh: jax.sharding.Mesh) -> None:
    shape = dict(zip(mesh.axis_names, mesh.devices.shape))
    ways = shape.get("data", 1) * shape.get("fsdp", 1)
    if batch_size % ways:
        raise ValueError(f"train.batch_size={batch_size} must be divisible by the data-parallel mesh size "
                         f"data×fsdp = {ways} (mesh {shape})")


def train_llm(config: ml_collections.ConfigDict, *, model: Llm | None = None,
              batches: Iterator[dict[str, np.ndarray]] | None = None, mesh: jax.sharding.Mesh | None = None,
              emit: Callable[[str], None] | None = None) -> tuple[Llm, list[dict[str, float]]]:
    """Trains the LLM for `config.train.steps` steps; returns the model and one metrics dict per step
    (`step`, `loss`, `grad_norm`, `learning_rate`, `num_tokens`, `step_time`).

    model: train this model (e.g. imported weights, already on `mesh`) instead of a new one from
    `config.model`. batches: an iterator of host batches (`BATCH_KEYS`, `[train.batch_size, train.seq_len]`);
    default: the built-in corpus. mesh: default `make_mesh(config.mesh)` over all devices. emit: where progress
    lines go (default: this module's logger at INFO).

    `train.lora_only` trains only the LoRA adapters (`nnx.LoRAParam`), leaving the base weights untouched.
    """
    emit = emit or log.info
    tc = config.train
    steps = int(tc.steps)
    if steps < 1:
        raise ValueError(f"train.steps={steps} must be >= 1")
    mesh = mesh if mesh is not None else make_mesh(config.mesh)
    check_batch_divides_mesh(int(tc.batch_size), mesh)
    if model is None:
        model = build_model(llm_config(config), mesh, seed=int(config.seed))
    cfg = model.cfg
    if batches is None:
        if cfg.vocab_size < ByteTokenizer.vocab_size:
            raise ValueError(f"model.vocab_size={cfg.vocab_size} is smaller than the byte tokenizer's "
                             f"{ByteTokenizer.vocab_size} ids")
        batches = builtin_batches(config)
    if int(tc.seq_len) > cfg.max_position_embeddings:
        raise ValueError(f"train.seq_len={tc.seq_len} exceeds model.max_position_embeddings="
                         f"{cfg.max_position_embeddings}")
    lora_only = bool(tc.get("lora_only", False))
    if lora_only and not cfg.lora_rank:
        raise ValueError("train.lora_only=True needs LoRA adapters: set model.lora_rank > 0")

    schedule = make_schedule(tc)
    use_dropout = cfg.lora_rank > 0 and cfg.lora_dropout > 0
    dropout_key = jax.random.key(int(tc.get("dropout_seed", 0)))
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    n_train = sum(x.size for x in jax.tree.leaves(nnx.state(model, trainable_filter(lora_only))))
    shape = dict(zip(mesh.axis_names, mesh.devices.shape))
    emit(f"training {n_train:,} of {n_params:,} parameters for {steps} steps, batch {tc.batch_size} × "
         f"{tc.seq_len} tokens, mesh {shape} on {jax.device_count()} {jax.devices()[0].platform} device(s)")

    history: list[dict[str, float]] = []
    with jax.set_mesh(mesh):
        optimizer = nnx.Optimizer(model, make_optimizer(tc), wrt=trainable_filter(lora_only))
        progress = ProgressLogger(steps, int(tc.batch_size) * int(tc.seq_len), max(1, int(tc.log_every)), emit)
        for step in range(steps):
            batch = shard_batch(next(batches), mesh)
            rng = jax.random.fold_in(dropout_key, step) if use_dropout else None
            t0 = time.perf_counter()
            metrics = train_step(model, optimizer, batch, rng)
            # Block on every step: unblocked dispatch of many sharded steps can deadlock CPU collectives.
            metrics = jax.block_until_ready(metrics)
            now = time.perf_counter()
            row = {"step": step + 1, "loss": float(metrics["loss"]), "grad_norm": float(metrics["grad_norm"]),
                   "learning_rate": float(schedule(step)), "num_tokens": float(metrics["num_tokens"]),
                   "step_time": now - t0}
            if not math.isfinite(row["loss"]):
                raise FloatingPointError(f"step {step + 1}: loss is {row['loss']}")
            history.append(row)
            progress.step_done(step + 1, row, now)
    return model, history
