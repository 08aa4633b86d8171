"""The staged trainer of Empatheia: `merg-jax train --config configs/empatheia_tiny.py`.

    result = train_stages(config)            # runs config.stages in order; returns the trained model and a summary

For each stage of `config.stages` (a comma-separated string, e.g. "encoders,coe,content,style,style_cls"):

1. settings: `config.train` overridden by `config.stage.<name>` (steps, learning_rate, groups, ...);
   `--config.train.steps=N` (N > 0) overrides every stage's step count;
2. data: the AvaMERG pipeline (`merg_jax.data.pipeline`) decoding only the media groups the stage reads;
3. the model split into what the stage trains (`param_groups.stage_filter`) and the rest, one jitted step
   (`stage_step.make_train_step`: accumulation, non-finite guard);
4. every `log_every` steps a progress line (rate, ETA) and a metrics row (metrics.jsonl, TensorBoard); every
   `eval_every` steps validation on the valid split; every `checkpoint.every_steps` steps and at the end an
   orbax checkpoint (`checkpoints.StageCheckpoints`) holding model, optimiser, step, RNG, stage, data state.

The next stage starts from the previous stage's final model. Running the same command again resumes: the stages
whose final checkpoint exists are skipped (their model is restored), and the first unfinished stage continues
from its newest good checkpoint with its optimiser, data position and RNG, so the logged losses continue exactly
as an uninterrupted run's. A missing `data.tokenizer` is trained first from the training split.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time
import zlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from merg_jax.models.empatheia import Empatheia, EmpatheiaConfig
from merg_jax.models.param_groups import stage_filter
from merg_jax.sharding import create_sharded, make_mesh
from merg_jax.train.batching import place_local_batch
from merg_jax.train.checkpoints import StageCheckpoints
from merg_jax.train.metrics_log import MetricsWriter
from merg_jax.train.optimizer import init_optimizer_state, make_optimizer, make_schedule
from merg_jax.train.progress import ProgressLogger
from merg_jax.train.stage_step import make_eval_step, make_train_step, split_for_stage
from merg_jax.train.stages import MEDIA_GROUPS, Stage, parse_stages

log = logging.getLogger(__name__)

# The keys of config.train a stage section may override (config.stage.<name>.<key>).
STAGE_KEYS = ("steps", "learning_rate", "warmup_frac", "b1", "b2", "weight_decay", "grad_clip", "accum_steps",
              "batch_size", "groups", "eval_every", "log_every")


class TrainingError(RuntimeError):
    """A run that cannot go on (too many non-finite steps in a row, a stage that trains nothing, ...)."""


@dataclasses.dataclass
class TrainResult:
    model: Empatheia
    tokenizer: Any
    summary: dict[str, dict[str, float]]  # stage -> its last logged metrics and validation


# ------------------------------------------------------------------------------------------------ settings


def stage_settings(config: ml_collections.ConfigDict, stage: Stage) -> ml_collections.ConfigDict:
    """`config.train` with `config.stage.<name>` applied; `train.steps > 0` overrides every stage's steps."""
    s = ml_collections.ConfigDict(config.train.to_dict())
    override = (config.get("stage") or {}).get(stage.name) or {}
    unknown = sorted(set(override) - set(STAGE_KEYS))
    if unknown:
        raise ValueError(f"config.stage.{stage.name}: unknown key(s) {unknown}; a stage may set {list(STAGE_KEYS)}")
    for key, value in dict(override).items():
        s[key] = value
    if int(config.train.get("steps", 0) or 0) > 0:
        s.steps = int(config.train.steps)
    if int(s.get("steps", 0) or 0) < 1:
        raise ValueError(f"stage {stage.name}: steps={s.get('steps')} — set config.stage.{stage.name}.steps or "
                         "--config.train.steps")
    groups = s.get("groups") or ",".join(stage.groups)
    s.groups = groups if isinstance(groups, str) else ",".join(groups)
    return s


def stage_data_config(config: ml_collections.ConfigDict, stage: Stage, settings) -> ml_collections.ConfigDict:
    """The `data` section for a stage: only its media groups decoded (others get frames=0), its batch size."""
    out = ml_collections.ConfigDict(config.to_dict())
    for group in MEDIA_GROUPS:
        if group not in stage.media:
            out.data[group].frames = 0
    out.data.batch_size = int(settings.batch_size)
    out.data.seq_len = int(config.data.get("seq_len", 0) or config.train.seq_len)
    return out


