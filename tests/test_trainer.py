"""The staged trainer: each stage trains only its groups and lowers its loss; accumulation equals the full batch;
a non-finite step changes nothing; checkpoints resume exactly (also after SIGKILL), restore onto other meshes,
keep the last N and the best, and skip a corrupt step directory; metrics land in metrics.jsonl and TensorBoard."""

from __future__ import annotations

import logging
import os
import pathlib
import signal
import struct
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from merg_jax.data.pipeline import make_iterator
from merg_jax.models.param_groups import group_of, stage_filter
from merg_jax.sharding import make_mesh, single_device_mesh
from merg_jax.train.batching import place_local_batch
from merg_jax.train.checkpoints import StageCheckpoints
from merg_jax.train.metrics_log import read_metrics
from merg_jax.train.optimizer import make_optimizer
from merg_jax.train.stage_step import make_train_step, split_for_stage
from merg_jax.train.stages import STAGES, parse_stages
from merg_jax.train.targets import ReplyStatisticsTargets, TargetWeight
from merg_jax.train.trainer import (TrainingError, abstract_model, build_model, ensure_tokenizer,
                                    stage_data_config, stage_settings, train_stages, with_compute_dtype)
from tests.trainer_testing import cli_args, trainer_config

needs_8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (tests/conftest.py sets XLA_FLAGS)")
QUIET = dict(emit=lambda line: None)


def _flat(state) -> dict:
    return {p: np.asarray(v.get_value() if hasattr(v, "get_value") else v) for p, v in nnx.to_flat_state(state)}


def _batch(config, tokenizer, stage, n=1, mesh=None):
    """n host batches of the stage's data, placed on `mesh` (default one device)."""
    s = stage_settings(config, stage)
    with make_iterator(stage_data_config(config, stage, s), "train", tokenizer=tokenizer, shard_index=0,
                       shard_count=1) as it:
        hosts = [next(it) for _ in range(n)]
    mesh = mesh or single_device_mesh()
    return [place_local_batch(h, mesh) for h in hosts], hosts


# ---------------------------------------------------------------------------------------------------------- config


def test_stage_settings_and_errors(mini_root, tmp_path):
    config = trainer_config(mini_root, tmp_path, "--config.stage.coe.learning_rate=0.5")
    s = stage_settings(config, STAGES["coe"])
    assert s.learning_rate == 0.5 and s.steps == 6 and s.groups == "llm_base,projections"
    assert stage_settings(config, STAGES["style"]).groups == "disentangler"
    config.train.steps = 2
    assert {stage_settings(config, STAGES[n]).steps for n in STAGES} == {2}  # --config.train.steps overrides all
    with pytest.raises(ValueError, match="unknown stage"):
        parse_stages("coe,spech")
    with pytest.raises(ValueError, match="twice"):
        parse_stages("coe,coe")
    config.stage.coe.bogus = 1
    with pytest.raises(ValueError, match=r"config\.stage\.coe: unknown key"):
        stage_settings(config, STAGES["coe"])
    data = stage_data_config(config, STAGES["coe"], s)
    assert data.data.reply_video.frames == 0 and data.data.reply_audio.frames == 0 and data.data.audio.frames == 64


def test_bfloat16_compute_keeps_float32_master_weights(mini_root, tmp_path):
    config = with_compute_dtype(trainer_config(mini_root, tmp_path, "--config.train.compute_dtype=bfloat16"))
    assert config.model.dtype == "bfloat16" and config.empatheia.synchronizer.dtype == "bfloat16"
    tok = ensure_tokenizer(config, print)
    model = build_model(config, tok, single_device_mesh())
    assert {v.dtype for v in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype("float32")}
    stage = STAGES["coe"]
    graphdef, trainable, frozen = split_for_stage(model, stage_filter("coe", ("llm_base", "projections")))
    tx = make_optimizer(stage_settings(config, stage))
    step = make_train_step(stage, graphdef, tx)
    (batch,), _ = _batch(config, tok, stage)
    new, _, metrics = step(trainable, frozen, tx.init(trainable), batch, None)
    assert np.isfinite(metrics["loss"]) and metrics["finite"] == 1.0
    assert {v.dtype for v in jax.tree.leaves(new)} == {jnp.dtype("float32")}


# ---------------------------------------------------------------------------------------------------------- the step


@pytest.fixture(scope="module")
def setup(mini_root, tmp_path_factory):
    config = trainer_config(mini_root, tmp_path_factory.mktemp("step"))
    tok = ensure_tokenizer(config, print)
    return config, tok


