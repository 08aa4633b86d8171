"""`merg-jax bench` as a suite: the `empatheia` and `face` targets run end to end at tiny sizes and write every number
they print with --json; the FLOP count behind empatheia's MFU is checked against XLA on a single matmul (exact) and
against a hand count of a small LLM's training step; `attention`, `data` and `encoders` write --json too."""

import argparse
import dataclasses
import importlib.util
import json
import math
import re

import jax
import jax.numpy as jnp
import pytest

from merg_jax import bench
from merg_jax.bench.empatheia import unrolled, while_loops, xla_flops
from merg_jax.config import load_config, split_overrides
from tests.trainer_testing import SMALL

# The tiny recipe shrunk (tests/trainer_testing.py) and left with the LLM alone: no towers, no generators (the
# content stage's targets from the reply's statistics), so the coe step's FLOPs are a small LLM's training step.
LLM_ONLY = [*SMALL, "--config.empatheia.vision=None", "--config.empatheia.audio=None",
            "--config.empatheia.speech=None", "--config.empatheia.face=None", "--config.targets.kind=reply_statistics"]
# The face generator at the trainer tests' size (32x32 frames, windows of 16 frames, 2 DDIM steps).
FACE_SMALL = [a for a in SMALL if a.startswith("--config.empatheia.face.")]
HAS_TORCH = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None


def positive_finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


# ------------------------------------------------------------------------------------------------ FLOP counting


def test_xla_counts_a_matmul_exactly_and_a_scanned_layer_once():
    m, k, n = 48, 32, 24
    compiled = jax.jit(jnp.matmul).lower(jnp.ones((m, k)), jnp.ones((k, n))).compile()
    assert xla_flops(compiled) == 2 * m * n * k
    assert while_loops(compiled) == 0

    # Four layers in a scan: XLA counts the loop body once, which is why bench empatheia counts an unrolled twin.
    def layers(x, ws):
        return jax.lax.scan(lambda h, w: (h @ w, None), x, ws)[0]

    compiled = jax.jit(layers).lower(jnp.ones((m, k)), jnp.ones((4, k, k))).compile()
    assert while_loops(compiled) == 1
    assert xla_flops(compiled) < 1.01 * 2 * m * k * k  # one layer's, not four

    # A loop without a matrix product (the RoPE table writer's kind) is not one that leaves the count short;
    # the product inside a nested loop is found through the outer loop's body.
    def elementwise(x):
        return jax.lax.fori_loop(0, 4, lambda i, h: jnp.cos(h) * i, x)

    compiled = jax.jit(elementwise).lower(jnp.ones((m, k))).compile()
    assert " while(" in compiled.as_text() and while_loops(compiled) == 0

    def nested(x, ws):
        return jax.lax.fori_loop(0, 2, lambda i, h: jnp.tanh(layers(h, ws)), x)

    assert while_loops(jax.jit(nested).lower(jnp.ones((m, k)), jnp.ones((4, k, k))).compile()) == 2


def test_unrolled_turns_off_every_scan_of_the_model_config():
    from merg_jax.models.empatheia import EmpatheiaConfig

    cfg = EmpatheiaConfig.from_config(load_config("configs/empatheia_tiny.py"))
    found = []

    def walk(c, path):
        for f in dataclasses.fields(c):
            value = getattr(c, f.name)
            if f.name == "scan_layers":
                found.append((path + f.name, value))
            elif dataclasses.is_dataclass(value):
                walk(value, path + f.name + ".")

    walk(cfg, "")
    assert ("llm.scan_layers", True) in found and ("vision.scan_layers", True) in found
    found.clear()
    walk(unrolled(cfg), "")
    assert found and not any(value for _, value in found)


# ------------------------------------------------------------------------------------------------ empatheia


TABLE = re.compile(r"^(coe|content|style)\s+([\d.e+-]+)\s+([\d,]+)\s+([\d.e+-]+)\s+([\d.e+-]+)\s+([\d.]+)\s*$")


