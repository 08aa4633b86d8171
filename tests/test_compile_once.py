"""Compile once: a training stage compiles its step once per shape, and a Responder's second reply compiles
nothing (merg_jax.compile_log counts the XLA compilations JAX reports)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import pytest

from merg_jax.compile_log import CompileLog


def test_compile_log_counts_each_program_and_shape():
    double = jax.jit(lambda x: x * 2)
    x3, x4 = jnp.ones(3), jnp.ones(4)
    with CompileLog() as log:
        double(x3)
        double(x3)
        double(x4)
    assert log.counts()["jit(<lambda>)"] == 2 and len(log.seconds) == len(log.names)
    with CompileLog() as again:
        double(x3)
        double(x4)
    assert again.names == []


@pytest.mark.slow
def test_a_stage_compiles_its_step_once(mini_root, tmp_path):
    from merg_jax.sharding import single_device_mesh
    from merg_jax.train.trainer import train_stages
    from tests.trainer_testing import trainer_config

    config = trainer_config(mini_root, tmp_path / "run", "--config.stages=coe", "--config.stage.coe.steps=5",
                            "--config.checkpoint.every_steps=10")
    with CompileLog() as log:
        train_stages(config, mesh=single_device_mesh(), emit=lambda line: None)
    steps = {name: n for name, n in log.counts().items() if "step" in name}
    assert steps, log.counts()
    assert all(n == 1 for n in steps.values()), steps  # five steps, one compilation of each step program


@pytest.mark.slow
def test_a_second_reply_compiles_nothing(trained_run, mini_root, tmp_path):
    from merg_jax.infer.bundle import load_model
    from merg_jax.infer.respond import Responder

    run, _ = trained_run
    responder = Responder(load_model(run))
    conversations = json.loads((mini_root / "test.json").read_text())
    first, second = str(conversations[0]["conversation_id"]), str(conversations[-1]["conversation_id"])
    responder(mini_root / "test.json", conversation=first, out=tmp_path / "a")
    with CompileLog() as log:
        responder(mini_root / "test.json", conversation=first, out=tmp_path / "b")
    assert log.names == [], log.counts()
    with CompileLog() as other:  # another dialogue: other lengths, the same programs
        responder(mini_root / "test.json", conversation=second, out=tmp_path / "c")
    assert other.names == [], other.counts()
