"""`merg_jax.infer.generate`: cached decoding = naive decoding, left padding, stop tokens, sampling, HF parity."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from llm_testing import tiny_config
from merg_jax.infer import SamplingConfig, generate, generate_with_info, left_pad, sample_logits
from merg_jax.models import Llm, LlmConfig


def _config(**kw) -> LlmConfig:
    return tiny_config(**{"vocab_size": 61, "max_position_embeddings": 64, **kw})


def _model(seed: int = 0, **kw) -> Llm:
    return Llm(_config(**kw), rngs=nnx.Rngs(seed))


@pytest.fixture(scope="module")
def model() -> Llm:
    return _model()


def _tokens(seed: int, batch: int, length: int, vocab: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (batch, length)).astype(np.int32)


def naive_greedy(model: Llm, prompt: np.ndarray, n: int) -> np.ndarray:
    """No cache: the full forward over the whole sequence so far, argmax at its last token, n times. (The
    sequence lives in a fixed-size buffer so one compilation serves every step; causal attention makes the
    unused tail invisible to the positions read.)"""
    graphdef, state = nnx.split(model)

    @jax.jit
    def next_token(state, seq, last):
        logits = nnx.merge(graphdef, state)(seq)
        return jnp.argmax(logits[jnp.arange(seq.shape[0]), last], axis=-1).astype(jnp.int32)

    b, p = prompt.shape
    seq = np.zeros((b, p + n), np.int32)
    seq[:, :p] = prompt
    for t in range(n):
        seq[:, p + t] = np.asarray(next_token(state, seq, p + t - 1))
    return seq[:, p:]


# ---------------------------------------------------------------------------------------------- greedy decoding

@pytest.mark.parametrize("variant", [dict(), dict(scan_layers=False, tie_embeddings=True)])
def test_cached_greedy_equals_naive_greedy(variant):
    model = _model(seed=1, **variant)
    prompt = _tokens(0, 2, 7, model.cfg.vocab_size)
    expected = naive_greedy(model, prompt, 12)
    out = generate_with_info(model, prompt, 12)
    np.testing.assert_array_equal(out.tokens, expected)
    np.testing.assert_array_equal(out.lengths, [12, 12])
    assert int(out.num_steps) == 12
    # A longer cache than needed changes nothing; one new token works.
    np.testing.assert_array_equal(generate(model, prompt, 12, max_length=40), expected)
    np.testing.assert_array_equal(generate(model, prompt, 1), expected[:, :1])


def _while_bodies(hlo: str) -> list[list[str]]:
    """The instruction lines of each while loop's body computation in an optimized HLO module."""
    out = []
    for body in re.findall(r"\bwhile\(.*?body=%([\w.\-]+)", hlo):
        block = re.search(r"^%" + re.escape(body) + r" .*?\{\n(.*?)\n\}", hlo, re.DOTALL | re.MULTILINE).group(1)
        out.append(block.splitlines())
    return out