@pytest.mark.slow
def test_bench_empatheia_times_the_stage_steps_with_xla_flops_and_mfu(tmp_path, capsys):
    out = tmp_path / "empatheia.json"
    assert bench.main(["empatheia", "--stages", "coe", "--steps", "1", "--repeats", "2", "--peak-size", "512",
                       "--json", str(out), *LLM_ONLY]) == 0
    stdout = capsys.readouterr().out
    assert "no PyTorch Empatheia exists, so no peer" in stdout
    rows = {m.group(1): m.groups()[1:] for m in map(TABLE.match, stdout.splitlines()) if m}
    assert set(rows) == {"coe"}, stdout

    report = json.loads(out.read_text())
    assert report["peer"] is None and report["target"] == "empatheia"
    peak = report["peak"]
    assert peak["peak"] == max(v for v in (peak["jax"], peak["torch"]) if v is not None) > 1e8
    for name, r in report["stages"].items():
        for key in ("step_s", "tokens_per_s", "flops", "flops_per_s", "mfu", "compile_s", "first_loss"):
            assert positive_finite(r[key]), (name, key, r[key])
        assert r["tokens"] == r["batch"] * r["seq_len"] == 4 * 320
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["step_s"])
        assert r["mfu"] == pytest.approx(r["flops"] / r["step_s"] / peak["peak"])
        assert r["mfu"] < 1.5  # above the machine's own matmul peak would mean a wrong count
        # the LLM scans its layers: the count comes from the unrolled twin, which has no loop of matmuls left
        assert r["flops_from"] == "unrolled twin" and r["loops_left"] == 0
        step_ms, tokens_s, gflop, _, mfu = rows[name]
        assert float(step_ms) == pytest.approx(r["step_s"] * 1e3, rel=1e-3)
        assert float(tokens_s.replace(",", "")) == pytest.approx(r["tokens_per_s"], abs=0.51)
        assert float(gflop) == pytest.approx(r["flops"] / 1e9, rel=1e-3)
        assert float(mfu) == pytest.approx(r["mfu"], abs=6e-4)

    # The coe step trains the whole LLM (llm_base; no towers, so no projections): 6 FLOPs per weight of every
    # matmul per token (forward 2, backward 4; the tied embedding is the output matmul) plus the attention's two
    # L x L matmuls (all of the score matrix: the causal mask does not skip work in XLA's program), forward and
    # backward. XLA counts the norms, softmax, cross-entropy and AdamW besides: a few percent at these sizes.
    c = load_config("configs/empatheia_tiny.py", split_overrides(LLM_ONLY)).model
    b, length = 4, 320
    per_layer = (c.hidden_size * c.num_heads * c.head_dim + 2 * c.hidden_size * c.num_kv_heads * c.head_dim
                 + c.num_heads * c.head_dim * c.hidden_size + 3 * c.hidden_size * c.intermediate_size)
    weights = c.num_layers * per_layer + c.vocab_size * c.hidden_size
    hand = 6 * weights * b * length + 12 * c.num_layers * b * c.num_heads * length * length * c.head_dim
    coe = report["stages"]["coe"]
    assert coe["trainable_params"] - weights == (2 * c.num_layers + 1) * c.hidden_size  # + the RMSNorm scales
    assert 1.0 <= coe["flops"] / hand <= 1.15, (coe["flops"], hand)


@pytest.mark.parametrize("stage", ["coe", "content", "style"])
def test_the_synthetic_batch_is_the_pipelines_for_each_stage(stage):
    """Every key the stage's step reads (its own and its target encoders'), with the pipeline's shapes and dtypes,
    full rows of the template: each clip's `<Aud>`/`<Vid>` slot, the CoE target under the loss mask."""
    from merg_jax.bench.empatheia import _load, bench_tokenizer, check_batch, synthetic_batch
    from merg_jax.data.pipeline import PipelineSettings
    from merg_jax.models.empatheia import EmpatheiaConfig
    from merg_jax.train.stages import STAGES
    from merg_jax.train.targets import make_targets
    from merg_jax.train.trainer import stage_data_config, stage_settings

    config = _load(argparse.Namespace(config="configs/empatheia_tiny.py"), [])
    tokenizer = bench_tokenizer(int(config.model.vocab_size))
    s = STAGES[stage]
    spec = PipelineSettings.from_config(stage_data_config(config, s, stage_settings(config, s))).spec
    batch = synthetic_batch(spec, 2, tokenizer)
    check_batch(batch, spec, 2)
    needs = set(s.batch_keys)
    if s.needs_targets:
        needs |= set(make_targets(config, EmpatheiaConfig.from_config(config, tokenizer)).batch_keys)
    assert needs <= set(batch), needs - set(batch)
    ids = tokenizer.special_ids
    for row in range(2):
        n = int(batch["segment_ids"][row].sum())
        assert n > 0.9 * spec.seq_len  # full rows
        assert (batch["media_kind"][row] == 1).sum() == (batch["media_kind"][row] == 2).sum() == spec.max_clips
        assert batch["clip_utterance"][row].tolist() == list(range(1, spec.max_clips + 1))
        target = batch["targets"][row][batch["loss_mask"][row] > 0].tolist()
        assert ids["<emo>"] in target and ids["<response>"] in target and target[-1] == tokenizer.eos_id