def test_accumulation_equals_the_full_batch(setup):
    config, tok = setup
    stage = STAGES["coe"]
    (batch,), _ = _batch(config, tok, stage)
    results = []
    for accum in (1, 2):
        model = build_model(config, tok, single_device_mesh())
        graphdef, trainable, frozen = split_for_stage(model, stage_filter("coe", ("llm_base", "projections")))
        tx = optax.sgd(0.1)  # the update is the gradient itself, so the comparison is of gradients
        step = make_train_step(stage, graphdef, tx, accum_steps=accum, donate=False)
        new, _, metrics = step(trainable, frozen, tx.init(trainable), batch, None)
        results.append((_flat(new), metrics))
    (ref, m1), *others = results
    for flat, m in others:
        np.testing.assert_allclose(m["loss"], m1["loss"], rtol=1e-5)
        assert m["weight"] == m1["weight"]  # the batch's target tokens
        for k in ref:
            np.testing.assert_allclose(flat[k], ref[k], atol=2e-6, rtol=1e-4, err_msg=str(k))


def test_a_non_finite_batch_is_skipped_bit_for_bit(setup):
    config, tok = setup
    stage = STAGES["encoders"]
    (batch,), _ = _batch(config, tok, stage)
    model = build_model(config, tok, single_device_mesh())
    graphdef, trainable, frozen = split_for_stage(model, stage_filter("encoders"))
    tx = make_optimizer(stage_settings(config, stage))
    opt = tx.init(trainable)
    step = make_train_step(stage, graphdef, tx, donate=False)
    poisoned = dict(batch, audio_mel=batch["audio_mel"].at[0, 0, 0, 0].set(jnp.inf))
    new, new_opt, metrics = step(trainable, frozen, opt, poisoned, None)
    assert metrics["finite"] == 0.0 and not np.isfinite(metrics["loss"] * metrics["grad_norm"])
    for a, b in zip(jax.tree.leaves((trainable, opt)), jax.tree.leaves((new, new_opt))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # parameters and moments untouched
    new, _, metrics = step(trainable, frozen, opt, batch, None)  # the clean batch does update
    assert metrics["finite"] == 1.0 and any(not np.array_equal(a, b) for a, b in
                                           zip(_flat(trainable).values(), _flat(new).values()))


def test_too_many_non_finite_steps_in_a_row_stop_the_run(mini_root, tmp_path):
    config = trainer_config(mini_root, tmp_path, "--config.stages=encoders", "--config.stage.encoders.learning_rate=1e30",
                            "--config.train.max_nonfinite_in_a_row=2", "--config.stage.encoders.steps=8",
                            "--config.train.grad_clip=0")
    lines = []
    with pytest.raises(TrainingError, match="2 steps in a row had a non-finite loss"):
        train_stages(config, mesh=single_device_mesh(), emit=lines.append)
    assert any("not finite: update skipped (1 in a row" in line for line in lines)


def test_each_stage_trains_only_its_groups_and_learns(trained_run):
    out, result = trained_run
    rows = read_metrics(out)
    for name in ("encoders", "coe", "speech", "face_renderer", "face_motion", "content", "style", "style_cls"):
        steps = [r for r in rows if r["stage"] == name and r.get("split") != "valid"]
        assert [r["step"] for r in steps] == list(range(1, len(steps) + 1)) and steps
        assert all({"stage", "step", "loss", "grad_norm", "learning_rate", "sample_index"} <= set(r) for r in steps)
    # The stages ran in order on one model: each changed exactly its groups, relative to the previous stage.
    _, abstract = abstract_model(_config(out), result.tokenizer, single_device_mesh())
    states = {}
    for name in ("encoders", "coe", "speech", "face_renderer", "face_motion", "content", "style_cls"):
        ck = StageCheckpoints(out / "checkpoints" / name, async_save=False)
        states[name] = ck.restore(ck.steps()[-1], abstract)[0]
        ck.close()

    def changed(a, b):
        return {group_of(p, v) for (p, v), (_, w) in zip(nnx.to_flat_state(a), nnx.to_flat_state(b))
                if isinstance(v, nnx.Param) and not np.array_equal(v.get_value(), w.get_value())}

    assert changed(states["encoders"], states["coe"]) == {"llm_base", "projections"}
    assert changed(states["coe"], states["speech"]) == {"speech"}
    assert changed(states["speech"], states["face_renderer"]) == {"face_renderer"}
    assert changed(states["face_renderer"], states["face_motion"]) == {"face_motion"}
    assert changed(states["face_motion"], states["content"]) == {"synchronizer"}
    # The face motion stage starts by measuring the keypoint tracks' spread (not a parameter either).
    stds = [v.get_value() for p, v in nnx.to_flat_state(states["face_motion"]) if p[-1] == "motion_std"]
    before = [v.get_value() for p, v in nnx.to_flat_state(states["face_renderer"]) if p[-1] == "motion_std"]
    assert np.all(before[0] == 1.0) and not np.allclose(stds[0], 1.0)
    # The speech stage ends by filling the generator's style table (not a parameter: no optimiser touches it).
    counts = [v.get_value() for p, v in nnx.to_flat_state(states["speech"]) if p[-1] == "style_counts"]
    assert counts and counts[0].sum() > 0
    coe = [r["loss"] for r in rows if r["stage"] == "coe" and r.get("split") != "valid"]
    assert coe[-1] < coe[0] - 0.5  # it learns (from ~ln(vocab) down)


def _config(out):
    from merg_jax.infer.bundle import _tuples, config_from_json

    return _tuples(config_from_json((pathlib.Path(out) / "config.json").read_text()))


def test_content_and_style_stages_lower_their_loss_against_the_target_encoders(setup):
    config, tok = setup
    model = build_model(config, tok, single_device_mesh())
    targets = ReplyStatisticsTargets.from_config(config, model.cfg)
    assert not jax.tree.leaves(nnx.state(targets, nnx.Param))  # frozen: TargetWeight, never a Param
    assert jax.tree.leaves(nnx.state(targets, TargetWeight))
    for name in ("content", "style"):
        stage = STAGES[name]
        (batch,), _ = _batch(config, tok, stage)
        c1, c2 = targets.content(batch), ReplyStatisticsTargets.from_config(config, model.cfg).content(batch)
        np.testing.assert_array_equal(np.asarray(c1.speech), np.asarray(c2.speech))  # deterministic
        assert c1.speech.shape[1:] == (192, 8) and c1.video.shape[1:] == (8, 8)
        s = targets.style(batch)
        assert s.speech.shape[1:] == (8,) and s.video.shape[1:] == (8,)
        graphdef, trainable, frozen = split_for_stage(model, stage_filter(name))
        tx = optax.adam(3e-3)
        step = make_train_step(stage, graphdef, tx, targets=targets, donate=False)
        opt = tx.init(trainable)
        losses = []
        for _ in range(8):
            trainable, opt, m = step(trainable, frozen, opt, batch, None)
            losses.append(float(m["loss"]))
        assert losses[-1] < 0.5 * losses[0], (name, losses)


# ---------------------------------------------------------------------------------------------------------- checkpoints


def test_checkpoints_keep_the_last_and_the_best_and_skip_a_corrupt_one(tmp_path, caplog):
    state = nnx.State({"w": nnx.Param(jnp.arange(6.0).reshape(2, 3))})
    opt = {"mu": jnp.zeros(3)}
    ck = StageCheckpoints(tmp_path / "c", keep=2, metric="val_loss", mode="min", async_save=True)
    for step, val in [(1, 5.0), (2, 1.0), (3, 4.0), (4, None), (5, 3.0)]:
        s = jax.tree.map(lambda x: x + step, state)
        ck.save(step, s, opt, {"stage": "x", "step": step}, metrics=None if val is None else {"val_loss": val})
    ck.wait()
    assert ck.steps() == [2, 4, 5] and ck.best_step() == 2  # the last 2, and the best (lowest) val_loss
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    restored, _, meta, step = ck.restore_latest(abstract)
    assert step == 5 and meta["step"] == 5
    np.testing.assert_array_equal(np.asarray(restored["w"].get_value()), np.arange(6.0).reshape(2, 3) + 5)
    # Truncate a file of the newest checkpoint: it is reported by path and the previous one is used.
    files = [f for f in (tmp_path / "c" / "5" / "model").rglob("*") if f.is_file() and f.stat().st_size > 0]
    for f in files:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    logger = logging.getLogger("merg_jax.train.checkpoints")  # "merg_jax" may not propagate (console.py)
    logger.addHandler(caplog.handler)
    try:
        restored, _, meta, step = ck.restore_latest(abstract)
    finally:
        logger.removeHandler(caplog.handler)
    assert step == 4 and meta["step"] == 4
    assert str(tmp_path / "c" / "5") in caplog.text
    ck.close()


@needs_8
def test_a_checkpoint_restores_on_other_meshes(setup, tmp_path):
    config, tok = setup
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = build_model(config, tok, mesh)
    saved = _flat(nnx.state(model))
    ck = StageCheckpoints(tmp_path / "c", async_save=False)
    ck.save(1, nnx.state(model), {"mu": jnp.zeros(2)}, {"step": 1})
    ck.wait()
    for shape in ({"data": 1, "fsdp": 8, "tensor": 1}, {"data": 8, "fsdp": 1, "tensor": 1}):
        other = make_mesh(shape)
        _, abstract = abstract_model(config, tok, other)
        state, _, _, _ = ck.restore_latest(abstract)
        got = _flat(state)
        assert got.keys() == saved.keys()
        for k in saved:
            np.testing.assert_array_equal(got[k], saved[k], err_msg=str(k))
        embed = dict(nnx.to_flat_state(state))[("llm", "embed", "embedding")]
        assert embed.get_value().sharding.mesh.shape == other.shape  # laid out on the new mesh
    ck.close()


# ---------------------------------------------------------------------------------------------------------- resume


def _run_cli(root, out, *extra, kill_at: tuple[str, int, int] | None = None):
    """`merg-jax train` in a subprocess on one CPU device; with kill_at=(stage, step, saved) it is SIGKILLed as soon
    as metrics.jsonl shows that step and the checkpoint of step `saved` is complete."""
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "merg_jax.cli", "train", *cli_args(root, out, *extra)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if kill_at is None:
        output, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, output[-3000:]
        return output
    deadline = time.time() + 900
    while time.time() < deadline:
        rows = read_metrics(out)
        if any(r["stage"] == kill_at[0] and r["step"] >= kill_at[1] for r in rows) and (
                pathlib.Path(out) / "checkpoints" / kill_at[0] / str(kill_at[2])).is_dir():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return None
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before it could be killed:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("timed out waiting for the run to reach the kill point")


def _train_rows(out):
    return [(r["stage"], r["step"], r["loss"], r["sample_index"]) for r in read_metrics(out)
            if r.get("split") != "valid"]


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_exactly(mini_root, tmp_path):
    extra = ("--config.stages=coe,style_cls", "--config.stage.coe.steps=9", "--config.stage.style_cls.steps=3",
             "--config.checkpoint.every_steps=3", "--config.checkpoint.async_save=True")
    _run_cli(mini_root, tmp_path / "straight", *extra)
    straight = _train_rows(tmp_path / "straight")
    _run_cli(mini_root, tmp_path / "killed", *extra, kill_at=("coe", 7, 6))
    before = _train_rows(tmp_path / "killed")
    assert max(step for stage, step, *_ in before if stage == "coe") >= 7  # steps past the checkpoint were lost
    output = _run_cli(mini_root, tmp_path / "killed", *extra)
    assert "resuming: stage coe checkpoint at step 6" in output and "ERROR" not in output, output[-3000:]
    resumed = _train_rows(tmp_path / "killed")
    assert [r[:2] for r in resumed] == [r[:2] for r in straight]  # each step logged once, in order
    for a, b in zip(resumed, straight):
        assert abs(a[2] - b[2]) <= 1e-6, (a, b)
        assert a[3] == b[3]  # the same samples in the same order
    # A finished run resumes to nothing.
    assert "resuming: stage style_cls checkpoint at step 3 (stage done)" in _run_cli(mini_root, tmp_path / "killed",
                                                                                    *extra)


# ---------------------------------------------------------------------------------------------------------- logs


def _tensorboard_scalars(folder: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
    """Reads TensorBoard event files (TFRecord framing: length, crc, Event proto, crc) with tensorboardX's protos."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for path in folder.rglob("events.out.tfevents.*"):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (n,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + n])
            at += 12 + n + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_metrics_go_to_jsonl_and_tensorboard(trained_run):
    out, _ = trained_run
    rows = [r for r in read_metrics(out) if r["stage"] == "coe" and r.get("split") != "valid"]
    scalars = _tensorboard_scalars(out / "tensorboard")
    logged = dict(scalars["coe/loss"])
    for r in rows:
        assert logged[r["global_step"]] == pytest.approx(r["loss"], rel=1e-6)


def test_the_paper_recipe_builds_abstractly():
    from merg_jax.config import load_config
    from merg_jax.models.empatheia import Empatheia, EmpatheiaConfig
    from merg_jax.models.param_groups import param_counts

    big = load_config("configs/empatheia_7b.py")
    assert big.stages == "coe,content,style,style_cls" and big.stage.coe.groups == "lora,projections"
    abstract = nnx.eval_shape(lambda: Empatheia(EmpatheiaConfig.from_config(big), rngs=nnx.Rngs(0)))
    counts = param_counts(abstract)
    assert counts["lora"] == 8_388_608 and counts["encoders"] == 719_065_088


# The scaled-down copy's towers as an ImageBind checkpoint (tests/imagebind_reference.py's names and layout).
SCALED_IMAGEBIND = dict(vision_embed_dim=16, vision_num_blocks=1, vision_num_heads=2, kernel_size=(2, 8, 8),
                        image_size=32, audio_embed_dim=16, audio_num_blocks=1, audio_num_heads=2,
                        audio_kernel_size=16, audio_stride=12, audio_num_mel_bins=40, audio_target_len=32,
                        out_embed_dim=16)
SCALED_LLAMA = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=1, rms_norm_eps=1e-6, max_position_embeddings=512)


@pytest.mark.slow
def test_the_paper_recipe_trains_from_weights_files(mini_root, tmp_path):
    """`merg-jax train --config configs/empatheia_7b.py --config.init.llm=VICUNA_DIR
    --config.init.imagebind=imagebind_huge.pth`, scaled down: a Hugging Face LLaMA directory with its tokenizer and
    an ImageBind .pth, both written by PyTorch in the real formats, go through stages a–d. The checkpoint's frozen
    LLM is the file's, tensor for tensor, and its towers compute the PyTorch ImageBind's embeddings."""
    import torch

    from merg_jax.data.avamerg import read_split
    from merg_jax.data.tokenizer_cli import training_texts
    from merg_jax.infer.bundle import load_model
    from tests.imagebind_reference import ReferenceConfig
    from tests.weights_files import write_imagebind_pth, write_vicuna_dir

    texts = training_texts(read_split(str(mini_root), "train", check_media="none"))
    vicuna, hf = write_vicuna_dir(tmp_path / "vicuna-7b-v0", texts, **SCALED_LLAMA)
    pth, ib = write_imagebind_pth(tmp_path / "imagebind_huge.pth", ReferenceConfig(**SCALED_IMAGEBIND))
    config_file = tmp_path / "empatheia_7b_scaled.py"
    config_file.write_text(
        '"""configs/empatheia_7b.py at the shapes of the shrunk tiny recipe (tests/trainer_testing.py)."""\n'
        "from tests.trainer_testing import scaled_down_7b\n\n\n"
        f"def get_config():\n    return scaled_down_7b({str(mini_root)!r}, {str(tmp_path / 'run')!r})\n")
    repo = pathlib.Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(repo), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # a user's machine: one device
    args = ["--config", str(config_file), f"--config.data.root={mini_root}", f"--config.data.tokenizer={vicuna}",
            f"--config.init.llm={vicuna}", f"--config.init.imagebind={pth}", "--config.train.steps=2"]
    r = subprocess.run([sys.executable, "-m", "merg_jax.cli", "train", *args], cwd=repo, env=env,
                       capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert f"imported the LLM from {vicuna}" in out and f"imported ImageBind's vision and audio towers from {pth}" in out
    rows = [r for r in read_metrics(tmp_path / "run") if r.get("split") != "valid"]
    assert {(r["stage"], r["step"]) for r in rows} >= {(s, 2) for s in ("coe", "content", "style", "style_cls")}
    assert all(np.isfinite(r["loss"]) for r in rows)

    model = load_model(tmp_path / "run").model
    vocab = hf.config.vocab_size
    assert model.cfg.llm.vocab_size == 512 > vocab + 6  # Vicuna's rows + the special tokens, padded
    llm = {".".join(map(str, p)): np.asarray(v.get_value(), np.float32)
           for p, v in nnx.to_flat_state(nnx.state(model.llm, nnx.Param))}
    theirs = {n: t.detach().numpy() for n, t in hf.named_parameters()}
    np.testing.assert_array_equal(llm["embed.embedding"][:vocab], theirs["model.embed_tokens.weight"])
    np.testing.assert_array_equal(llm["lm_head.kernel"][:, :vocab], theirs["lm_head.weight"].T)
    np.testing.assert_array_equal(llm["final_norm.scale"], theirs["model.norm.weight"])
    names = {"attn.q_proj": "self_attn.q_proj", "attn.k_proj": "self_attn.k_proj", "attn.v_proj": "self_attn.v_proj",
             "attn.o_proj": "self_attn.o_proj", "mlp.gate_proj": "mlp.gate_proj", "mlp.up_proj": "mlp.up_proj",
             "mlp.down_proj": "mlp.down_proj"}
    for layer in range(2):
        for ours, hf_name in names.items():  # the base stays the file's: stage a trains the LoRA adapters
            np.testing.assert_array_equal(llm[f"layers.{ours}.kernel"][layer],
                                          theirs[f"model.layers.{layer}.{hf_name}.weight"].T)
        np.testing.assert_array_equal(llm["layers.input_norm.scale"][layer],
                                      theirs[f"model.layers.{layer}.input_layernorm.weight"])
    assert np.abs(llm["layers.attn.q_proj.lora_b"]).max() > 0  # ... which did train

    rng = np.random.default_rng(0)
    image = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
    mel = rng.standard_normal((2, 32, 40)).astype(np.float32)
    with torch.no_grad():
        want_v = ib.tower("vision", torch.from_numpy(image).permute(0, 3, 1, 2))["embedding"].numpy()
        want_a = ib.tower("audio", torch.from_numpy(mel).transpose(1, 2)[:, None])["embedding"].numpy()
    got_v = np.asarray(model.encoders.vision(jnp.asarray(image)).pooled, np.float32)
    got_a = np.asarray(model.encoders.audio(jnp.asarray(mel)).pooled, np.float32)
    np.testing.assert_allclose(got_v, want_v, atol=0.03)  # bfloat16 compute, as the recipe
    np.testing.assert_allclose(got_a, want_a, atol=0.03 * 20)  # ImageBind scales audio embeddings by 20

    bad, _ = write_imagebind_pth(tmp_path / "two_blocks.pth",
                                 ReferenceConfig(**{**SCALED_IMAGEBIND, "vision_num_blocks": 2}))
    r = subprocess.run([sys.executable, "-m", "merg_jax.cli", "train", *args[:-2], f"--config.init.imagebind={bad}",
                        f"--config.train.output_dir={tmp_path / 'bad'}"], cwd=repo, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode != 0
    assert f"config.init.imagebind={bad} (vision) does not fit" in r.stderr and "num_layers: config 1 vs file 2" \
        in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_two_processes_train_like_one(mini_root, tmp_path):
    """launch/local_multihost.sh: 2 processes × 4 CPU devices, each reading its half of every global batch, give
    the losses and the data order of 1 process × 8 devices."""
    repo = pathlib.Path(__file__).resolve().parent.parent
    extra = ("--config.stages=coe", "--config.stage.coe.steps=3", "--config.train.batch_size=8",
             "--config.checkpoint.every_steps=3")
    env = dict(os.environ, PYTHONPATH=str(repo), LOG_DIR=str(tmp_path / "logs"), PYTHON=sys.executable)
    r = subprocess.run(["bash", "launch/local_multihost.sh", "-n", "2", "-d", "4", "--",
                        *cli_args(mini_root, tmp_path / "multi", *extra)], cwd=repo, env=env, capture_output=True,
                       text=True, timeout=900)
    logs = "\n".join((tmp_path / "logs" / f"process_{i}.log").read_text() for i in range(2))
    assert r.returncode == 0, r.stderr + logs[-4000:]
    single_env = dict(os.environ, PYTHONPATH=str(repo), XLA_FLAGS="--xla_force_host_platform_device_count=8",
                      JAX_PLATFORMS="cpu")
    s = subprocess.run([sys.executable, "-m", "merg_jax.cli", "train", *cli_args(mini_root, tmp_path / "single",
                                                                                 *extra)],
                       cwd=repo, env=single_env, capture_output=True, text=True, timeout=900)
    assert s.returncode == 0, s.stdout[-4000:] + s.stderr[-4000:]
    multi, single = _train_rows(tmp_path / "multi"), _train_rows(tmp_path / "single")
    assert [r[:2] for r in multi] == [r[:2] for r in single] == [("coe", 1), ("coe", 2), ("coe", 3)]
    for a, b in zip(multi, single):
        assert a[2] == pytest.approx(b[2], abs=2e-4) and a[3] == b[3]
