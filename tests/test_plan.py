"""`merg-jax plan` (merg_jax/plan): the 7B recipe's per-device state against a count by hand, the activation count
against JAX's saved residuals and XLA's compiled memory analysis, and the command end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from merg_jax.config import load_config
from merg_jax.plan import TARGETS, plan_targets
from merg_jax.plan.cli import main as plan_main

RECIPE = "configs/empatheia_7b.py"


def hand_count(fsdp: int) -> dict[str, float]:
    """The 7B recipe's parameters by hand from configs/empatheia_7b.py, and their per-device bytes (float32) on a
    pure-FSDP mesh of `fsdp` devices.

    Rule table (merg_jax/sharding/rules.py) on a mesh without `tensor`: only `embed` → fsdp splits anything, and it
    does for every `embed` dimension here (4096, 1280 and 768 all divide by 8 and 64). `vocab`, `q_heads`,
    `kv_heads`, `mlp` → tensor, absent; `layers`, `norm`, `lora_rank` → None. So a leaf is either split 1/fsdp
    (it has an `embed` axis: S below) or replicated (R below): LoRA B of q/k/v is (lora_rank, q/kv_heads) and A
    of o is (q_heads, lora_rank), both replicated; every bias on q_heads/mlp and every norm too.
    """
    S, R = {}, {}  # elements split over fsdp / replicated, per group
    # --- LLM (Vicuna-7B): vocab 32128 (32000 + 7 specials, padded to 128), hidden 4096, MLP 11008, 32 layers
    D, F, V, L, r = 4096, 11008, 32128, 32, 8
    S["llm_base"] = V * D + L * (4 * D * D + 3 * D * F) + D * V  # embedding, q k v o, gate up down, lm_head
    R["llm_base"] = L * 2 * D + D  # input + post-attention norms, final norm
    S["lora"] = L * (3 * D * r + r * D)  # A of q, k, v (embed, lora_rank); B of o (lora_rank, embed)
    R["lora"] = L * (3 * r * D + D * r)  # B of q, k, v; A of o
    # --- ImageBind-huge towers: layer = q k v o kernels, o bias, fc1, fc2 and its bias (split); q k v biases,
    # fc1 bias, two LayerNorms (replicated)
    def tower_layer(h, i, bias_kv=False):
        return 4 * h * h + h + 2 * h * i + h, 3 * h + i + 4 * h + (2 * h if bias_kv else 0)

    h, i = 1280, 5120  # vision: 32 layers, 14x14 patches over 2-frame tubelets of 3 channels, 257 tokens, 1024-d head
    s, rep = tower_layer(h, i)
    S["encoders"] = 32 * s + h + 257 * h + 14 * 14 * 3 * 2 * h + h * 1024  # + class, positions, patch, head
    R["encoders"] = 32 * rep + 4 * h  # + pre and post norms
    h, i = 768, 3072  # audio: 12 layers with learned bias_k / bias_v, 16x16 patches, 229 tokens, 1024-d head
    s, rep = tower_layer(h, i, bias_kv=True)
    S["encoders"] += 12 * s + h + 229 * h + 16 * 16 * h + h * 1024
    R["encoders"] += 12 * rep + 2 * h + 2 * h  # patch norm, final norm
    # --- projections: 1024 -> 4096 linear with bias, audio and video (kernel (None, embed), bias (embed,))
    S["projections"] = 2 * (1024 * D + D)
    R["projections"] = 0
    # --- Content Synchronizer / Style Disentangler: hidden 768, MLP 3072, 2 encoder + 2 decoder layers
    h, i = 768, 3072
    enc_s, enc_r = tower_layer(h, i)
    dec_s, dec_r = 2 * (4 * h * h + h) + 2 * h * i + h, 2 * 3 * h + i + 6 * h  # self + cross attention, 3 norms
    mem_s = D * h + h * h + h + 3 * h + 2 * enc_s  # ffn_in, ffn_out (+ its bias), type embedding, encoder
    mem_r = h + 2 * h + 2 * enc_r  # ffn_in bias (mlp), norm
    S["synchronizer"] = mem_s + 2 * (2 * dec_s) + 256 * h + 200 * h + h * 512 + h * 256 + 2 * h  # queries, heads
    R["synchronizer"] = mem_r + 2 * (2 * dec_r + 2 * h) + 512 + 256 + 2
    S["disentangler"] = mem_s + 2 * dec_s + 4 * h + 2 * (2 * h * 256)  # 4 queries; style heads from [E; P]
    R["disentangler"] = mem_r + 2 * dec_r + 2 * h + 2 * 256
    S["classifiers"] = h * (4 + 32 + 7 + 2 + 3)  # age, emotion32, emotion7, gender, timbre
    R["classifiers"] = 4 + 32 + 7 + 2 + 3
    per_device = {g: 4 * (S[g] / fsdp + R[g]) for g in S}
    trained = per_device["lora"] + per_device["projections"]
    return {"count": sum(S.values()) + sum(R.values()), "params_bytes": sum(per_device.values()),
            "coe_trained_count": S["lora"] + R["lora"] + S["projections"], "coe_trained_bytes": trained,
            # Adam: mu and nu per trained weight, plus two int32 step counters (Adam's and the schedule's)
            "coe_optimizer_bytes": 2 * trained + 2 * 4}


@pytest.fixture(scope="module")
def recipe():
    return load_config(RECIPE)


def test_per_device_state_matches_a_count_by_hand(recipe):
    plan = plan_targets(recipe, [TARGETS["v5p-128"], TARGETS["8xh100"]])
    assert plan.param_count == hand_count(64)["count"] == 7_569_632_562  # `merg-jax describe-model`'s total
    for p, fsdp in zip(plan.targets, (64, 8)):
        hand = hand_count(fsdp)
        s = p.state
        assert s.groups == ("lora", "projections") and s.trainable_count == hand["coe_trained_count"]
        assert s.params_bytes == pytest.approx(hand["params_bytes"], rel=1e-12)
        assert s.gradient_bytes == pytest.approx(hand["coe_trained_bytes"], rel=1e-12)
        assert s.optimizer_bytes == pytest.approx(hand["coe_optimizer_bytes"], rel=1e-12)
    # v5p-128: 470.6 MiB of parameters per chip; 8xh100: the 30.3 GB of float32 weights over 8 (3.54 GiB)
    assert plan.targets[0].state.params_bytes == pytest.approx(493_408_392)
    # Only what a stage trains has moments: the CS's stage (b) carries the CS's, stage a's LoRA has none there.
    stages = {s.stage: s for s in plan.targets[0].stages}
    assert stages["content"].groups == ("synchronizer",) and stages["content"].optimizer_bytes < 2.1 * stages[
        "content"].gradient_bytes


def test_the_layer_count_is_what_jax_saves(recipe):
    """The per-layer terms of the activation model, in elements, against the residuals JAX saves for the backward of a
    small LLM with the recipe's LoRA and remat policy (the stacked scan outputs are the per-layer residuals; JAX
