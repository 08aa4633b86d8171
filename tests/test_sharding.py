"""Meshes, the rule table, and the LLM sharded over data × fsdp × tensor = 2 × 2 × 2 fake CPU devices."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from llm_testing import random_tokens, tiny_config
from merg_jax.models import Llm
from merg_jax.sharding import (create_sharded, logical_to_spec, make_mesh, resolve_axis_sizes, shard_model,
                               use_rules)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (tests/conftest.py sets XLA_FLAGS)")


def test_axis_sizes_fill_in_the_rest_and_reject_bad_shapes():
    assert resolve_axis_sizes({"data": 2, "fsdp": -1, "tensor": 2}, 16) == {"data": 2, "fsdp": 4, "tensor": 2}
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        resolve_axis_sizes({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match="multiply to 4, but there are 8"):
        resolve_axis_sizes({"data": 2, "fsdp": 2, "tensor": 1}, 8)
    with pytest.raises(ValueError, match="not divisible"):
        resolve_axis_sizes({"data": 3, "fsdp": -1}, 8)


def test_rule_table_maps_logical_names():
    mesh_shape = {"data": 2, "fsdp": 2, "tensor": 2}
    assert logical_to_spec(("layers", "embed", "q_heads"), mesh_shape=mesh_shape) == P(None, "fsdp", "tensor")
    assert logical_to_spec(("batch", "length", "act_embed"), mesh_shape=mesh_shape) == P(("data", "fsdp"), None, None)
    # a dimension the mesh axis does not divide is replicated, not mis-sharded
    assert logical_to_spec(("embed", "kv_heads"), shape=(32, 3), mesh_shape=mesh_shape) == P("fsdp", None)
    # a mesh axis is used once per spec
    assert logical_to_spec(("batch", "embed"), mesh_shape=mesh_shape) == P(("data", "fsdp"), None)
    # size-1 mesh axes drop out
    assert logical_to_spec(("embed", "mlp"), mesh_shape={"data": 8, "fsdp": 1, "tensor": 1}) == P(None, None)
    with pytest.raises(KeyError, match="'nonsense' has no rule"):
        logical_to_spec(("nonsense",))
    with use_rules([("embed", "tensor"), ("mlp", None)]):
        assert logical_to_spec(("embed", "mlp"), mesh_shape=mesh_shape) == P("tensor", None)


EXPECTED_SPECS = {  # from the rule table, for the 2x2x2 mesh and tiny config
    ("embed", "embedding"): P("tensor", "fsdp"),
    ("layers", "attn", "q_proj", "kernel"): P(None, "fsdp", "tensor"),
    ("layers", "attn", "k_proj", "kernel"): P(None, "fsdp", "tensor"),
    ("layers", "attn", "o_proj", "kernel"): P(None, "tensor", "fsdp"),
    ("layers", "mlp", "gate_proj", "kernel"): P(None, "fsdp", "tensor"),
    ("layers", "mlp", "down_proj", "kernel"): P(None, "tensor", "fsdp"),
    ("layers", "attn", "q_proj", "lora_a"): P(None, "fsdp", None),
    ("layers", "attn", "q_proj", "lora_b"): P(None, None, "tensor"),
    ("layers", "input_norm", "scale"): P(None, None),
    ("final_norm", "scale"): P(None),
    ("lm_head", "kernel"): P("fsdp", "tensor"),
}


@needs_8
@pytest.mark.parametrize("scan_layers", [True, False])
def test_sharded_forward_equals_single_device_and_params_follow_the_rules(scan_layers):
    cfg = tiny_config(vocab_size=96, lora_rank=4, scan_layers=scan_layers)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = create_sharded(lambda: Llm(cfg, rngs=nnx.Rngs(0)), mesh)
    single = Llm(cfg, rngs=nnx.Rngs(0))
    for path, var in nnx.to_flat_state(nnx.state(sharded)):
        spec = var[...].sharding.spec
        if path in EXPECTED_SPECS:
            assert spec == EXPECTED_SPECS[path], path
    seen = {path for path, _ in nnx.to_flat_state(nnx.state(sharded))}
    assert set(EXPECTED_SPECS) <= seen
    # the shards are really split: the q kernel's per-device piece is a quarter of it (fsdp x tensor)
    q = sharded.layers.attn.q_proj.kernel[...]
    assert q.addressable_shards[0].data.shape == (q.shape[0], q.shape[1] // 2, q.shape[2] // 2)

    tokens = random_tokens(0, 4, 12, cfg.vocab_size)
    with jax.set_mesh(mesh):
        batch = jax.device_put(tokens, NamedSharding(mesh, P(("data", "fsdp"))))
        logits = nnx.jit(lambda m, t: m(t))(sharded, batch)
    assert logits.sharding.spec == P(("data", "fsdp"), None, "tensor")
    np.testing.assert_allclose(np.asarray(logits), np.asarray(single(tokens)), atol=1e-5)


@needs_8
def test_shard_model_moves_an_existing_model():
    cfg = tiny_config(vocab_size=96)
    model = Llm(cfg, rngs=nnx.Rngs(0))
    tokens = random_tokens(1, 2, 6, cfg.vocab_size)
    expected = model(tokens)
    mesh = make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    shard_model(model, mesh)
    assert model.layers.mlp.up_proj.kernel[...].sharding.spec == P(None, "fsdp", "tensor")
    with jax.set_mesh(mesh):
        np.testing.assert_allclose(nnx.jit(lambda m, t: m(t))(model, tokens), expected, atol=1e-5)


MULTIHOST_WORKER = textwrap.dedent("""
    import sys, jax, numpy as np
    jax.config.update("jax_num_cpu_devices", 4)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from merg_jax.sharding import initialize, make_mesh, create_sharded
    assert initialize()
    from flax import nnx
    from merg_jax.models import Llm, LlmConfig
    cfg = LlmConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                    num_kv_heads=2, head_dim=8, dtype="float32")
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = create_sharded(lambda: Llm(cfg, rngs=nnx.Rngs(0)), mesh)
    tokens = np.arange(4 * 12).reshape(4, 12) % 96
    with jax.set_mesh(mesh):
        sharding = jax.sharding.NamedSharding(mesh, jax.P(("data", "fsdp")))
        batch = jax.make_array_from_callback(tokens.shape, sharding, lambda idx: tokens[idx])
        logits = nnx.jit(lambda m, t: m(t))(model, batch)
        total = jax.jit(lambda x: x.sum(), out_shardings=jax.sharding.NamedSharding(mesh, jax.P()))(logits)
    print("RESULT", jax.process_index(), jax.process_count(), jax.device_count(), float(total), flush=True)