@pytest.mark.parametrize("panels", [False, True], ids=["xla-dot", "panel-matmul"])
@pytest.mark.parametrize("batch", [1, 3])
def test_decode_loop_updates_the_cache_in_place(model, batch, panels):
    """Each step writes its new slot into every layer's k and v rows in place, and attention reads the cache as
    it lies: no instruction of the loop body copies or rewrites a cache-sized array. (With the cache stored
    `[B, S, Hk, K]`, each layer copied it into the attention's rows layout on every step; stored `[B, Hk, S, K]`,
    XLA fused the slot update into both of its readers and copied the cache for each.)"""
    from merg_jax.infer.generate import _generate_jit, decode_panels

    cfg = model.cfg
    prompt = jnp.asarray(_tokens(0, batch, 5, cfg.vocab_size))
    max_length = 5 + 8
    graphdef, state = nnx.split(model)
    hlo = _generate_jit.lower(graphdef, state, prompt, jnp.ones_like(prompt), jnp.zeros((0,), jnp.int32),
                              jnp.asarray(0, jnp.int32), jax.random.key(0), None, None, max_new_tokens=8,
                              max_length=max_length, sampling=SamplingConfig(0.0, 0, 1.0),
                              panels=decode_panels(model) if panels else None).compile().as_text()
    cache_elems = batch * cfg.num_kv_heads * max_length * cfg.head_dim
    roots = dict(re.findall(r"^%([\w.\-]+) .*?\{\n.*?^  ROOT %[\w.\-]+ = \S+ ([\w\-]+)\(", hlo, re.DOTALL | re.MULTILINE))
    loops = []  # (in-place cache updates, other cache-sized results) of each loop that updates the cache
    for lines in _while_bodies(hlo):
        updates, rewrites = 0, []
        for line in lines:
            m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = f32\[([\d,]*)\]\S* ([\w\-]+)\((.*)", line)
            if not m or int(np.prod([int(d) for d in m.group(2).split(",") if d])) != cache_elems:
                continue
            name, op = m.group(1), m.group(3)
            if op in ("parameter", "get-tuple-element", "bitcast"):
                continue
            called = re.search(r"calls=%([\w.\-]+)", line)
            if op == "fusion" and called and roots.get(called.group(1)) == "dynamic-update-slice":
                updates += 1
            else:
                rewrites.append(f"{name} ({op})")
        if updates:
            loops.append((updates, rewrites))
    assert len(loops) == 1, f"expected one decode loop updating the cache, found {len(loops)}"
    updates, rewrites = loops[0]
    assert rewrites == [], f"cache-sized copies in the decode loop: {rewrites}"
    assert updates == 2 * cfg.num_layers  # one in-place slot update per layer for k and one for v


def test_prefill_projects_only_the_last_position(model):
    """The prompt's logits are needed at its last position only: the compiled generate has no vocabulary
    product over all prompt rows (`[B·P, V]`), only `[B, V]` ones (the prefill's last position, each step)."""
    from merg_jax.infer.generate import _generate_jit

    cfg = model.cfg
    batch, plen = 2, 5
    prompt = jnp.asarray(_tokens(0, batch, plen, cfg.vocab_size))
    graphdef, state = nnx.split(model)
    hlo = _generate_jit.lower(graphdef, state, prompt, jnp.ones_like(prompt), jnp.zeros((0,), jnp.int32),
                              jnp.asarray(0, jnp.int32), jax.random.key(0), None, None, max_new_tokens=4,
                              max_length=plen + 4, sampling=SamplingConfig(0.0, 0, 1.0)).compile().as_text()
    vocab_dots = [tuple(int(d) for d in shape.split(",")) for shape in
                  re.findall(r"= f32\[([\d,]+)\]\S* dot\(", hlo) if shape.endswith(f",{cfg.vocab_size}")]
    assert vocab_dots, "no product onto the vocabulary found in the compiled generate"
    assert all(np.prod(shape[:-1]) == batch for shape in vocab_dots), vocab_dots


def test_left_padded_batch_equals_each_row_alone(model):
    vocab = model.cfg.vocab_size
    rows = [_tokens(10 + i, 1, n, vocab)[0] for i, n in enumerate([9, 3, 6, 1])]
    tokens, mask = left_pad(rows, 7)
    batched = generate(model, tokens, 10, prompt_mask=mask)
    for i, r in enumerate(rows):
        alone = generate(model, r[None], 10)
        np.testing.assert_array_equal(batched[i], alone[0], err_msg=f"row {i} (prompt length {len(r)})")
        np.testing.assert_array_equal(alone, naive_greedy(model, r[None], 10))
    # The ids under the padding do not matter (any value, even out of vocabulary).
    garbage = np.where(mask == 1, tokens, -5)
    np.testing.assert_array_equal(generate(model, garbage, 10, prompt_mask=mask), batched)


def test_stop_tokens_end_rows_and_the_loop(model):
    vocab = model.cfg.vocab_size
    rows = [_tokens(20, 1, 5, vocab)[0], _tokens(21, 1, 8, vocab)[0]]
    tokens, mask = left_pad(rows)
    n = 12
    free = np.asarray(generate(model, tokens, n, prompt_mask=mask))
    stops = (int(free[0, 3]), int(free[1, 1]))
    first_stop = [int(np.nonzero(np.isin(free[i], stops))[0][0]) for i in range(2)]
    assert max(first_stop) <= 3
    pad = -1
    out = generate_with_info(model, tokens, n, prompt_mask=mask, stop_tokens=stops, pad_id=pad)
    for i in range(2):
        s = first_stop[i]
        np.testing.assert_array_equal(out.tokens[i, :s + 1], free[i, :s + 1])  # the stop token is kept
        assert (np.asarray(out.tokens[i, s + 1:]) == pad).all()
        assert int(out.lengths[i]) == s + 1
    assert int(out.num_steps) == max(first_stop) + 1 < n  # the loop ended early

    # A row that stops early pads while the other goes on to the end.
    one = generate_with_info(model, tokens, n, prompt_mask=mask, stop_tokens=[int(free[0, 0])], pad_id=pad)
    if int(free[0, 0]) not in free[1]:
        assert int(one.num_steps) == n
        np.testing.assert_array_equal(one.tokens[1], free[1])
        np.testing.assert_array_equal(one.lengths, [1, n])
        assert (np.asarray(one.tokens[0, 1:]) == pad).all()


def test_sharded_model_generates_the_same_tokens(model):
    from merg_jax.sharding import make_mesh, shard_model

    n_dev = jax.device_count()
    mesh = make_mesh({"data": 1, "fsdp": 2, "tensor": -1} if n_dev % 2 == 0 else {"data": 1, "fsdp": -1, "tensor": 1})
    prompt = _tokens(30, 2, 6, model.cfg.vocab_size)
    mask = np.ones_like(prompt)
    mask[0, :2] = 0
    expected = generate(model, prompt, 8, prompt_mask=mask)
    sharded = _model()  # the same weights (same seed), placed on the mesh
    shard_model(sharded, mesh)
    with jax.set_mesh(mesh):
        out = generate(sharded, prompt, 8, prompt_mask=mask)
    np.testing.assert_array_equal(out, expected)
    out2 = generate(sharded, prompt, 8, prompt_mask=mask, temperature=0.8, rng=jax.random.key(3))
    assert out2.shape == (2, 8)


# ------------------------------------------------------------------------------------------------------ sampling

def test_greedy_tokens_equal_argmax():
    """Ties (the first wins), -inf, a constant row, NaN (its first, as NumPy), random rows: as `jnp.argmax`."""
    from merg_jax.infer.sampling import greedy_tokens

    rows = np.random.default_rng(0).standard_normal((6, 50)).astype(np.float32)
    rows[0, [3, 17, 40]] = 9.0
    rows[1] = -np.inf
    rows[1, 30] = 0.0
    rows[2] = 1.5
    rows[3, [8, 20]] = np.nan
    rows[4, 49] = np.inf
    for x in (rows, rows[:, :1], rows.astype(jnp.bfloat16)):
        got = np.asarray(jax.jit(greedy_tokens)(jnp.asarray(x)))
        np.testing.assert_array_equal(got, np.asarray(jnp.argmax(jnp.asarray(x), -1)))
        assert got.dtype == np.int32


def test_top_k_one_and_tiny_top_p_equal_greedy(model):
    prompt = _tokens(40, 3, 5, model.cfg.vocab_size)
    greedy = generate(model, prompt, 10)
    key = jax.random.key(0)
    np.testing.assert_array_equal(generate(model, prompt, 10, temperature=1.3, top_k=1, rng=key), greedy)
    np.testing.assert_array_equal(generate(model, prompt, 10, temperature=0.7, top_p=1e-6, rng=key), greedy)


def test_sampling_is_deterministic_given_the_key(model):
    prompt = _tokens(41, 2, 5, model.cfg.vocab_size)
    a = generate(model, prompt, 10, temperature=2.0, rng=jax.random.key(7))
    b = generate(model, prompt, 10, temperature=2.0, rng=jax.random.key(7))
    c = generate(model, prompt, 10, temperature=2.0, rng=jax.random.key(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(generate(model, prompt, 10, temperature=2.0, rng=7), a)  # an int seed


def expected_distribution(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """Hugging Face's warpers written out in numpy (float64): temperature, top-k, top-p; then softmax."""
    z = logits.astype(np.float64) / temperature
    if top_k:
        kth = np.sort(z)[::-1][top_k - 1]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p)  # descending: keep the smallest prefix whose mass reaches top_p
        cum = np.cumsum(p[order])
        keep_n = int(np.searchsorted(cum, top_p - 1e-12) + 1)
        keep = np.zeros_like(p, bool)
        keep[order[:keep_n]] = True
        p = np.where(keep, p, 0.0)
        p /= p.sum()
    return p


def _chi2_pvalue(samples: np.ndarray, p: np.ndarray) -> float:
    counts = np.bincount(samples, minlength=len(p))
    assert counts[p == 0].sum() == 0, "sampled a filtered-out token"
    support = p > 0
    return stats.chisquare(counts[support], p[support] * len(samples)).pvalue


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 4, 1.0), (1.5, 0, 0.8), (0.8, 5, 0.7)])
def test_sampling_matches_the_warped_categorical(temperature, top_k, top_p):
    probs = np.array([0.3, 0.2, 0.14, 0.1, 0.08, 0.07, 0.05, 0.03, 0.02, 0.01])
    logits = np.log(probs).astype(np.float32) + 1.7  # any offset
    expected = expected_distribution(logits, temperature, top_k, top_p)
    cfg = SamplingConfig(temperature, top_k, top_p)
    n = 20000
    batch = jnp.broadcast_to(jnp.asarray(logits), (n, len(logits)))
    samples = np.asarray(sample_logits(batch, cfg, jax.random.key(0)))
    assert _chi2_pvalue(samples, expected) > 1e-3