prints them with `print_saved_residuals`)."""
    import contextlib
    import io
    import math
    import re

    import jax
    import jax.ad_checkpoint
    import jax.numpy as jnp
    from flax import nnx

    from merg_jax.config import llm_config
    from merg_jax.models.llm import Llm
    from merg_jax.plan.activations import llm_activations
    from merg_jax.train.stages import lm_loss_terms

    cfg = llm_config(recipe).replace(vocab_size=512, hidden_size=256, intermediate_size=688, num_layers=3,
                                     num_heads=2, num_kv_heads=1, head_dim=128)
    assert cfg.remat == "dots_no_batch" and cfg.lora_targets == ("q", "k", "v", "o") and cfg.lora_rank == 8
    graphdef, lora, rest = nnx.split(Llm(cfg, rngs=nnx.Rngs(0)), nnx.LoRAParam, ...)
    b, t = 2, 64
    tokens = jnp.zeros((b, t), jnp.int32)

    def loss(lora, rest):
        out = nnx.merge(graphdef, lora, rest).forward(tokens, dropout_rng=jax.random.key(1))
        return lm_loss_terms(out.logits, tokens, jnp.ones((b, t)))[0]

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        jax.ad_checkpoint.print_saved_residuals(loss, lora, rest)  # lines like "bf16[3,128,256] output of scan ..."
    shapes = [[int(n) for n in m.group(1).split(",")] for line in printed.getvalue().splitlines()
              if "output of scan" in line and (m := re.match(r"\w+\[([\d,]+)\]", line))]
    per_layer = sum(math.prod(shape[1:]) for shape in shapes if shape[0] == cfg.num_layers)
    act = llm_activations(cfg, tokens=t, mesh_shape={})
    assert per_layer == b * t * sum(term.elements for term in act.layer)  # exactly the documented set


@pytest.mark.slow
def test_the_activation_count_agrees_with_the_compiled_memory_analysis():
    """The real stage-a step of scaled-down copies, compiled for 8 fake CPU devices (fsdp=4 × tensor=2, in a
    subprocess): the slopes of XLA's temporary memory per layer and per row within 10% of the count, and its
    argument bytes within 2% of the state count. ~30 s."""
    from merg_jax.plan.crosscheck import run_crosscheck

    (m,) = run_crosscheck(RECIPE, meshes=[{"data": 1, "fsdp": 4, "tensor": 2}], timeout=300)
    assert m["mesh"] == {"data": 1, "fsdp": 4, "tensor": 2}
    assert abs(m["layer_bytes_per_token"]["ratio"] - 1) < 0.10, m["layer_bytes_per_token"]
    assert abs(m["row_bytes_per_token"]["ratio"] - 1) < 0.10, m["row_bytes_per_token"]
    assert abs(m["argument_bytes"]["ratio"] - 1) < 0.02, m["argument_bytes"]


def test_the_command_plans_the_7b_recipe_on_three_targets(tmp_path):
    out, md = tmp_path / "plan.json", tmp_path / "scaling.md"
    proc = subprocess.run([sys.executable, "-m", "merg_jax.cli", "plan", "--no-crosscheck", "--json", str(out),
                           "--markdown", str(md)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["remat"] == "dots_no_batch" and doc["stage"] == "coe" and doc["tokens_per_row"] == 512
    assert set(doc["targets"]) == {"v5p-128", "v5e-256", "8xh100"}
    for name, t in doc["targets"].items():
        assert t["fits"] and t["max_global_batch"] >= 8 and t["planned_batch"] >= 8, name
        assert t["bytes_per_device"]["peak_at_planned_batch"] <= t["bytes_per_device"]["budget"], name
        assert 0 < t["step_time_s"]["planned_batch"] < t["step_time_s"]["largest_batch"], name
        assert t["mfu"] == t["mfu_reference"]["mfu"] and "maxtext" in t["mfu_reference"]["source"].lower()
    assert doc["targets"]["v5p-128"]["bytes_per_device"]["params"] == pytest.approx(hand_count(64)["params_bytes"])
    assert doc["targets"]["8xh100"]["planned_batch"] == 8 and doc["targets"]["v5p-128"]["planned_batch"] == 64
    # The batch that fits and the remat policy are named in what the command prints.
    assert "fits at batch 64" in proc.stdout and "remat dots_no_batch" in proc.stdout
    text = md.read_text()
    assert text.startswith("# Scaling plan") and "merg-jax plan --no-crosscheck" in text and "MaxText" in text


def test_an_unknown_target_is_an_error_naming_the_flag(capsys):
    assert plan_main(["--targets", "v5p-128,tpu-v9000", "--no-crosscheck"]) == 2
    err = capsys.readouterr().err
    assert "--targets" in err and "'tpu-v9000'" in err and "v5e-256" in err
