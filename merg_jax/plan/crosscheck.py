"""The analytic activation count checked against XLA: the real stage-a training step of scaled-down copies of the
recipe, compiled for 8 fake CPU devices, and its `compiled.memory_analysis()`.

    results = run_crosscheck("configs/empatheia_7b.py", meshes=[{"fsdp": 8}, {"fsdp": 4, "tensor": 2}])
    # in a subprocess (the fake devices need XLA_FLAGS before JAX starts):
    #   XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m merg_jax.plan.crosscheck \
    #       --config configs/empatheia_7b.py --mesh fsdp=8 --mesh fsdp=4,tensor=2

The copy keeps the recipe's structure — LoRA rank and targets, remat policy, scanned layers, float32 master
weights, the CS/SD at their size, Adam — and shrinks the LLM (hidden 512, MLP 1376, 4 heads of 128, vocabulary
4096, 256 tokens) and leaves the towers out (they keep no activations; see `activations.py`). It computes in float32:
XLA:CPU runs bf16 matmuls in float32 and keeps their float32 outputs, so a bf16 copy would measure CPU's element
size rather than the count; the count is evaluated with the copy's own dtypes.

The step (`merg_jax.train.stage_step.make_train_step` of stage "coe", what the trainer jits) is lowered with
abstract arguments sharded by the rule table and compiled three times: (2 layers, 2 rows per device), (2 layers, 4
rows), (4 layers, 4 rows). XLA's temporary memory then gives two slopes that the model predicts with no constant
to fit: per layer per token (the layer's saved set) and per row per token (all of a row's activations). The
compiled argument size is checked against the state count as well (the parameters the step reads, Adam's moments
and the batch, per device, from the rule table's shardings).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

FAKE_DEVICES = 8
SCALED = dict(hidden_size=512, intermediate_size=1376, num_heads=4, head_dim=128, vocab_size=4096)
SEQ_LEN = 256
POINTS = ((2, 2), (2, 4), (4, 4))  # (layers, rows per device)
DEFAULT_MESHES = ({"data": 1, "fsdp": 8, "tensor": 1}, {"data": 1, "fsdp": 4, "tensor": 2})
STAGE_A_READS = ("encoders", "projections", "lora", "llm_base")
BATCH_KEYS_INT = ("tokens", "targets", "segment_ids", "positions", "media_clip", "media_kind")


def scaled_config(config, num_layers: int):
    """A scaled-down copy of `config` (see the module docstring): same recipe, small LLM, no towers, float32."""
    import ml_collections

    c = ml_collections.ConfigDict(config.to_dict())
    ratio = max(c.model.num_heads // (c.model.get("num_kv_heads") or c.model.num_heads), 1)
    c.model.update(dict(SCALED, num_layers=num_layers, num_kv_heads=max(SCALED["num_heads"] // ratio, 1),
                        dtype="float32"))
    c.train.seq_len = SEQ_LEN
    c.data.seq_len = SEQ_LEN
    c.empatheia.vision = {}
    c.empatheia.audio = {}
    v = SCALED["vocab_size"]  # the tokenizer's ids of <response> ... </emo>, which a real run takes from the tokenizer
    c.empatheia.features.update(dict(response_id=v - 4, response_end_id=v - 3, emo_id=v - 2, emo_end_id=v - 1))
    return c


def compile_point(config, mesh_shape: Mapping[str, int], num_layers: int, rows: int) -> dict:
    """Compiles the stage-a step of the scaled copy on the fake devices; XLA's per-device memory figures."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P

    from merg_jax.models.empatheia import Empatheia, EmpatheiaConfig
    from merg_jax.models.param_groups import group_filter
    from merg_jax.plan.state import moment_owner, path_names, stage_settings_of
    from merg_jax.sharding import make_mesh, state_shardings
    from merg_jax.train.batching import BATCH_SPEC
    from merg_jax.train.optimizer import make_optimizer
    from merg_jax.train.stage_step import make_train_step, split_for_stage
    from merg_jax.train.stages import STAGES

    c = scaled_config(config, num_layers)
    mesh = make_mesh(dict(mesh_shape), devices=jax.devices()[:FAKE_DEVICES])
    abstract = nnx.eval_shape(lambda: Empatheia(EmpatheiaConfig.from_config(c), rngs=nnx.Rngs(0)))
    graphdef, trainable, frozen = split_for_stage(abstract, group_filter(*stage_settings_of(c, "coe")[1]))

    def placed(state):
        return jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s), state,
                            state_shardings(state, mesh))

    trainable, frozen = placed(trainable), placed(frozen)
    tx = make_optimizer(c.train)
    # Adam's moments sharded like their parameters (what the plan counts), counters replicated.
    owners = {path_names(path): x for path, x in jax.tree_util.tree_flatten_with_path(trainable)[0]}
    replicated = NamedSharding(mesh, P())

    def moment(path, a):
        owner = moment_owner(path, a.shape, owners)
        return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=owner.sharding if owner is not None else replicated)

    opt = jax.tree_util.tree_map_with_path(moment, jax.eval_shape(tx.init, trainable))
    batch_rows = rows * mesh.shape["data"] * mesh.shape["fsdp"]
    split = NamedSharding(mesh, BATCH_SPEC)
    batch = {k: jax.ShapeDtypeStruct((batch_rows, SEQ_LEN), jnp.int32, sharding=split) for k in BATCH_KEYS_INT}
    batch["loss_mask"] = jax.ShapeDtypeStruct((batch_rows, SEQ_LEN), jnp.float32, sharding=split)
    rng = jax.eval_shape(lambda: jax.random.key(0))
    step = make_train_step(STAGES["coe"], graphdef, tx)
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        memory = step.lower(trainable, frozen, opt, batch, rng).compile().memory_analysis()
    return {"layers": num_layers, "rows": rows, "temp_bytes": int(memory.temp_size_in_bytes),
            "argument_bytes": int(memory.argument_size_in_bytes), "compile_s": round(time.perf_counter() - t0, 2)}


