"""Hugging Face LLaMA import/export: round trips, transformers compatibility, sharded files, bf16, errors, mesh
placement, LoRA merging, atomic writes and the CLI."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hf_llama_reference import hf_logits, make_hf_llama, random_tokens
from jax.sharding import PartitionSpec as P

from merg_jax.convert import cli, hf_llama, llm_config_from_hf, llm_config_to_hf, load_hf_llama, save_hf_llama
from merg_jax.convert.safetensors_io import SafetensorsReader, TensorSpec, read_header, write_safetensors
from merg_jax.models import Llm, LlmConfig
from merg_jax.sharding import make_mesh, named_sharding

TOL = 1e-4
needs_8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (tests/conftest.py sets XLA_FLAGS)")


def flat_params(model) -> dict:
    return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}


def assert_same_params(a, b):
    fa, fb = flat_params(a), flat_params(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        assert fa[k].dtype == fb[k].dtype and fa[k].shape == fb[k].shape, k
        assert np.array_equal(fa[k].view(np.uint8), fb[k].view(np.uint8)), f"{k} differs"


def file_tensors(path) -> dict[str, np.ndarray]:
    """Every tensor of an HF directory, as numpy copies."""
    with SafetensorsReader() as reader:
        return {k: np.array(reader.array(v)) for k, v in hf_llama.checkpoint_tensors(path).items()}


def logits(model, tokens):
    return np.asarray(nnx.jit(lambda m, t: m(t))(model, jnp.asarray(tokens)))


def load32(path, **kw):
    return load_hf_llama(path, dtype="float32", compute_dtype="float32", **kw)


# ---------------------------------------------------------------------------------------------------- round trips


def test_import_export_import_is_bit_exact(tmp_path):
    src, _ = make_hf_llama(tmp_path, num_key_value_heads=2, attention_bias=True, mlp_bias=True, head_dim=16)
    model, cfg = load32(src)
    out = save_hf_llama(model, tmp_path / "out")
    again, cfg2 = load32(out)
    assert cfg2 == cfg
    assert_same_params(model, again)
    # The exported files hold exactly the original tensors, and a transformers-readable config.
    original, exported = file_tensors(src), file_tensors(out)
    assert original.keys() == exported.keys()
    for k in original:
        assert original[k].dtype == exported[k].dtype and np.array_equal(original[k], exported[k]), k


def test_fresh_model_round_trips_in_bfloat16_tied(tmp_path):
    cfg = LlmConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=3, num_heads=4, num_kv_heads=1,
                    tie_embeddings=True, param_dtype="bfloat16", dtype="float32", rope_theta=5e5,
                    rope_llama3_scaling=(8.0, 1.0, 4.0, 64), max_position_embeddings=256)
    model = Llm(cfg, rngs=nnx.Rngs(3))
    out = save_hf_llama(model, tmp_path / "bf16")
    assert read_header(out / "model.safetensors")[0]["model.embed_tokens.weight"].dtype == jnp.bfloat16
    assert "lm_head.weight" not in hf_llama.checkpoint_tensors(out)
    again, cfg2 = load_hf_llama(out, dtype="bfloat16", compute_dtype="float32")
    assert cfg2 == cfg
    assert_same_params(model, again)


def test_export_loads_in_transformers_with_same_logits(tmp_path):
    from transformers import LlamaForCausalLM

    scaling = dict(rope_type="llama3", factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=16)
    src, hf = make_hf_llama(tmp_path, num_key_value_heads=2, rope_scaling=scaling, tie_word_embeddings=True)
    model, _ = load32(src)
    out = save_hf_llama(model, tmp_path / "out")
    hf2 = LlamaForCausalLM.from_pretrained(out).eval()
    assert hf2.config.rope_parameters["rope_type"] == "llama3"
    assert hf2.config.tie_word_embeddings and hf2.config.num_key_value_heads == 2
    tokens = random_tokens(2, 40, 97, seed=7)
    ref = hf_logits(hf, tokens)
    np.testing.assert_array_equal(hf_logits(hf2, tokens), ref)
    np.testing.assert_allclose(logits(model, tokens), ref, atol=TOL, rtol=0)


def test_sharded_checkpoints_load_and_save(tmp_path):
    from transformers import LlamaForCausalLM

    src, hf = make_hf_llama(tmp_path, max_shard_size="30KB", num_key_value_heads=2)
    assert (src / "model.safetensors.index.json").is_file(), "transformers did not shard; test is vacuous"
    model, _ = load32(src)
    tokens = random_tokens(1, 8, 97, seed=8)
    np.testing.assert_allclose(logits(model, tokens), hf_logits(hf, tokens), atol=TOL, rtol=0)

    out = save_hf_llama(model, tmp_path / "out", max_shard_size="20KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 2 and set(index["weight_map"].values()) == set(shards)
    assert not (out / "model.safetensors").exists()
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in hf_llama.checkpoint_tensors(out).values())
    for shard in shards:  # every shard respects the limit unless it holds one oversized tensor
        infos = read_header(out / shard)[0]
        assert len(infos) == 1 or sum(t.nbytes for t in infos.values()) <= 20_000
    assert_same_params(model, load32(out)[0])
    np.testing.assert_array_equal(hf_logits(LlamaForCausalLM.from_pretrained(out).eval(), tokens),
                                  hf_logits(hf, tokens))


def test_bfloat16_checkpoint_loads(tmp_path):
    src, hf = make_hf_llama(tmp_path, dtype="bfloat16", num_key_value_heads=2)  # hf holds the rounded weights
    assert read_header(src / "model.safetensors")[0]["model.norm.weight"].dtype == jnp.bfloat16
    model, _ = load32(src)
    assert model.embed.embedding[...].dtype == jnp.float32
    tokens = random_tokens(2, 8, 97, seed=9)
    np.testing.assert_allclose(logits(model, tokens), hf_logits(hf, tokens), atol=TOL, rtol=0)
    # Kept in bfloat16, an export reproduces the file's bytes.
    model16, cfg16 = load_hf_llama(src, dtype="bfloat16")
    assert cfg16.param_dtype == "bfloat16"
    out = save_hf_llama(model16, tmp_path / "out")
    a, b = file_tensors(src), file_tensors(out)
    assert a.keys() == b.keys() and all(np.array_equal(a[k].view(np.uint16), b[k].view(np.uint16)) for k in a)


def test_reader_matches_safetensors_library(tmp_path):
    from safetensors.numpy import load_file

    src, _ = make_hf_llama(tmp_path, attention_bias=True)
    ours = file_tensors(src)
    theirs = load_file(src / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(np.array_equal(ours[k], theirs[k]) for k in ours)
    # ...and our writer's files read back in the library (float32 and bfloat16 alike).
    arrs = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones((0, 4), np.float16)}
    write_safetensors(tmp_path / "x.safetensors", [TensorSpec(k, v.shape, v.dtype, lambda v=v: v)
                                                   for k, v in arrs.items()], metadata={"format": "pt"})
    back = load_file(tmp_path / "x.safetensors")
    assert all(np.array_equal(back[k], v) and back[k].dtype == v.dtype for k, v in arrs.items())


# ---------------------------------------------------------------------------------------------------- config mapping


def test_config_mapping_transformers4_and_5_styles():
    base = dict(model_type="llama", vocab_size=10, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=4096, hidden_act="silu")
    llama3 = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)
    v4 = llm_config_from_hf({**base, "rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", **llama3}})
    v5 = llm_config_from_hf({**base, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, **llama3}})
    assert v4 == v5 and v4.rope_theta == 5e5 and v4.rope_llama3_scaling == (8.0, 1.0, 4.0, 8192)
    assert v4.num_kv_heads == 2 and v4.head_dim == 8 and not v4.tie_embeddings
    plain = llm_config_from_hf(base, lora_rank=8, remat="full")
    assert plain.rope_theta == 10000.0 and plain.rope_llama3_scaling is None and plain.lora_rank == 8
    assert llm_config_from_hf(llm_config_to_hf(v5)) == v5
    # Old-style `type` key, no original length: transformers' default is max_position_embeddings.
    old = llm_config_from_hf({**base, "rope_scaling": {"type": "llama3", **{k: v for k, v in llama3.items()
                                                                            if k.startswith(("f", "l", "h"))}}})
    assert old.rope_llama3_scaling == (8.0, 1.0, 4.0, 4096)


@pytest.mark.parametrize("change, match", [
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), r"rope_scaling\.rope_type='yarn'"),
    (dict(rope_parameters={"rope_type": "dynamic", "rope_theta": 1.0, "factor": 2.0}),
     r"rope_parameters\.rope_type='dynamic'"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), r"rope_scaling.*low_freq_factor"),
    (dict(hidden_act="gelu"), r"hidden_act='gelu'"),
    (dict(model_type="mistral"), r"model_type='mistral'"),
])
def test_unsupported_config_fields_are_named(change, match):
    base = dict(vocab_size=10, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2)
    with pytest.raises(ValueError, match=match):
        llm_config_from_hf({**base, **change})


def test_shape_fields_cannot_be_overridden(tmp_path):
    src, _ = make_hf_llama(tmp_path)
    with pytest.raises(ValueError, match=r"num_layers.*config.json"):
        load_hf_llama(src, num_layers=1)
    with pytest.raises(ValueError, match="unknown keys"):
        load_hf_llama(src, no_such_field=1)


# ---------------------------------------------------------------------------------------------------- errors


def _rewrite(src, edit) -> None:
    """Rewrites `src/model.safetensors` with `edit(dict of tensors)` applied."""
    tensors = edit(file_tensors(src))
    os.remove(src / "model.safetensors")
    write_safetensors(src / "model.safetensors", [TensorSpec(k, v.shape, v.dtype, lambda v=v: v)
                                                  for k, v in tensors.items()], metadata={"format": "pt"})


def test_unknown_tensor_is_an_error_naming_it(tmp_path):
    src, _ = make_hf_llama(tmp_path)
    _rewrite(src, lambda t: {**t, "model.layers.0.self_attn.q_norm.weight": np.ones(8, np.float32)})
    with pytest.raises(ValueError, match=r"unknown tensors.*model\.layers\.0\.self_attn\.q_norm\.weight"):
        load32(src)


def test_missing_tensor_is_an_error_naming_it(tmp_path):
    src, _ = make_hf_llama(tmp_path)
    _rewrite(src, lambda t: {k: v for k, v in t.items() if k != "model.layers.1.mlp.up_proj.weight"})
    with pytest.raises(ValueError, match=r"missing tensors: model\.layers\.1\.mlp\.up_proj\.weight"):
        load32(src)


def test_wrong_shape_is_an_error_naming_it(tmp_path):
    src, _ = make_hf_llama(tmp_path)
    _rewrite(src, lambda t: {**t, "model.norm.weight": np.ones(31, np.float32)})
    with pytest.raises(ValueError, match=r"model\.norm\.weight in model\.safetensors: \[31\], expected \[32\]"):
        load32(src)


def test_rotary_buffers_ignored_and_tied_head_copy_checked(tmp_path):
    src, hf = make_hf_llama(tmp_path, tie_word_embeddings=True)
    _rewrite(src, lambda t: {**t, "model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(4, np.float32),
                             "lm_head.weight": t["model.embed_tokens.weight"]})
    model, _ = load32(src)  # an identical lm_head copy is fine for a tied model
    tokens = random_tokens(1, 6, 97)
    np.testing.assert_allclose(logits(model, tokens), hf_logits(hf, tokens), atol=TOL, rtol=0)
    _rewrite(src, lambda t: {**t, "lm_head.weight": t["lm_head.weight"] + 1})
    with pytest.raises(ValueError, match="tie_word_embeddings is true but lm_head.weight differs"):
        load32(src)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load32(tmp_path)
    src, _ = make_hf_llama(tmp_path, max_shard_size="30KB")
    shard = sorted(src.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=shard.name):
        load32(src)
    for f in src.glob("*.safetensors*"):
        f.unlink()
    (src / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors.*pickle"):
        load32(src)


# ---------------------------------------------------------------------------------------------------- mesh placement


@needs_8
def test_load_onto_mesh_places_shards_by_rule_table(tmp_path, monkeypatch):
    src, _ = make_hf_llama(tmp_path, num_key_value_heads=2, attention_bias=True, vocab_size=96)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    blocks = []
    real_read_block = hf_llama.read_block

    def spy(reader, tensors, slot, shape, dtype, index):
        out = real_read_block(reader, tensors, slot, shape, dtype, index)
        blocks.append((slot.template, shape, out.shape))
        return out

    monkeypatch.setattr(hf_llama, "read_block", spy)
    model, cfg = load32(src, mesh=mesh, lora_rank=2)
    flat = dict(nnx.to_flat_state(nnx.state(model)))
    for path, var in flat.items():
        names = var.get_metadata()["out_sharding"]
        assert var.get_value().sharding == named_sharding(mesh, names, var.shape), path
    specs = {p: flat[p].get_value().sharding.spec for p in flat}
    assert specs[("layers", "attn", "q_proj", "kernel")] == P(None, "fsdp", "tensor")
    assert specs[("layers", "attn", "o_proj", "kernel")] == P(None, "tensor", "fsdp")
    assert specs[("layers", "attn", "k_proj", "bias")] == P(None, "tensor")
    assert specs[("layers", "attn", "q_proj", "lora_a")] == P(None, "fsdp", None)
    assert specs[("embed", "embedding")] == P("tensor", "fsdp")
    assert specs[("lm_head", "kernel")] == P("fsdp", "tensor")
    # Sharded parameters were read block by block, never whole.
    q = [b for b in blocks if b[0].endswith("q_proj.weight")]
    assert q and all(out == (2, 16, 16) for _, _, out in q)
    # Same values as a single-device load.
    single, _ = load32(src, lora_rank=2)
    assert_same_params(single, model)
    tokens = random_tokens(2, 8, 96)
    np.testing.assert_allclose(logits(model, tokens), logits(single, tokens), atol=1e-5, rtol=0)


def test_read_block_reads_layer_ranges_and_transposes(tmp_path):
    src, hf = make_hf_llama(tmp_path, num_hidden_layers=3)
    tensors = hf_llama.checkpoint_tensors(src)
    slot = hf_llama._slot(("layers", "mlp", "down_proj", "kernel"))
    with SafetensorsReader() as reader:
        block = hf_llama.read_block(reader, tensors, slot, (3, 56, 32), np.float32,
                                    (slice(1, 3), slice(8, 20), slice(None)))
    want = np.stack([hf.model.layers[i].mlp.down_proj.weight.detach().numpy().T[8:20] for i in (1, 2)])
    assert block.flags.c_contiguous and np.array_equal(block, want)


# ---------------------------------------------------------------------------------------------------- LoRA, atomicity


def test_export_merges_lora_without_touching_the_model(tmp_path):
    from transformers import LlamaForCausalLM

    src, _ = make_hf_llama(tmp_path, num_key_value_heads=2)
    model, cfg = load32(src, lora_rank=4, lora_targets=("q", "v", "down"))
    b = model.layers.attn.q_proj.lora_b
    b[...] = 0.1 * jax.random.normal(jax.random.key(1), b.shape)
    model.layers.mlp.down_proj.lora_b[...] = 0.1 * jax.random.normal(jax.random.key(2), (2, 4, 32))
    before = flat_params(model)
    out = save_hf_llama(model, tmp_path / "merged")
    after = flat_params(model)
    assert all(np.array_equal(before[k], after[k]) for k in before), "export mutated the model"
    tokens = random_tokens(2, 10, 97, seed=11)
    ours = logits(model, tokens)
    hf2 = LlamaForCausalLM.from_pretrained(out).eval()
    np.testing.assert_allclose(hf_logits(hf2, tokens), ours, atol=TOL, rtol=0)
    merged, mcfg = load32(out)
    assert mcfg.lora_rank == 0
    np.testing.assert_allclose(logits(merged, tokens), ours, atol=TOL, rtol=0)


def test_export_is_atomic_and_refuses_to_clobber(tmp_path, monkeypatch):
    src, _ = make_hf_llama(tmp_path)
    model, _ = load32(src)
    target = tmp_path / "out"
    target.mkdir()  # an empty directory is fine
    save_hf_llama(model, target)
    with pytest.raises(FileExistsError, match="not empty"):
        save_hf_llama(model, target)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(hf_llama, "write_safetensors", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_hf_llama(model, target, overwrite=True)
    assert (target / "model.safetensors").is_file(), "failed write damaged the old export"
    with pytest.raises(RuntimeError):
        save_hf_llama(model, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "out"], "temporary directories left behind"
    monkeypatch.undo()
    save_hf_llama(model, target, overwrite=True, dtype="bfloat16")
    assert read_header(target / "model.safetensors")[0]["model.norm.weight"].dtype == jnp.bfloat16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "out"]


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_import_and_export(tmp_path, capsys):
    src, hf = make_hf_llama(tmp_path, num_key_value_heads=2, dtype="bfloat16")
    (src / "tokenizer_config.json").write_text("{}")
    assert cli.main(["import", str(src), "--out", str(tmp_path / "ours"), "--compute-dtype", "float32"]) == 0
    text = capsys.readouterr().out
    for word in ("embed", "attention", "mlp", "norms", "lm_head", "total", "forward check", "finite=True"):
        assert word in text, word
    assert (tmp_path / "ours" / "tokenizer_config.json").is_file()
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["torch_dtype"] == "float32"
    assert cli.main(["export", str(src), "--out", str(tmp_path / "exp")]) == 0
    a, b = file_tensors(src), file_tensors(tmp_path / "exp")
    assert all(np.array_equal(a[k].view(np.uint16), b[k].view(np.uint16)) for k in a), "export not bit-exact"
    assert cli.main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "nothing/config.json" in capsys.readouterr().err
