"""The Empatheia core wired together: interleaved input, attention structure, hidden features, parameter groups,
sharding, and the paper-scale config built abstractly."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from merg_jax.models.empatheia import Empatheia
from merg_jax.models.hidden_features import extract_features, gather_positions, reply_span_mask
from merg_jax.models.multimodal_input import check_slots, splice_media
from merg_jax.models.param_groups import GROUPS, STAGES, group_filter, group_labels, group_of, stage_filter
from tests.empatheia_testing import RESPONSE, RESPONSE_END, tiny_batch, tiny_empatheia_config

# ------------------------------------------------------------------------------------------------ pure functions


def _naive_splice(text, kind, clip, audio, video, a_ok, v_ok):
    out, spans = text.copy(), np.zeros(kind.shape, np.int32)
    c = audio.shape[1]
    for b in range(text.shape[0]):
        seen = {}
        for p in range(text.shape[1]):
            k = int(kind[b, p])
            if k == 0 or clip[b, p] < 0:
                continue
            key = (k, int(clip[b, p]))
            j = seen.get(key, 0)
            seen[key] = j + 1
            spans[b, p] = 1 + (k - 1) * c + key[1]
            table, ok = (audio, a_ok) if k == 1 else (video, v_ok)
            if j < table.shape[2] and ok[b, key[1]]:
                out[b, p] = table[b, key[1], j]
    return out, spans


def test_splice_puts_each_clip_token_at_its_slot():
    rng = np.random.default_rng(0)
    b, length, d, c, n = 3, 40, 5, 4, 3
    text = rng.normal(size=(b, length, d)).astype(np.float32)
    kind = np.zeros((b, length), np.int32)
    clip = np.full((b, length), -1, np.int32)
    for row in range(b):  # slots at random positions, clips in random order, one clip with an extra slot
        pos = rng.permutation(length)[:2 * c * n + 1]
        keys = [(k, cc) for k in (1, 2) for cc in range(c) for _ in range(n)] + [(2, 0)]
        for p, (k, cc) in zip(pos, rng.permutation(np.array(keys))):
            kind[row, p], clip[row, p] = k, cc
    audio = rng.normal(size=(b, c, n, d)).astype(np.float32)
    video = rng.normal(size=(b, c, n, d)).astype(np.float32)
    a_ok = rng.random((b, c)) > 0.3
    v_ok = rng.random((b, c)) > 0.3
    got, spans = splice_media(jnp.asarray(text), jnp.asarray(kind), jnp.asarray(clip), jnp.asarray(audio),
                              jnp.asarray(video), jnp.asarray(a_ok), jnp.asarray(v_ok))
    want, want_spans = _naive_splice(text, kind, clip, audio, video, a_ok, v_ok)
    np.testing.assert_array_equal(np.asarray(got), want)
    np.testing.assert_array_equal(np.asarray(spans), want_spans)
    with pytest.raises(ValueError, match="media slots"):
        check_slots(kind, clip, c, n)  # the extra (2, 0) slot
    # without audio, audio slots keep the text embedding
    got, _ = splice_media(jnp.asarray(text), jnp.asarray(kind), jnp.asarray(clip), None, jnp.asarray(video))
    np.testing.assert_array_equal(np.asarray(got)[kind == 1], text[kind == 1])


def test_reply_span_features_match_a_loop():
    rng = np.random.default_rng(1)
    b, length, d, r = 3, 20, 4, 5
    tokens = rng.integers(10, 50, (b, length)).astype(np.int32)
    tokens[0, [3, 6]] = [RESPONSE, RESPONSE_END]  # 2 reply tokens
    tokens[1, [2, 18]] = [RESPONSE, RESPONSE_END]  # 15 reply tokens: only the first r kept
    tokens[2, 12] = RESPONSE  # no closing tag, padding after 16
    seg = np.ones((b, length), np.int32)
    seg[2, 16:] = 0
    hidden = rng.normal(size=(b, length, d)).astype(np.float32)
    mask = np.asarray(reply_span_mask(jnp.asarray(tokens), RESPONSE, RESPONSE_END, jnp.asarray(seg)))
    out, valid = gather_positions(jnp.asarray(hidden), jnp.asarray(mask), r)
    for row, span in enumerate([range(4, 6), range(3, 18), range(13, 16)]):
        np.testing.assert_array_equal(np.flatnonzero(mask[row]), list(span))
        keep = list(span)[:r]
        np.testing.assert_array_equal(np.asarray(out)[row, :len(keep)], hidden[row, keep])
        assert np.all(np.asarray(out)[row, len(keep):] == 0)
        np.testing.assert_array_equal(np.asarray(valid)[row], np.arange(r) < len(keep))
    with pytest.raises(ValueError, match="response_id"):
        reply_span_mask(jnp.asarray(tokens), -1, RESPONSE_END)


# ------------------------------------------------------------------------------------------------ the model


@pytest.fixture(scope="module")
def signal_model():
    """N = 2 tokens per clip through the resampler, and signal tokens: the non-default switches."""
    cfg = tiny_empatheia_config(tokens_per_clip=2, source="signal_tokens")
    return nnx.jit(lambda: Empatheia(cfg, rngs=nnx.Rngs(0)))()


@pytest.fixture(scope="module")
def model():
    cfg = tiny_empatheia_config()
    return nnx.jit(lambda: Empatheia(cfg, rngs=nnx.Rngs(1)))()


def _jnp(batch):
    return {k: jnp.asarray(v) for k, v in batch.items()}


def test_attention_structure_text_causal_clip_bidirectional(signal_model):
    m = signal_model
    batch = _jnp(tiny_batch(m.cfg, batch=1, length=36, pad_last_row=0))
    media = nnx.jit(lambda m, b: m.encode_media(b))(m, batch)
    run = nnx.jit(lambda m, b, media: m.run_llm(b, media)[0].hidden)
    base = np.asarray(run(m, batch, media))
    kind, clip = np.asarray(batch["media_kind"][0]), np.asarray(batch["media_clip"][0])
    slots = np.flatnonzero((kind == 2) & (clip == 0))  # clip 0's two video slots, in order
    assert len(slots) == 2
    # Changing the clip's second token changes what its first token computes (same span: bidirectional), and
    # nothing before the span.
    video = media.video.at[0, 0, 1].add(1.0)
    moved = np.asarray(run(m, batch, dataclasses.replace(media, video=video)))
    assert np.abs(moved[0, slots[0]] - base[0, slots[0]]).max() > 1e-3
    np.testing.assert_array_equal(moved[0, :slots[0]], base[0, :slots[0]])
    # A text token never sees later text: changing token p changes nothing before p, and p itself.
    p = 30
    tokens = batch["tokens"].at[0, p].set((batch["tokens"][0, p] + 1) % m.cfg.llm.vocab_size)
    moved = np.asarray(run(m, {**batch, "tokens": tokens}, media))
    np.testing.assert_array_equal(moved[0, :p], base[0, :p])
    assert np.abs(moved[0, p] - base[0, p]).max() > 1e-3


def test_media_reach_their_slots_and_absent_clips_keep_the_placeholder(model):
    m = model
    batch = _jnp(tiny_batch(m.cfg))
    media = nnx.jit(lambda m, b: m.encode_media(b))(m, batch)
    x, spans = nnx.jit(lambda m, b, media: m.embed_inputs(b, media))(m, batch, media)
    text = np.asarray(m.llm.embed_tokens(batch["tokens"]))
    kind, clip = np.asarray(batch["media_kind"]), np.asarray(batch["media_clip"])
    for b in range(kind.shape[0]):
        for p in np.flatnonzero(kind[b]):
            c = clip[b, p]
            if kind[b, p] == 1:
                want = media.audio[b, c, 0] if batch["audio_mask"][b, c] else text[b, p]
            else:
                want = media.video[b, c, 0]
            np.testing.assert_allclose(np.asarray(x)[b, p], np.asarray(want), rtol=1e-6)
            assert spans[b, p] == 1 + (kind[b, p] - 1) * kind.shape[0] + c
    np.testing.assert_array_equal(np.asarray(x)[kind == 0], text[kind == 0])
    # ImageBind's postprocessing: the tower embeddings are unit vectors (x 20 for audio) before projection.
    enc = m.encoders.audio.encode_clips(jnp.zeros((1, 16, 16)) + 1.0, num_windows=1)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(enc.pooled), axis=-1), 20.0, rtol=1e-5)


def test_packed_rows_compute_what_each_turn_computes_alone(model):
    """Two turns packed into one row (`data.packing.pack_rows`: segments, renumbered clips) give each turn the
    hidden states it gets alone in a padded row."""
    from merg_jax.data.packing import pack_rows

    m = model
    length, clips = 40, 4
    samples = []
    for seed, pad in ((3, 20), (4, 22)):
        row = {k: v[0] for k, v in tiny_batch(m.cfg, batch=1, length=length, clips=2, seed=seed,
                                              pad_last_row=pad).items()}
        for k in ("clip_utterance", "audio_mel", "audio_len", "audio_mask", "video_frames", "video_len",
                  "video_mask"):  # room for 4 clips per row, 2 used
            widths = [(0, clips - 2)] + [(0, 0)] * (row[k].ndim - 1)
            row[k] = np.pad(row[k], widths, constant_values=-1 if k == "clip_utterance" else 0)
        samples.append(row)
    pad_row = {k: np.full_like(v, -1 if k in ("emotion7", "media_clip", "clip_utterance") else 0)
               for k, v in samples[0].items()}
    packed, consumed = pack_rows(samples, 1, max_segments=2, pad_row=pad_row)
    assert consumed == 2 and packed["emotion7"].tolist() == [[s["emotion7"] for s in samples]]
    np.testing.assert_array_equal(packed["segment_ids"][0, :38], [1] * 20 + [2] * 18)
    hidden = nnx.jit(lambda m, b: m.run_llm(b)[0].hidden)
    got = np.asarray(hidden(m, _jnp(packed)))[0]
    start = 0
    for s in samples:
        n = int(s["segment_ids"].sum())
        alone = np.asarray(hidden(m, _jnp({k: v[None] for k, v in s.items()})))[0]
        np.testing.assert_allclose(got[start:start + n], alone[:n], atol=2e-5)
        start += n


def test_signal_tokens_leave_the_text_untouched(signal_model):
    m = signal_model
    batch = _jnp(tiny_batch(m.cfg))
    media = nnx.jit(lambda m, b: m.encode_media(b))(m, batch)
    out, feats = nnx.jit(lambda m, b, media: m.run_llm(b, media))(m, batch, media)

    @nnx.jit
    def plain(m, batch, media):
        x, spans = m.embed_inputs(batch, media)
        return m.llm.forward(embeddings=x, positions=batch["positions"], segment_ids=batch["segment_ids"],
                             span_ids=spans)

    ref = plain(m, batch, media)
    np.testing.assert_allclose(np.asarray(out.logits), np.asarray(ref.logits), atol=2e-5)
    ref_feats = extract_features(dataclasses.replace(m.cfg.features, source="reply_span"), ref.hidden,
                                 batch["tokens"], batch["segment_ids"])
    np.testing.assert_allclose(np.asarray(feats.text), np.asarray(ref_feats.text), atol=2e-5)
    assert feats.speech.shape == feats.video.shape == (2, 2, m.cfg.llm.hidden_size)
    # The signals see the sample: changing a prompt token changes r^s.
    tokens = batch["tokens"].at[:, 1].add(1)
    _, moved = nnx.jit(lambda m, b, media: m.run_llm(b, media))(m, {**batch, "tokens": tokens}, media)
    assert np.abs(np.asarray(moved.speech) - np.asarray(feats.speech)).max() > 1e-4


def _loss(m, batch):
    out = m(batch)
    terms = [jnp.mean(out.logits ** 2), jnp.mean(out.content.speech ** 2), jnp.mean(out.content.video ** 2),
             jnp.mean(out.style.style_speech ** 2), jnp.mean(out.style.style_video ** 2)]
    terms += [jnp.mean(x ** 2) for x in jax.tree.leaves(out.style_logits)]
    return sum(terms)


def test_frozen_groups_get_exactly_zero_updates(model):
    """Training one group moves that group's parameters and leaves every other one bit-identical: through
    `optax.multi_transform` over the group labels (every group in turn), and through a stage's filter
    (gradients w.r.t. the filter only, `nnx.Optimizer(wrt=)`), the trainer's two mechanisms."""
    batch = _jnp(tiny_batch(model.cfg))
    params = nnx.state(model, nnx.Param)
    labels = group_labels(params)
    # this model has no speech or face generator (test_speech_stage and test_face_cli train them)
    present = [g for g in GROUPS if g not in ("speech", "face_renderer", "face_motion")]
    assert model.speech is None and set(jax.tree.leaves(labels)) == set(present)
    full = nnx.jit(nnx.grad(_loss))(model, batch)  # every parameter's gradient, frozen ones included
    for group in present:
        tx = optax.multi_transform({g: optax.sgd(0.1) if g == group else optax.set_to_zero() for g in GROUPS},
                                   labels)
        updates, _ = tx.update(full, tx.init(params), params)
        moved = False
        for path, var in nnx.to_flat_state(updates):
            u = np.asarray(var[...])
            if group_of(path, var) == group:
                moved |= bool(np.any(u))
            else:
                assert not np.any(u), (group, path)
        assert moved, f"{group}: nothing in the group has a gradient"

    m = nnx.clone(model)
    trained = stage_filter("coe")  # lora + projections
    opt = nnx.Optimizer(m, optax.adam(1e-2), wrt=trained)

    @nnx.jit
    def step(m, opt, batch):
        grads = nnx.grad(_loss, argnums=nnx.DiffState(0, trained))(m, batch)
        opt.update(m, grads)
        return grads

    grads = step(m, opt, batch)
    assert {group_of(p, v) for p, v in nnx.to_flat_state(grads)} == set(STAGES["coe"])
    before = dict(nnx.to_flat_state(params))
    grad = {p: np.asarray(g[...]) for p, g in nnx.to_flat_state(grads)}
    for path, v in nnx.to_flat_state(nnx.state(m, nnx.Param)):
        same = np.array_equal(np.asarray(v[...]), np.asarray(before[path][...]))
        if group_of(path, v) in STAGES["coe"]:
            # (LoRA A has a zero gradient while B is still zero, so only it may stay put.)
            assert same == (not np.any(grad[path])), path
        else:
            assert same, path
    with pytest.raises(ValueError, match="unknown"):
        group_filter("decoder")
    with pytest.raises(ValueError, match="unknown training stage"):
        stage_filter("pretrain")