@pytest.mark.parametrize("argv, flag", [
    (["--stages", "coe,speech"], "--stages: 'speech' is not a stage this benchmark runs"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--batch", "-1"], "--batch must be >= 0"),
    (["--config.model.no_such_key=1"], "no_such_key"),
])
def test_bench_empatheia_names_the_bad_flag(argv, flag, capsys):
    assert bench.main(["empatheia", *argv]) == 2
    assert flag in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ face


@pytest.mark.slow
def test_bench_face_prints_frames_per_second_and_the_real_time_factor(tmp_path, capsys):
    out = tmp_path / "face.json"
    assert bench.main(["face", "--seconds", "1", "--repeats", "1", "--json", str(out), *FACE_SMALL]) == 0
    stdout = capsys.readouterr().out
    assert "no peer: no PyTorch implementation of this generator exists" in stdout
    report = json.loads(out.read_text())
    assert report["peer"] is None and report["face_config"]["size"] == 32
    rows = report["rows"]
    assert list(rows) == ["content", "motion", "renderer", "end to end"]
    for name, r in rows.items():
        assert r["frames"] == 25 and r["video_s"] == 1.0  # 1 s at 25 fps
        for key in ("seconds", "frames_per_s", "rtf"):
            assert positive_finite(r[key]), (name, key, r[key])
        assert r["rtf"] == pytest.approx(r["seconds"] / 1.0)
        assert r["frames_per_s"] == pytest.approx(25 / r["seconds"])
        assert re.search(rf"^{name}\s+[\d.e+-]+\s+[\d.e+-]+\s+[\d.e+-]+\s*$", stdout, re.MULTILINE), stdout
    assert "2 window(s) of 16 frames (overlap 4), 2 DDIM steps" in stdout
    assert report["end_to_end_rtf"] == rows["end to end"]["rtf"]
    assert stdout.rstrip().splitlines()[-1] == f"end-to-end real-time factor: {report['end_to_end_rtf']:.3f}"


@pytest.mark.parametrize("argv, flag", [
    (["--emotion", "joyful"], "--emotion 'joyful' is not one of"),
    (["--seconds", "0"], "--seconds must be positive"),
    (["--size", "33"], "--size 33"),
    (["--checkpoint", "runs/x", "--config.empatheia.face.size=64"], "--checkpoint takes its config from the run"),
])
def test_bench_face_names_the_bad_flag(argv, flag, capsys):
    assert bench.main(["face", *argv]) == 2
    assert flag in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ --json elsewhere


def test_bench_attention_writes_json(tmp_path, capsys):
    out = tmp_path / "attention.json"
    assert bench.main(["attention", "--lengths", "64", "--heads", "1", "--head-dim", "16", "--repeats", "1",
                       "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["impl"] for r in report["rows"]] == ["blockwise", "xla", "reference"]
    assert [r["ours"] for r in report["rows"]] == [True, False, False]
    ours = report["rows"][0]
    for r in report["rows"]:
        for phase in ("fwd", "fwd_bwd"):
            assert positive_finite(r[phase]["seconds"]) and positive_finite(r[phase]["tflops"])
            assert r[phase]["temp_bytes"] >= 0
            if not r["ours"]:
                assert r["ours_over_peer"][phase] == pytest.approx(r[phase]["seconds"] / ours[phase]["seconds"])
    assert report["versions"]["backend"] == jax.default_backend()


def test_bench_data_writes_json(tmp_path, capsys):
    out = tmp_path / "data.json"
    assert bench.main(["data", "--dialogues", "2", "--batches", "1", "--workers", "0", "--batch-size", "2",
                       "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    (row,) = report["rows"]
    assert row["workers"] == 0 and row["samples"] == 2 and row["skipped"] == 0
    for key in ("startup_s", "seconds", "samples_per_s"):
        assert positive_finite(row[key])
    assert report["ratio"] is None and report["batch_size"] == 2  # one run: no ratio
    assert f"{row['samples_per_s']:.2f}" in capsys.readouterr().out


@pytest.mark.skipif(not HAS_TORCH, reason="the peer side needs torch and transformers")
def test_bench_encoders_writes_json(tmp_path):
    out = tmp_path / "encoders.json"
    assert bench.main(["encoders", "--towers", "vision", "--batch", "2", "--layers", "1", "--hidden", "32", "--heads",
                       "2", "--image-size", "16", "--patch", "8", "--optimizer", "sgd", "--steps", "1", "--repeats",
                       "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    vision = report["towers"]["vision"]
    for phase in ("infer", "train"):
        assert positive_finite(vision[phase]["ours"]) and positive_finite(vision[phase]["peer"])
        assert vision["ratio"][phase] == pytest.approx(vision[phase]["ours"] / vision[phase]["peer"])
    assert vision["max_pooled_diff"] < 1e-4 and vision["num_params"] > 0
    assert list(report["towers"]) == ["vision"] and report["versions"]["torch"]
