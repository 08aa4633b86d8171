"""The trainer: optimiser and schedule, batching of the built-in corpus, the byte tokenizer, and training runs
(loss goes down; LoRA-only training touches only the adapters; the sharded step on 2×2×2 fake devices)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from merg_jax.config import llm_config, load_config
from merg_jax.data import EMOTIONS, ByteTokenizer, builtin_exchanges
from merg_jax.data.byte_tokenizer import VOCAB_SIZE
from merg_jax.sharding import make_mesh
from merg_jax.train import (
    BatchIterator,
    build_model,
    builtin_batches,
    lm_loss,
    make_schedule,
    pack_examples,
    prompt_completion_example,
    train_llm,
)

needs_8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (tests/conftest.py sets XLA_FLAGS)")

# A small model and short run: seconds on a CPU.
SMALL = ["--config.model.hidden_size=64", "--config.model.intermediate_size=128", "--config.model.num_layers=2",
         "--config.model.num_heads=2", "--config.model.num_kv_heads=1", "--config.model.head_dim=32",
         "--config.train.batch_size=4", "--config.train.seq_len=256", "--config.train.log_every=1000"]


def small_config(*overrides):
    return load_config("configs/tiny.py", [*SMALL, *overrides])


def one_device_mesh():
    return make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])


# ---------------------------------------------------------------------------------------------------------------
# tokenizer and corpus


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_byte_tokenizer_round_trips_any_string(text):
    tok = ByteTokenizer()
    ids = tok.encode(text, add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert all(0 <= i < VOCAB_SIZE for i in ids)
    assert tok.decode(ids) == text


def test_byte_tokenizer_specials_and_vocab():
    tok = ByteTokenizer()
    cfg = load_config("configs/tiny.py")
    assert tok.vocab_size <= cfg.model.vocab_size
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    ids = tok.encode("Human: <Aud> <Vid>hi")
    assert tok.aud_id in ids and tok.vid_id in ids
    assert tok.encode("<Aud>", parse_specials=False) == [b + tok.byte_offset for b in b"<Aud>"]
    assert tok.decode([tok.bos_id, *tok.encode("ok"), tok.eos_id, *tok.encode("ignored")]) == "ok"
    assert tok.decode([*tok.encode("é")[:1]]) == "\ufffd"  # half a character


def test_byte_tokenizer_saves_a_hugging_face_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    tok = ByteTokenizer()
    tok.save(tmp_path)
    assert ByteTokenizer.load(tmp_path).to_dict() == tok.to_dict()
    hf = AutoTokenizer.from_pretrained(tmp_path)
    for text in ["Human: <Aud> <Vid>I lost my keys 😞 ### Assistant: Oh no!", "  spaces\tand\nnewlines  ", "ünï"]:
        assert hf(text)["input_ids"] == tok.encode(text, add_bos=True)
        assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
        assert hf.decode(tok.encode(text)) == text
    assert (hf.pad_token_id, hf.bos_token_id, hf.eos_token_id) == (tok.pad_id, tok.bos_id, tok.eos_id)


def test_builtin_corpus_is_deterministic_and_in_prompt_format():
    exchanges = builtin_exchanges()
    assert 200 <= len(exchanges) <= 1000
    assert exchanges == builtin_exchanges()
    assert len({e.text for e in exchanges}) == len(exchanges)
    assert {e.emotion for e in exchanges} == set(EMOTIONS)
    for e in exchanges:
        assert e.text == f"Human: {e.utterance} ### Assistant: {e.reply}"
        assert e.prompt.endswith("### Assistant:") and "{" not in e.text
    # the tiny config's generation prompt is a training prompt
    prompt = load_config("configs/tiny.py").generate.prompt
    assert prompt in {e.prompt for e in exchanges}


# ---------------------------------------------------------------------------------------------------------------
# batching, loss, schedule


def test_packing_keeps_examples_apart_and_masks_the_prompt():
    tok = ByteTokenizer()
    exs = [prompt_completion_example(tok, f"Human: q{i} ### Assistant:", f" answer {i}") for i in range(5)]
    n = [len(e.tokens) - 1 for e in exs]  # all the same length here
    seq_len = 2 * n[0] + 5  # two examples per row, 5 padding
    rows = pack_examples(exs, seq_len)
    assert rows["tokens"].shape == (3, seq_len)
    row0 = {k: v[0] for k, v in rows.items()}
    first = exs[0]
    assert list(row0["tokens"][:n[0]]) == list(first.tokens[:-1])
    assert list(row0["targets"][:n[0]]) == list(first.tokens[1:])
    assert list(row0["loss_mask"][:n[0]]) == list(first.loss_mask[1:])
    assert list(row0["positions"][n[0]:2 * n[0]]) == list(range(n[0]))
    assert set(row0["segment_ids"][:n[0]]) == {1} and set(row0["segment_ids"][n[0]:2 * n[0]]) == {2}
    # loss on the completion and </s> only; padding has segment 0 and no loss
    assert tok.decode(row0["targets"][:n[0]][row0["loss_mask"][:n[0]] > 0], stop_at_eos=False) == " answer 0"
    pad = rows["segment_ids"] == 0
    assert (rows["loss_mask"][pad] == 0).all() and pad.any()


def test_packed_rows_give_the_same_logits_as_each_example_alone():
    cfg = small_config()
    model = build_model(llm_config(cfg), one_device_mesh())
    rows = builtin_batches(cfg).rows
    i = int(np.argmax(rows["segment_ids"].max(axis=1) >= 2))
    seg = rows["segment_ids"][i]
    assert seg.max() >= 2 and (seg == 0).any(), "want a row with two examples and padding"
    packed = model.forward(jnp.asarray(rows["tokens"][i:i + 1]), positions=jnp.asarray(rows["positions"][i:i + 1]),
                           segment_ids=jnp.asarray(seg[None])).logits
    for s in (1, 2):
        alone = model(jnp.asarray(rows["tokens"][i:i + 1, seg == s]))
        np.testing.assert_allclose(np.asarray(packed[0, seg == s]), np.asarray(alone[0]), atol=2e-5)


def test_batch_iterator_reshuffles_each_epoch_and_restores_its_state():
    rows = {"tokens": np.arange(10)[:, None].repeat(3, 1)}
    it = BatchIterator(rows, 4, seed=0)
    epoch0 = [next(it)["tokens"][:, 0] for _ in range(it.batches_per_epoch)]
    assert len(set(np.concatenate(epoch0).tolist())) == 8
    state = it.get_state()
    a = [next(it)["tokens"][:, 0].tolist() for _ in range(3)]
    it2 = BatchIterator(rows, 4, seed=0)
    it2.set_state(state)
    assert [next(it2)["tokens"][:, 0].tolist() for _ in range(3)] == a
    assert a[:2] != [e.tolist() for e in epoch0]  # a new order in the next epoch


def test_lm_loss_is_the_masked_mean_cross_entropy():
    logits = jax.random.normal(jax.random.key(0), (2, 3, 5))
    targets = jnp.array([[1, 2, 3], [4, 0, 1]])
    mask = jnp.array([[1, 0, 1], [0, 0, 1]], jnp.float32)
    loss, n = lm_loss(logits, targets, mask)
    logp = jax.nn.log_softmax(logits)
    picked = [-logp[0, 0, 1], -logp[0, 2, 3], -logp[1, 2, 1]]
    assert float(n) == 3
    np.testing.assert_allclose(float(loss), float(sum(picked) / 3), rtol=1e-6)


def test_schedule_warms_up_linearly_then_decays_to_zero():
    sched = make_schedule(dict(steps=100, learning_rate=1e-3, warmup_frac=0.1))
    lr = np.array([float(sched(s)) for s in range(101)])
    np.testing.assert_allclose(lr[:10], 1e-3 * np.arange(1, 11) / 10, rtol=1e-5)
    assert lr[10] == pytest.approx(1e-3) and np.all(np.diff(lr[10:]) <= 1e-12)
    assert lr[55] == pytest.approx(0.5e-3, rel=1e-3) and lr[100] == pytest.approx(0.0, abs=1e-12)
    no_warmup = make_schedule(dict(steps=3, learning_rate=1.0, warmup_frac=0.0))
    assert float(no_warmup(0)) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------------------
# training runs


def test_a_few_steps_lower_the_loss():
    cfg = small_config("--config.train.steps=12", "--config.train.learning_rate=5e-3")
    lines = []
    model, history = train_llm(cfg, mesh=one_device_mesh(), emit=lines.append)
    losses = [h["loss"] for h in history]
    assert len(losses) == 12 and all(math.isfinite(x) for x in losses)
    assert losses[0] == pytest.approx(math.log(cfg.model.vocab_size), rel=0.25)  # a sane initialisation
    assert np.mean(losses[-3:]) < 0.75 * losses[0], losses
    assert all(h["grad_norm"] > 0 for h in history)
    # progress lines: first and last step, with rate and ETA
    assert lines[-1].startswith("step 12/12") and "tokens/s" in lines[-1] and "ETA" in lines[-1]


def _flat_params(model):
    return {p: (np.array(v.get_value()), isinstance(v, nnx.LoRAParam))
            for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_lora_only_training_changes_only_the_adapters():
    cfg = small_config("--config.model.lora_rank=4", "--config.model.lora_dropout=0.1",
                       "--config.train.lora_only=True", "--config.train.steps=3", "--config.train.learning_rate=1e-2")
    mesh = one_device_mesh()
    model = build_model(llm_config(cfg), mesh, seed=0)
    before = _flat_params(model)
    assert sum(is_lora for _, is_lora in before.values()) == 2 * 4 * 1  # a, b on q, k, v, o (stacked layers)
    model, history = train_llm(cfg, model=model, mesh=mesh, emit=lambda s: None)
    after = _flat_params(model)
    assert after.keys() == before.keys()
    for path, (old, is_lora) in before.items():
        new = after[path][0]
        if is_lora:
            assert not np.array_equal(old, new), f"LoRA parameter {path} did not change"
        else:
            assert np.array_equal(old, new), f"base parameter {path} changed in LoRA-only training"


def test_lora_only_needs_adapters():
    with pytest.raises(ValueError, match="model.lora_rank"):
        train_llm(small_config("--config.train.lora_only=True", "--config.train.steps=1"), mesh=one_device_mesh())


@needs_8
def test_sharded_training_on_2x2x2_devices_matches_one_device_and_lowers_the_loss():
    overrides = ["--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2",
                 "--config.train.steps=6", "--config.train.learning_rate=5e-3"]
    cfg = small_config(*overrides)
    mesh = make_mesh(cfg.mesh)
    assert dict(zip(mesh.axis_names, mesh.devices.shape)) == {"data": 2, "fsdp": 2, "tensor": 2}
    model, history = train_llm(cfg, mesh=mesh, emit=lambda s: None)
    losses = [h["loss"] for h in history]
    assert losses[-1] < 0.85 * losses[0], losses
    # parameters stay sharded by the rule table
    q = model.layers.attn.q_proj.kernel.get_value()
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape == (2, 32, 32)
    # the same run on one device: the same losses (up to float reassociation)
    _, single = train_llm(small_config(*overrides), mesh=one_device_mesh(), emit=lambda s: None)
    np.testing.assert_allclose(losses, [h["loss"] for h in single], rtol=2e-3)


def test_batch_size_must_divide_the_data_parallel_mesh():
    if jax.device_count() < 2:
        pytest.skip("needs 2 devices")
    cfg = small_config("--config.train.batch_size=3", "--config.train.steps=1")
    mesh = make_mesh({"data": 2, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:2])
    with pytest.raises(ValueError, match="train.batch_size=3"):
        train_llm(cfg, mesh=mesh)


def test_config_override_errors_name_the_key():
    with pytest.raises(KeyError, match=r"train\.stepz"):
        load_config("configs/tiny.py", ["--config.train.stepz=3"])
    with pytest.raises(KeyError, match="trian"):
        load_config("configs/tiny.py", ["--config.trian.steps=3"])
    with pytest.raises(TypeError, match=r"train\.steps"):
        load_config("configs/tiny.py", ["--config.train.steps=many"])
    with pytest.raises(ValueError, match="model.remat"):
        llm_config(load_config("configs/tiny.py", ["--config.model.remat=sometimes"]))