@pytest.mark.slow
def test_sharded_forward_and_backward_equal_single_device(model):
    from merg_jax.sharding import create_sharded, make_mesh

    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = create_sharded(lambda: Empatheia(model.cfg, rngs=nnx.Rngs(1)), mesh)
    batch = _jnp(tiny_batch(model.cfg, batch=4))
    value_and_grad = nnx.jit(nnx.value_and_grad(_loss))
    want_loss, want_grads = value_and_grad(model, batch)
    with jax.set_mesh(mesh):
        loss, grads = value_and_grad(sharded, batch)
    spec = sharded.llm.layers.attn.q_proj.kernel[...].sharding.spec  # [layers, embed, heads] by the table
    assert spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-5)
    for (path, g), (_, w) in zip(nnx.to_flat_state(grads), nnx.to_flat_state(want_grads), strict=True):
        g, w = np.asarray(g[...]), np.asarray(w[...])
        np.testing.assert_allclose(g, w, atol=1e-5 * max(1.0, np.abs(w).max()), err_msg=str(path))


def test_paper_config_builds_abstractly_with_the_paper_counts(capsys):
    from merg_jax.cli import main

    assert main(["describe-model", "--config", "configs/empatheia_7b.py"]) == 0
    table = capsys.readouterr().out
    counts = {line.split()[0]: int(line.split()[1].replace(",", "")) for line in table.splitlines()
              if line.split() and line.split()[0] in GROUPS}
    assert set(counts) == set(GROUPS)
    # Vicuna-7B: embeddings and LM head 2·V·4096 (V = 32000 + our 7 special tokens, padded to 32128); 32 layers
    # of 4·4096² attention, 3·4096·11008 MLP, 2 norms. With V = 32000 that is Vicuna's own 6,738,415,616.
    vicuna = lambda v: 2 * v * 4096 + 32 * (4 * 4096 ** 2 + 3 * 4096 * 11008 + 2 * 4096) + 4096  # noqa: E731
    assert vicuna(32000) == 6_738_415_616
    assert counts["llm_base"] == vicuna(32128)
    assert counts["lora"] == 32 * 4 * 2 * 4096 * 8  # r=8 on q, k, v, o
    assert counts["projections"] == 2 * (1024 * 4096 + 4096)  # 1024 → 4096 per modality
    # ImageBind-huge's towers (analytic: blocks of 4·D² + 4·D attention, 2·D·4D + 5·D MLP, 2 LayerNorms).
    block = lambda d, kv: 4 * d * d + 4 * d + 8 * d * d + 5 * d + 4 * d + (2 * d if kv else 0)  # noqa: E731
    vision = 1280 * 3 * 2 * 14 * 14 + 1280 + 257 * 1280 + 2 * 1280 + 32 * block(1280, False) + 2 * 1280 + 1280 * 1024
    audio = 768 * 16 * 16 + 2 * 768 + 768 + 229 * 768 + 12 * block(768, True) + 2 * 768 + 768 * 1024
    assert counts["encoders"] == vision + audio
    assert counts["synchronizer"] > 0 and counts["disentangler"] > 0 and counts["classifiers"] > 0
    assert "(frozen)" in table and "coe" in table