""")


@pytest.mark.slow
def test_two_processes_form_one_eight_device_mesh(tmp_path):
    import portpicker

    port = portpicker.pick_unused_port()
    script = tmp_path / "worker.py"
    script.write_text(MULTIHOST_WORKER)
    procs = []
    for i in range(2):
        env = dict(os.environ, MERG_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", MERG_NUM_PROCESSES="2",
                   MERG_PROCESS_ID=str(i), XLA_FLAGS="", JAX_PLATFORMS="cpu",
                   PYTHONPATH=os.pathsep.join([REPO_ROOT, os.environ.get("PYTHONPATH", "")]))
        # stderr apart: C++ log lines written to a shared stream can land in the middle of our RESULT line
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    results = [line.split() for out, _ in outs for line in out.splitlines() if line.startswith("RESULT")]
    assert sorted(r[1] for r in results) == ["0", "1"]
    assert all(r[2] == "2" and r[3] == "8" for r in results)
    cfg_total = float(results[0][4])
    assert float(results[1][4]) == cfg_total
    # the same model on one device gives the same sum
    cfg = tiny_config(vocab_size=96)
    single = Llm(cfg, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.arange(4 * 12).reshape(4, 12) % 96)
    np.testing.assert_allclose(cfg_total, float(single(tokens).sum()), rtol=1e-4, atol=1e-2)


@needs_8
def test_adam_moments_are_sharded_like_their_parameters():
    """`init_optimizer_state` (the trainer's) places each moment like its parameter; plain `jit(tx.init)`
    replicates them all, i.e. every device of an FSDP mesh would hold the whole optimiser state."""
    from merg_jax.train.optimizer import init_optimizer_state, make_optimizer

    mesh = make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    model = create_sharded(lambda: Llm(tiny_config(lora_rank=4), rngs=nnx.Rngs(0)), mesh)
    trainable = nnx.state(model, nnx.LoRAParam)
    tx = make_optimizer(dict(steps=10, learning_rate=1e-3, warmup_frac=0.1, grad_clip=1.0, weight_decay=0.1))
    with jax.set_mesh(mesh):
        state = init_optimizer_state(tx, trainable, mesh)
        plain = jax.jit(tx.init)(trainable)
    params = jax.tree.leaves(trainable)
    adam = next(s for s in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "mu")) if hasattr(s, "mu"))
    for moments in (adam.mu, adam.nu):
        leaves = jax.tree.leaves(moments)
        assert len(leaves) == len(params)
        for p, m in zip(params, leaves):
            assert m.sharding.is_equivalent_to(p.sharding, p.ndim), (p.sharding.spec, m.sharding.spec)
    assert any(not p.sharding.is_fully_replicated for p in params)  # the check has something to see
    assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(plain))