def measure(config, mesh_shape: Mapping[str, int]) -> dict:
    """The three compiles on one mesh, the slopes they give and the count's predictions of them."""
    from merg_jax.models.empatheia import EmpatheiaConfig
    from merg_jax.plan.activations import llm_activations
    from merg_jax.plan.state import abstract_model, sharded_leaves, stage_state

    mesh_shape = {"data": 1, "fsdp": 1, "tensor": 1, **{k: int(v) for k, v in mesh_shape.items()}}
    points = [compile_point(config, mesh_shape, layers, rows) for layers, rows in POINTS]
    (l_a, r_a), (_, r_b), (l_c, _) = POINTS
    by = {(p["layers"], p["rows"]): p for p in points}
    tokens = SEQ_LEN
    row_slope = (by[(l_a, r_b)]["temp_bytes"] - by[(l_a, r_a)]["temp_bytes"]) / (r_b - r_a) / tokens
    layer_slope = (by[(l_c, r_b)]["temp_bytes"] - by[(l_a, r_b)]["temp_bytes"]) / (l_c - l_a) / r_b / tokens
    small = scaled_config(config, l_a)
    act = llm_activations(EmpatheiaConfig.from_config(small).llm, tokens=tokens, mesh_shape=mesh_shape)
    model = abstract_model(small)
    leaves = sharded_leaves(model, mesh_shape)
    state = stage_state(small, model, leaves, "coe")
    # jit drops the arguments a program never reads: stage a reads the towers, the projections and the LLM (the
    # CS/SD are in its frozen state but unused), its Adam state and the batch.
    read = sum(leaf.bytes_per_device for leaf in leaves if leaf.group in STAGE_A_READS)
    batch_bytes = (len(BATCH_KEYS_INT) + 1) * 4 * r_b * tokens
    counted_args = read + state.optimizer_bytes + batch_bytes
    return {
        "mesh": mesh_shape, "points": points, "seq_len": tokens, "scaled": SCALED,
        "layer_bytes_per_token": {"compiled": layer_slope, "analytic": act.layer_bytes_per_token,
                                  "ratio": layer_slope / act.layer_bytes_per_token},
        "row_bytes_per_token": {"compiled": row_slope, "analytic": act.per_token_bytes,
                                "ratio": row_slope / act.per_token_bytes, "layers": l_a},
        "argument_bytes": {"compiled": by[(l_a, r_b)]["argument_bytes"], "analytic": counted_args,
                           "ratio": by[(l_a, r_b)]["argument_bytes"] / counted_args},
    }


def parse_mesh(text: str) -> dict[str, int]:
    """`fsdp=4,tensor=2` → {"data": 1, "fsdp": 4, "tensor": 2} (8 devices in all)."""
    sizes = {"data": 1, "fsdp": 1, "tensor": 1}
    for part in text.split(","):
        name, _, size = part.partition("=")
        if name.strip() not in sizes or not size.strip().isdigit():
            raise ValueError(f"--mesh {text!r}: expected axis=size pairs over data, fsdp, tensor, e.g. fsdp=4,tensor=2")
        sizes[name.strip()] = int(size)
    if sizes["data"] * sizes["fsdp"] * sizes["tensor"] != FAKE_DEVICES:
        raise ValueError(f"--mesh {text!r}: the sizes must multiply to the {FAKE_DEVICES} fake devices")
    return sizes


def mesh_flag(mesh: Mapping[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in mesh.items())


def run_crosscheck(config_path: str, overrides: Sequence[str] = (), *, meshes=DEFAULT_MESHES,
                   timeout: float = 600.0) -> list[dict]:
    """`measure` for each mesh, in a fresh Python with 8 fake CPU devices (XLA_FLAGS must be set before JAX starts,
    and this process may already have started it with other devices)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
                         f"--xla_force_host_platform_device_count={FAKE_DEVICES}".strip())
    cmd = [sys.executable, "-m", "merg_jax.plan.crosscheck", "--config", config_path]
    for mesh in meshes:
        cmd += ["--mesh", mesh_flag(mesh)]
    cmd += [f"--{o}" if not o.startswith("--") else o for o in overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"the compiled cross-check failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    from merg_jax.config import load_config, split_overrides

    p = argparse.ArgumentParser(prog="python -m merg_jax.plan.crosscheck", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/empatheia_7b.py")
    p.add_argument("--mesh", action="append", default=None, help="axis=size,... over 8 devices (repeatable)")
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    import jax

    if jax.device_count() < FAKE_DEVICES:
        p.error(f"needs {FAKE_DEVICES} devices: set XLA_FLAGS=--xla_force_host_platform_device_count={FAKE_DEVICES}")
    config = load_config(args.config, split_overrides(rest))
    meshes = [parse_mesh(m) for m in args.mesh] if args.mesh else list(DEFAULT_MESHES)
    print(json.dumps([measure(config, mesh) for mesh in meshes]))
    return 0


__all__ = ["DEFAULT_MESHES", "POINTS", "SCALED", "compile_point", "measure", "parse_mesh", "run_crosscheck",
           "scaled_config"]


if __name__ == "__main__":
    sys.exit(main())