def test_config_sections_from_a_config_file_and_a_tokenizer():
    import ml_collections

    from merg_jax.config import load_config
    from merg_jax.data.tokenizer import RESPONSE as RESPONSE_TOKEN
    from merg_jax.data.tokenizer import RESPONSE_END as RESPONSE_END_TOKEN
    from merg_jax.data.tokenizer import train_bpe
    from merg_jax.models.empatheia import EmpatheiaConfig

    tok = train_bpe(["I failed my driving test today.", "That happens; you'll pass next time."] * 4,
                    vocab_size=300)
    cfg = EmpatheiaConfig.from_config(load_config("configs/tiny.py"), tok)
    assert (cfg.features.response_id, cfg.features.response_end_id) == (
        tok.special_ids[RESPONSE_TOKEN], tok.special_ids[RESPONSE_END_TOKEN])
    assert cfg.synchronizer.llm_dim == cfg.disentangler.llm_dim == cfg.llm.hidden_size
    assert cfg.vision.tubelet_size == 2 and cfg.audio.attention_bias_kv and cfg.audio_windows == 2
    with pytest.raises(ValueError, match="resize_vocab"):
        EmpatheiaConfig.from_config(load_config("configs/tiny.py", ["config.model.vocab_size=200"]), tok)
    bad = load_config("configs/tiny.py").to_dict()
    bad["empatheia"]["vision"]["patch"] = 3  # not a VisionConfig field
    with pytest.raises(ValueError, match="config.empatheia.vision"):
        EmpatheiaConfig.from_config(ml_collections.ConfigDict(bad))
    with pytest.raises(ValueError, match="kind"):
        EmpatheiaConfig.from_config(load_config("configs/tiny.py", ["config.empatheia.projection.kind=mlp"]))
    no_audio = load_config("configs/tiny.py").to_dict()
    no_audio["empatheia"]["audio"] = None
    assert EmpatheiaConfig.from_config(ml_collections.ConfigDict(no_audio)).audio is None