@pytest.mark.parametrize("temperature,top_k,top_p", [(2.0, 0, 1.0), (1.5, 8, 0.9)])
def test_first_generated_token_follows_the_model_distribution(temperature, top_k, top_p):
    model = _model(seed=3)
    prompt = _tokens(50, 1, 6, model.cfg.vocab_size)
    logits = np.asarray(model(jnp.asarray(prompt))[0, -1])
    expected = expected_distribution(logits, temperature, top_k, top_p)
    assert (expected > 0.01).sum() >= 3  # a real test: several tokens in play
    n = 6000
    out = generate(model, np.repeat(prompt, n, axis=0), 1, temperature=temperature, top_k=top_k, top_p=top_p,
                   rng=jax.random.key(11))
    assert _chi2_pvalue(np.asarray(out[:, 0]), expected) > 1e-3


# ---------------------------------------------------------------------------------------------------- validation

def test_input_validation(model):
    p = _tokens(60, 2, 5, model.cfg.vocab_size)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, p, 0)
    with pytest.raises(ValueError, match="prompt_tokens must be"):
        generate(model, p[0], 3)
    with pytest.raises(ValueError, match="prompt_mask has shape"):
        generate(model, p, 3, prompt_mask=np.ones((2, 4)))
    with pytest.raises(ValueError, match="LEFT-padded"):
        generate(model, p, 3, prompt_mask=np.array([[1, 1, 1, 0, 0], [1] * 5]))
    with pytest.raises(ValueError, match="LEFT-padded"):
        generate(model, p, 3, prompt_mask=np.array([[0, 1, 0, 1, 1], [1] * 5]))
    with pytest.raises(ValueError, match="rng"):
        generate(model, p, 3, temperature=1.0)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, p, 3, temperature=-1.0)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, p, 3, temperature=1.0, top_p=0.0, rng=0)
    with pytest.raises(ValueError, match="top_k"):
        generate(model, p, 3, temperature=1.0, top_k=-2, rng=0)
    with pytest.raises(ValueError, match="max_length"):
        generate(model, p, 3, max_length=5)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        generate(model, _tokens(0, 1, 65, model.cfg.vocab_size), 1)
    with pytest.raises(ValueError, match="max_new_tokens=60 exceeds"):
        generate(model, p, 60)
    with pytest.raises(ValueError, match="vocab_size"):
        generate(model, p + model.cfg.vocab_size, 3)
    with pytest.raises(ValueError, match="stop_tokens"):
        generate(model, p, 3, stop_tokens=[model.cfg.vocab_size])