def with_compute_dtype(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`train.compute_dtype` ("bfloat16", "float32"; "" leaves each module's own setting) applied to every module's
    activations — the LLM, the towers, the projections, the CS and the SD — while the parameters, the optimiser
    and the gradients stay in their `param_dtype` (float32 master weights)."""
    dtype = str(config.train.get("compute_dtype", "") or "")
    if not dtype:
        return config
    if dtype not in ("bfloat16", "float32", "float16"):
        raise ValueError(f"config.train.compute_dtype={dtype!r}: expected bfloat16, float32 or float16")
    c = ml_collections.ConfigDict(config.to_dict())
    c.model.dtype = dtype
    for section in ("vision", "audio", "projection", "synchronizer", "disentangler"):
        if c.empatheia.get(section):
            c.empatheia[section].dtype = dtype
    return c


def with_resolved_symbols(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`empatheia.speech.symbols="auto"` made concrete ("phonemes" with espeak-ng, else "characters") once, so the
    data, the model and the saved config.json agree on the speech generator's text front end."""
    speech = config.get("empatheia", {}).get("speech")
    if not speech or str(speech.get("symbols", "auto")) != "auto":
        return config
    from merg_jax.data.speech_text import resolve

    c = ml_collections.ConfigDict(config.to_dict())
    c.empatheia.speech.symbols = resolve("auto")
    return c


def stage_groups(settings) -> tuple[str, ...]:
    """The parameter groups a stage trains, from its `stage_settings` (`groups`: a comma-separated string)."""
    return tuple(g.strip() for g in str(settings.groups).split(",") if g.strip())


def step_uses_rng(stage: Stage, model_cfg) -> bool:
    """Whether the stage's step takes a random key: the stage needs one, or LoRA dropout is on."""
    return stage.needs_rng or (model_cfg.llm.lora_rank > 0 and model_cfg.llm.lora_dropout > 0)


# ------------------------------------------------------------------------------------------------ pieces


def ensure_tokenizer(config: ml_collections.ConfigDict, emit: Callable[[str], None]):
    """The tokenizer `data.tokenizer` names; when that directory holds none yet, a byte-level BPE is trained on the
    training split (`data.tokenizer_vocab_size`) and saved there first (by process 0; the others wait for it)."""
    from merg_jax.data.tokenizer import load_tokenizer

    path = pathlib.Path(str(config.data.tokenizer))
    if not (path / "tokenizer.json").exists():
        if jax.process_index() == 0:
            from merg_jax.data.avamerg import read_split
            from merg_jax.data.tokenizer import train_bpe
            from merg_jax.data.tokenizer_cli import training_texts

            t0 = time.perf_counter()
            split = read_split(str(config.data.root), "train", check_media="none")
            if not split.turns:
                raise TrainingError(f"data.root={config.data.root}: the training split has no turns to train the "
                                    "tokenizer on")
            vocab = int(config.data.get("tokenizer_vocab_size", 4096))
            tok = train_bpe(training_texts(split, chain=bool(config.data.chain)), vocab_size=vocab)
            tok.save(path)
            emit(f"trained a {tok.vocab_size}-token BPE on {len(split.turns)} training turns in "
                 f"{time.perf_counter() - t0:.1f} s -> {path}")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("merg_jax tokenizer written")
    return load_tokenizer(path)


def build_model(config: ml_collections.ConfigDict, tokenizer, mesh: jax.sharding.Mesh,
                emit: Callable[[str], None] | None = None) -> Empatheia:
    """A fresh Empatheia from `config` (seeded by `config.seed`), every parameter created in its shard; then the
    weights `config.init` names imported into it (`import_weights`)."""
    cfg = EmpatheiaConfig.from_config(config, tokenizer)
    model = create_sharded(lambda: Empatheia(cfg, rngs=nnx.Rngs(int(config.seed))), mesh)
    try:
        import_weights(model, config, mesh, emit or log.info)
    except ValueError as e:  # a file that does not fit: the run's error, naming the config key and the file
        raise TrainingError(str(e)) from None
    return model


def _same_shapes(what: str, ours, theirs, fields: tuple[str, ...]) -> None:
    bad = [f"{f}: config {getattr(ours, f)} vs file {getattr(theirs, f)}" for f in fields
           if getattr(ours, f) != getattr(theirs, f)]
    if bad:
        raise ValueError(f"{what} does not fit the config's model ({'; '.join(bad)}): set config.model / "
                         "config.empatheia to the checkpoint's shapes")


def import_weights(model: Empatheia, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                   emit: Callable[[str], None]) -> None:
    """`config.init.llm` (a Hugging Face LLaMA directory: Vicuna, LLaMA) into the LLM — its vocabulary grown to
    the config's for the special tokens (`models.vocab.resize_vocab`), LoRA adapters fresh — and
    `config.init.imagebind` (ImageBind's .pth or .safetensors) into the vision and audio towers. In place.
    A file whose shapes do not fit the config's model raises ValueError naming the config key and the file."""
    init = config.get("init") or {}
    for key in ("llm", "imagebind"):
        if init.get(key) and not pathlib.Path(str(init[key])).exists():
            raise FileNotFoundError(f"config.init.{key}={init[key]}: no such file or directory")
    if init.get("llm"):
        from merg_jax.convert import load_hf_llama
        from merg_jax.models.vocab import resize_vocab

        c = model.cfg.llm
        llm, hf = load_hf_llama(init.llm, mesh=mesh, dtype=c.param_dtype, compute_dtype=c.dtype, seed=int(config.seed),
                                lora_rank=c.lora_rank, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                                lora_targets=c.lora_targets, scan_layers=c.scan_layers, remat=c.remat,
                                attention_impl=c.attention_impl, max_position_embeddings=c.max_position_embeddings)
        _same_shapes(f"config.init.llm={init.llm}", c, hf, ("hidden_size", "intermediate_size", "num_layers",
                                                            "num_heads", "num_kv_heads", "head_dim", "tie_embeddings"))
        if hf.vocab_size > c.vocab_size:
            raise ValueError(f"config.init.llm={init.llm}: its vocabulary ({hf.vocab_size}) is larger than "
                             f"config.model.vocab_size={c.vocab_size}")
        llm = resize_vocab(llm, c.vocab_size, mesh=mesh)
        nnx.update(model.llm, nnx.state(llm))
        emit(f"imported the LLM from {init.llm} ({hf.vocab_size} -> {c.vocab_size} vocabulary rows)")
    if init.get("imagebind"):
        from merg_jax.convert import load_imagebind

        vision, audio = model.cfg.vision, model.cfg.audio
        modalities = tuple(m for m, tower in (("vision", model.encoders.vision), ("audio", model.encoders.audio))
                           if tower is not None)
        # What the tensor shapes do not tell (heads, the mel grid) comes from the config; the rest is checked.
        hints = dict(vision_num_heads=vision.num_heads if vision else None,
                     audio_num_heads=audio.num_heads if audio else None)
        if audio is not None:
            hints.update(audio_num_mel_bins=audio.num_mel_bins, audio_target_len=audio.max_length,
                         audio_stride=audio.time_stride)
        towers = load_imagebind(init.imagebind, modalities=modalities, mesh=mesh,
                                dtype=vision.param_dtype if vision else "float32", **hints)
        what = f"config.init.imagebind={init.imagebind}"
        if vision is not None:
            _same_shapes(f"{what} (vision)", vision, towers.vision_config,
                         ("hidden_size", "intermediate_size", "num_layers", "image_size", "patch_size",
                          "tubelet_size", "projection_dim"))
        if audio is not None:
            _same_shapes(f"{what} (audio)", audio, towers.audio_config,
                         ("hidden_size", "intermediate_size", "num_layers", "patch_size", "frequency_stride",
                          "projection_dim"))
        for name in modalities:
            nnx.update(getattr(model.encoders, name), nnx.state(getattr(towers, name)))
        emit(f"imported ImageBind's {' and '.join(modalities)} towers from {init.imagebind}")


def abstract_model(config: ml_collections.ConfigDict, tokenizer, mesh: jax.sharding.Mesh) -> tuple[Any, nnx.State]:
    """(graphdef, abstract state with `mesh` shardings): the restore target of a checkpoint on this mesh."""
    from merg_jax.sharding import state_shardings

    cfg = EmpatheiaConfig.from_config(config, tokenizer)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Empatheia(cfg, rngs=nnx.Rngs(0))))
    shardings = state_shardings(state, mesh)
    state = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s), state, shardings)
    return graphdef, state