# ----------------------------------------------------------------------------------------- Hugging Face parity

def _hf_generate(hf, tokens, mask, n, *, eos, pad):
    import torch

    with torch.no_grad():
        out = hf.generate(input_ids=torch.as_tensor(tokens, dtype=torch.long),
                          attention_mask=torch.as_tensor(mask, dtype=torch.long), do_sample=False,
                          max_new_tokens=n, min_new_tokens=0, eos_token_id=eos, pad_token_id=pad, num_beams=1,
                          use_cache=True)
    return out[:, tokens.shape[1]:].numpy()


def _assert_same_as_hf(ours: np.ndarray, hf: np.ndarray, pad: int):
    """HF stops the batch when every row has finished, so its output may be shorter; the rest is our padding."""
    np.testing.assert_array_equal(ours[:, :hf.shape[1]], hf)
    assert (ours[:, hf.shape[1]:] == pad).all()


@pytest.mark.parametrize("hf_config", [dict(), dict(num_key_value_heads=2, tie_word_embeddings=True)])
def test_greedy_matches_hugging_face_generate(tmp_path, hf_config):
    pytest.importorskip("torch")
    from hf_llama_reference import make_hf_llama

    from merg_jax.convert import load_hf_llama

    path, hf = make_hf_llama(tmp_path, **hf_config)
    model, cfg = load_hf_llama(path, dtype="float32", compute_dtype="float32")
    vocab, n, pad = cfg.vocab_size, 16, 0

    # One prompt; eos = a token the model actually produces, so the stopping rule is compared too.
    single = _tokens(70, 1, 9, vocab)
    free = np.asarray(generate(model, single, n))
    eos = int(free[0, 6])
    _assert_same_as_hf(np.asarray(generate(model, single, n, stop_tokens=[eos], pad_id=pad)),
                       _hf_generate(hf, single, np.ones_like(single), n, eos=eos, pad=pad), pad)

    # A left-padded batch of different lengths, without and with a stop token that ends some rows early.
    rows = [_tokens(71 + i, 1, length, vocab)[0] for i, length in enumerate([11, 4, 7])]
    tokens, mask = left_pad(rows, pad)
    free = np.asarray(generate(model, tokens, n, prompt_mask=mask))
    with_eos = np.asarray(generate(model, tokens, n, prompt_mask=mask, stop_tokens=[2], pad_id=pad))
    for i, r in enumerate(rows):  # each row of our batch = HF on that row alone (eos: the config's, 2)
        _assert_same_as_hf(with_eos[i:i + 1], _hf_generate(hf, r[None], np.ones((1, len(r))), n, eos=2, pad=pad),
                           pad)
    eos = int(free[1, 2])
    ours = np.asarray(generate(model, tokens, n, prompt_mask=mask, stop_tokens=[eos], pad_id=pad))
    _assert_same_as_hf(ours, _hf_generate(hf, tokens, mask, n, eos=eos, pad=pad), pad)
    assert (ours == pad).any()  # some row did stop


def _word_tokenizer(path, vocab_size: int):
    """A real (tiny) fast tokenizer saved next to the weights: words w0, w1, … with LLaMA's specials."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(vocab_size - 3)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(path)
    return fast


def test_cli_generates_from_a_hugging_face_directory(tmp_path, capsys):
    pytest.importorskip("torch")
    from hf_llama_reference import make_hf_llama

    from merg_jax.convert import load_hf_llama
    from merg_jax.infer.cli import encode_batch, main

    path, _ = make_hf_llama(tmp_path)
    model, cfg = load_hf_llama(path, dtype="float32", compute_dtype="float32")
    tokenizer = _word_tokenizer(path, cfg.vocab_size)
    prompts = ["w5 w17 w3 w40", "w8"]
    rc = main(["--hf", str(path), "--prompt", prompts[0], "--prompt", prompts[1], "--max-new-tokens", "6",
               "--compute-dtype", "float32"])
    assert rc == 0
    printed = capsys.readouterr().out.splitlines()

    tokens, mask = encode_batch(tokenizer, prompts, pad_id=2)
    assert tokens[1].tolist() == [2, 2, 2, 1, 8 + 3] and mask[1].tolist() == [0, 0, 0, 1, 1]
    out = generate_with_info(model, tokens, 6, prompt_mask=mask, pad_id=2, stop_tokens=[2])
    expected = []
    for p, row, n in zip(prompts, np.asarray(out.tokens), np.asarray(out.lengths)):
        expected += [f">>> {p}", tokenizer.decode(row[:n].tolist(), skip_special_tokens=True)]
    assert printed == expected

    assert main(["--hf", str(tmp_path / "missing"), "--prompt", "w1"]) == 2