def _gather_json(obj: Any) -> list[Any]:
    """`obj` of every process, in process order (each process's data iterator state differs)."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    size = int(np.max(multihost_utils.process_allgather(np.asarray([data.size]))))
    padded = np.zeros(size, np.uint8)
    padded[:data.size] = data
    every = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(row).rstrip(b"\0").decode()) for row in every]


def _gather_rows(x: np.ndarray) -> np.ndarray:
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.asarray(x), tiled=True))


# ------------------------------------------------------------------------------------------------ the trainer


class StagedTrainer:
    """Runs `config.stages` (see the module docstring). `emit`: where progress lines go (default: logging)."""

    def __init__(self, config: ml_collections.ConfigDict, *, mesh: jax.sharding.Mesh | None = None,
                 emit: Callable[[str], None] | None = None):
        self.config = config = with_resolved_symbols(with_compute_dtype(config))
        self.emit = emit or log.info
        self.stages = parse_stages(config.stages)
        self.output_dir = pathlib.Path(str(config.train.output_dir))
        self.mesh = mesh if mesh is not None else make_mesh(config.mesh)
        self.primary = jax.process_index() == 0
        self.tokenizer = ensure_tokenizer(config, self.emit)
        self.targets = None
        if any(s.needs_targets for s in self.stages):
            from merg_jax.train.targets import make_targets

            self.targets = make_targets(config, EmpatheiaConfig.from_config(config, self.tokenizer))
        self.summary: dict[str, dict[str, float]] = {}
        self._global_step = 0
        self._eval_fns: dict[str, Callable] = {}

    def checkpoints(self, stage: Stage) -> StageCheckpoints:
        ck = self.config.checkpoint
        return StageCheckpoints(self.output_dir / "checkpoints" / stage.name, keep=int(ck.keep),
                                metric=stage.metric, mode=stage.mode, async_save=bool(ck.get("async_save", True)))

    # -------------------------------------------------------------------------------------------- resume

    def _resume_point(self):
        """(index of the first stage to run, its restored checkpoint or None, model state to start from or None)."""
        graphdef, abstract = abstract_model(self.config, self.tokenizer, self.mesh)
        last = None
        for i, stage in enumerate(self.stages):
            if not (self.output_dir / "checkpoints" / stage.name).is_dir():
                continue
            if self.primary:
                StageCheckpoints.remove_unfinished(self.output_dir / "checkpoints" / stage.name)
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils

                multihost_utils.sync_global_devices(f"merg_jax unfinished checkpoints of {stage.name} removed")
            ckpt = self.checkpoints(stage)
            if ckpt.steps():
                last = i
            ckpt.close()
        if last is None:
            return 0, None, None
        stage = self.stages[last]
        ckpt = self.checkpoints(stage)
        restored = ckpt.restore_latest(abstract)
        ckpt.close()
        if restored is None:
            raise TrainingError(f"{self.output_dir / 'checkpoints' / stage.name}: no checkpoint of stage {stage.name} "
                                "reads back; move that directory away to start the stage afresh")
        state, _, meta, step = restored
        self.emit(f"resuming: stage {stage.name} checkpoint at step {step}{' (stage done)' if meta['done'] else ''} "
                  f"in {self.output_dir}")
        if meta["done"]:
            return last + 1, None, (graphdef, state)
        return last, step, (graphdef, state)

    # -------------------------------------------------------------------------------------------- run

    def _write_run_files(self) -> None:
        """`{output_dir}/config.json` and `{output_dir}/tokenizer/`: what `merg_jax.infer.load_model` reads back."""
        if not self.primary:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.output_dir / ".config.json.tmp"
        tmp.write_text(self.config.to_json_best_effort(indent=2) + "\n")
        tmp.replace(self.output_dir / "config.json")
        own = self.output_dir / "tokenizer"
        if own.resolve() != pathlib.Path(str(self.config.data.tokenizer)).resolve():
            self.tokenizer.save(own)

    def run(self) -> TrainResult:
        self._write_run_files()
        writer = MetricsWriter(self.output_dir, enabled=self.primary)
        first, resume_step, start = self._resume_point()
        if start is None:
            model = build_model(self.config, self.tokenizer, self.mesh, self.emit)
        else:
            model = nnx.merge(*start)
        for stage in self.stages[:first]:
            self._global_step += int(stage_settings(self.config, stage).steps)
        try:
            for i, stage in enumerate(self.stages):
                if i < first:
                    continue
                model = self._run_stage(stage, model, writer, resume_step if i == first else None)
        finally:
            writer.close()
        return TrainResult(model=model, tokenizer=self.tokenizer, summary=self.summary)

    def _run_stage(self, stage: Stage, model: Empatheia, writer: MetricsWriter, resume_step: int | None) -> Empatheia:
        from merg_jax.data.pipeline import make_iterator

        s = stage_settings(self.config, stage)
        steps, log_every = int(s.steps), max(1, int(s.log_every))
        eval_every = int(s.get("eval_every", 0) or 0)
        every = int(self.config.checkpoint.every_steps)
        data_config = stage_data_config(self.config, stage, s)
        tx = make_optimizer(s)
        schedule = make_schedule(s)
        graphdef, trainable, frozen = split_for_stage(model, stage_filter(stage.name, stage_groups(s)))
        n_train = sum(x.size for x in jax.tree.leaves(trainable))
        if n_train == 0:
            raise TrainingError(f"stage {stage.name} trains the groups {s.groups} but the model has no parameters "
                                "in them (config.stage.<name>.groups)")
        n_all = n_train + sum(x.size for x in jax.tree.leaves(frozen))
        with jax.set_mesh(self.mesh):
            opt_state = init_optimizer_state(tx, trainable, self.mesh)
        ckpt = self.checkpoints(stage)
        data_state = None
        key = jax.random.fold_in(jax.random.key(int(self.config.seed)), zlib.crc32(stage.name.encode()) & 0x7FFFFFFF)
        start = 0
        if resume_step is not None:
            abstract_opt = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                                        opt_state)
            _, abstract = abstract_model(self.config, self.tokenizer, self.mesh)
            restored = ckpt.restore_latest(abstract, abstract_opt, before=resume_step + 1)
            if restored is None:
                raise TrainingError(f"{ckpt.directory}: no checkpoint of stage {stage.name} reads back")
            state, opt_state, meta, start = restored
            model = nnx.merge(graphdef, state)
            graphdef, trainable, frozen = split_for_stage(model, stage_filter(stage.name, stage_groups(s)))
            data_state = meta["data"][jax.process_index()] if len(meta["data"]) > jax.process_index() else None
            key = jax.random.wrap_key_data(jnp.asarray(meta["rng"], jnp.uint32))
            if self.primary:
                writer.rewind(stage.name, start, tuple(x.name for x in self.stages[self.stages.index(stage) + 1:]))
        self.emit(f"stage {stage.name}: {stage.description}; trains {s.groups} ({n_train:,} of {n_all:,} parameters) "
                  f"for {steps} steps{f' from step {start}' if start else ''}, batch {s.batch_size}"
                  f"{f' in {s.accum_steps} micro-batches' if int(s.get('accum_steps', 1)) > 1 else ''}")
        step_fn = make_train_step(stage, graphdef, tx, accum_steps=int(s.get("accum_steps", 1)), targets=self.targets)
        if stage.prepare is not None:
            model = nnx.merge(graphdef, trainable, frozen)
            stage.prepare(model, data_config, self.emit)
            graphdef, trainable, frozen = split_for_stage(model, stage_filter(stage.name, stage_groups(s)))
        it = (stage.iterator or make_iterator)(data_config, "train", tokenizer=self.tokenizer)
        if data_state is not None:
            it.set_state(data_state)
        keys = tuple(k for k in (*stage.batch_keys, *(self.targets.batch_keys if stage.needs_targets else ()))
                     if k != "sample_index")
        use_rng = step_uses_rng(stage, model.cfg)
        progress = ProgressLogger(steps, int(s.batch_size) * int(data_config.data.seq_len), log_every, self.emit,
                                  prefix=f"[{stage.name}] ")
        bad_in_a_row, max_bad = 0, int(self.config.train.get("max_nonfinite_in_a_row", 10))
        last_row: dict[str, Any] = {}
        try:
            with jax.set_mesh(self.mesh):
                for step in range(start, steps):
                    host = next(it)
                    batch = place_local_batch({k: host[k] for k in keys if k in host}, self.mesh)
                    rng = jax.random.fold_in(key, step) if use_rng else None
                    t0 = time.perf_counter()
                    trainable, opt_state, metrics = step_fn(trainable, frozen, opt_state, batch, rng)
                    # Block on every step: unblocked dispatch of many sharded steps can deadlock CPU collectives.
                    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    now = time.perf_counter()
                    self._global_step += 1
                    row = {"stage": stage.name, "step": step + 1, "global_step": self._global_step,
                           "learning_rate": float(schedule(step)), "step_time": now - t0, **metrics}
                    if metrics["finite"] < 1.0:
                        bad_in_a_row += 1
                        self.emit(f"[{stage.name}] step {step + 1}: loss {metrics['loss']}, grad_norm "
                                  f"{metrics['grad_norm']} — not finite: update skipped ({bad_in_a_row} in a row; "
                                  f"samples {host['sample_index'].tolist()})")
                        if bad_in_a_row >= max_bad:
                            raise TrainingError(
                                f"stage {stage.name}: {bad_in_a_row} steps in a row had a non-finite loss or gradient "
                                f"(last at step {step + 1}); stopping. Lower the learning rate, check the data, or "
                                "raise config.train.max_nonfinite_in_a_row")
                    else:
                        bad_in_a_row = 0
                    row["skipped_updates"] = bad_in_a_row
                    if (step + 1) % log_every == 0 or step + 1 == steps or step == start:
                        row["sample_index"] = _gather_rows(host["sample_index"]).tolist()
                        writer.write(row)
                    progress.step_done(step + 1, row, now)
                    last_row = row
                    val = None
                    if eval_every and ((step + 1) % eval_every == 0 or step + 1 == steps):
                        val = self._validate(stage, graphdef, trainable, frozen, data_config)
                        if val:
                            writer.write({"stage": stage.name, "step": step + 1, "global_step": self._global_step,
                                          "loss": val["val_loss"], "split": "valid", **val})
                            self.emit(f"[{stage.name}] validation at step {step + 1}: " + "  ".join(
                                f"{k} {v:.4f}" for k, v in val.items()))
                            last_row = {**last_row, **val}
                    if step + 1 == steps and stage.finish is not None:
                        model = nnx.merge(graphdef, trainable, frozen)
                        stage.finish(model, data_config, self.emit)
                        graphdef, trainable, frozen = split_for_stage(model, stage_filter(stage.name,
                                                                                          stage_groups(s)))
                    if (step + 1) % every == 0 or step + 1 == steps:
                        model_state = nnx.state(nnx.merge(graphdef, trainable, frozen))
                        meta = {"stage": stage.name, "step": step + 1, "done": step + 1 == steps,
                                "rng": np.asarray(jax.random.key_data(key)).tolist(),
                                "data": _gather_json(it.get_state()), "global_step": self._global_step,
                                "config": json.loads(self.config.to_json_best_effort())}
                        ckpt.save(step + 1, model_state, opt_state, meta, metrics=val)
            ckpt.wait()
        finally:
            it.close()
            ckpt.close()
        self.summary[stage.name] = {k: v for k, v in last_row.items() if isinstance(v, (int, float))}
        return nnx.merge(graphdef, trainable, frozen)

    def _validate(self, stage: Stage, graphdef, trainable, frozen, data_config) -> dict[str, float] | None:
        """Weighted means of the stage's loss and metrics over `train.eval_batches` batches of the valid split."""
        from merg_jax.data.pipeline import make_iterator

        root = pathlib.Path(str(data_config.data.root))
        if data_config.data.source == "raw" and not (root / "valid.json").exists():
            log.warning("no valid split under %s: validation skipped", root)
            return None
        eval_fn = self._eval_fns.get(stage.name)
        if eval_fn is None:
            eval_fn = self._eval_fns[stage.name] = make_eval_step(stage, graphdef, targets=self.targets)
        keys = tuple(k for k in (*stage.batch_keys, *(self.targets.batch_keys if stage.needs_targets else ())))
        limit = int(self.config.train.get("eval_batches", 0) or 0)
        sums: dict[str, float] = {}
        total = 0.0
        with (stage.iterator or make_iterator)(data_config, "valid", tokenizer=self.tokenizer, shuffle=False,
                                               num_epochs=1, drop_remainder=False, workers=0) as it:
            for n, host in enumerate(it):
                if limit and n >= limit:
                    break
                batch = place_local_batch({k: host[k] for k in keys if k in host}, self.mesh)
                out = {k: float(v) for k, v in jax.device_get(eval_fn(trainable, frozen, batch)).items()}
                w = out.pop("weight")
                total += w
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + v * w
        if total <= 0:
            return None
        return {f"val_{k}": v / total for k, v in sums.items()}


def train_stages(config: ml_collections.ConfigDict, *, mesh: jax.sharding.Mesh | None = None,
                 emit: Callable[[str], None] | None = None) -> TrainResult:
    """Runs (or resumes) every stage of `config.stages`; see the module docstring."""
    return StagedTrainer(config, mesh=mesh, emit=emit).run()


__all__ = ["STAGE_KEYS", "StagedTrainer", "TrainResult", "TrainingError", "abstract_model", "build_model",
           "ensure_tokenizer", "stage_data_config", "stage_settings", "train_stages"]
