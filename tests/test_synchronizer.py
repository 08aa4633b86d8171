"""The Content Synchronizer: shapes from config, padding invariance, gold / predicted length masks, gradients for
every parameter, the L_ccl loss against numpy, config and input errors, sharded execution on a mesh."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from merg_jax.models.hidden_features import HiddenFeatures
from merg_jax.models.synchronizer import ContentOutput, ContentSynchronizer, SynchronizerConfig, length_loss, masked_mse
from merg_jax.sharding import make_mesh, shard_model
from tests.empatheia_testing import pad_features, random_features

# One layer per stack keeps XLA:CPU compile times down; multi-layer stacks are tested in test_transformer.py and
# the layer counts' wiring below (test_defaults_and_layer_counts).
CFG = SynchronizerConfig(llm_dim=24, hidden_size=16, intermediate_size=32, num_heads=4, encoder_layers=1,
                         decoder_layers=1, speech_content_dim=6, speech_content_len=5, video_content_dim=4,
                         video_content_len=7)
TOL = 1e-5
GOLD = (jnp.array([3, 5]), jnp.array([7, 2]))  # (speech, video) lengths
# Tests reuse a few call signatures (reply_span + predicted lengths, signal_tokens + gold lengths) so that XLA
# compiles few programs: compiling dominates this file's run time.


def features(**kw):
    return random_features(CFG.llm_dim, video_left_padded=True, **kw)


def pad(f, n, *, left=False):
    return pad_features(f, n, left=("text", "speech", "video") if left else ())


@pytest.fixture(scope="module")
def cs():
    return ContentSynchronizer(CFG, rngs=nnx.Rngs(0))


@nnx.jit
def run(cs, f, speech_lengths=None, video_lengths=None):
    return cs(f, speech_lengths=speech_lengths, video_lengths=video_lengths)


def assert_outputs_close(a: ContentOutput, b: ContentOutput):
    for name in ("speech_mask", "video_mask"):
        np.testing.assert_array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)), err_msg=name)
    for name in ("speech", "video", "speech_length", "video_length"):
        np.testing.assert_allclose(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)), atol=TOL, rtol=TOL,
                                   err_msg=name)


@pytest.mark.parametrize("signal", [False, True], ids=["reply_span", "signal_tokens"])
def test_shapes_from_config(cs, signal):
    out = run(cs, features(signal=signal), *(GOLD if signal else ()))
    assert out.speech.shape == (2, CFG.speech_content_len, CFG.speech_content_dim)
    assert out.video.shape == (2, CFG.video_content_len, CFG.video_content_dim)
    assert out.speech_mask.shape == (2, CFG.speech_content_len) and out.speech_mask.dtype == jnp.bool_
    assert out.video_mask.shape == (2, CFG.video_content_len) and out.video_mask.dtype == jnp.bool_
    assert out.speech_length.shape == out.video_length.shape == (2,)
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(out))


@pytest.mark.parametrize("signal", [False, True], ids=["reply_span", "signal_tokens"])
def test_padding_invariance(cs, signal):
    """Padded positions (mask False, large random values) change nothing, whether appended (text, speech) or
    prepended (video). Predicted lengths in reply_span mode, gold lengths in signal_tokens mode."""
    f = features(signal=signal)
    gold = GOLD if signal else ()
    padded = pad(f, 4)
    if signal:
        left = pad(f, 2, left=True)
        padded = dataclasses.replace(padded, video=left.video, video_mask=left.video_mask)
    assert_outputs_close(run(cs, padded, *gold), run(cs, f, *gold))


def test_speech_and_video_features_are_read(cs):
    """In signal_tokens mode r^s and r^v feed the memory: changing one valid r^s vector changes the output."""
    f = features()
    g = dataclasses.replace(f, speech=f.speech.at[0, 0].add(1.0))
    a, b = run(cs, f, *GOLD), run(cs, g, *GOLD)
    assert np.abs(np.asarray(a.speech[0]) - np.asarray(b.speech[0])).max() > 1e-4
    np.testing.assert_allclose(np.asarray(a.speech[1]), np.asarray(b.speech[1]), atol=TOL)  # other row untouched


def test_gold_lengths_give_masks_and_zero_content(cs):
    f = features()
    speech_len, video_len = np.array([2, 5]), np.array([0, 7])
    out = run(cs, f, jnp.asarray(speech_len), jnp.asarray(video_len))
    other = run(cs, f, *GOLD)
    for m, lengths in (("speech", speech_len), ("video", video_len)):
        t = getattr(CFG, f"{m}_content_len")
        want = np.arange(t)[None, :] < lengths[:, None]
        np.testing.assert_array_equal(np.asarray(getattr(out, f"{m}_mask")), want)
        content = np.asarray(getattr(out, m))
        np.testing.assert_array_equal(content[~want], 0.0)
        assert (np.abs(content[want]).sum(-1) > 0).all()
        # The mask only selects: positions valid under both sets of gold lengths hold the same content, and the
        # predicted length does not depend on the gold one.
        both = want & np.asarray(getattr(other, f"{m}_mask"))
        assert both.any()
        np.testing.assert_allclose(content[both], np.asarray(getattr(other, m))[both], atol=TOL)
        np.testing.assert_allclose(np.asarray(getattr(out, f"{m}_length")), np.asarray(getattr(other, f"{m}_length")),
                                   atol=TOL)


def test_predicted_lengths_rounded_and_clipped():
    cs = ContentSynchronizer(CFG, rngs=nnx.Rngs(3))
    f = features(signal=False)
    out = run(cs, f)
    for m in ("speech", "video"):
        t, length = getattr(CFG, f"{m}_content_len"), np.asarray(getattr(out, f"{m}_length"))
        assert (length > 0).all()
        n = np.clip(np.round(length), 1, t)
        np.testing.assert_array_equal(np.asarray(getattr(out, f"{m}_mask")), np.arange(t)[None] < n[:, None])
    # Far beyond the maximum → every position; far below 1 → exactly the first one.
    cs.speech_length_head.bias[...] = jnp.full((1,), 50.0)
    cs.video_length_head.bias[...] = jnp.full((1,), -50.0)
    out = run(cs, f)
    assert (np.asarray(out.speech_length) > CFG.speech_content_len).all()
    assert (np.asarray(out.video_length) < 0.5).all() and (np.asarray(out.video_length) > 0).all()
    np.testing.assert_array_equal(np.asarray(out.speech_mask), True)
    first_only = np.broadcast_to(np.arange(CFG.video_content_len) < 1, (2, CFG.video_content_len))
    np.testing.assert_array_equal(np.asarray(out.video_mask), first_only)
    np.testing.assert_array_equal(np.asarray(out.video)[:, 1:], 0.0)


def test_empty_feature_row_is_finite(cs):
    """A batch row with no valid feature at all (a padded batch slot) gives finite outputs, no NaN."""
    f = features(signal=False)
    f = dataclasses.replace(f, text_mask=f.text_mask.at[1].set(False))
    out = run(cs, f)
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(out))


def test_gradients_finite_and_nonzero_for_every_parameter(cs):
    f = features()
    rng = np.random.default_rng(5)
    ts = jnp.asarray(rng.standard_normal((2, CFG.speech_content_len, CFG.speech_content_dim)), jnp.float32)
    tv = jnp.asarray(rng.standard_normal((2, CFG.video_content_len, CFG.video_content_dim)), jnp.float32)
    sl, vl = jnp.array([3, 5]), jnp.array([7, 4])

    @nnx.jit
    def grads(cs):
        def loss(cs):
            out = cs(f, speech_lengths=sl, video_lengths=vl)
            return (masked_mse(out.speech, ts, out.speech_mask) + masked_mse(out.video, tv, out.video_mask)
                    + length_loss(out.speech_length, sl) + length_loss(out.video_length, vl))
        return nnx.grad(loss)(cs)

    flat = nnx.to_flat_state(grads(cs))
    assert len(flat) > 20
    for path, g in flat:
        g = np.asarray(g[...])
        assert np.isfinite(g).all(), path
        assert np.abs(g).max() > 0, f"zero gradient for {path}"


def test_masked_mse_matches_numpy():
    rng = np.random.default_rng(0)
    pred, target = rng.standard_normal((2, 2, 5, 3)).astype(np.float32)
    mask = np.array([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0]], bool)
    target[1, 2] = np.nan  # padding may hold anything
    want = sum(np.sum((pred[b, t] - target[b, t]) ** 2) for b in range(2) for t in range(5) if mask[b, t]) / (3 * 3)
    got = float(jax.jit(masked_mse)(pred, target, mask))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert float(masked_mse(pred, target, np.zeros_like(mask))) == 0.0
    with pytest.raises(ValueError, match="mask"):
        masked_mse(pred, target, mask[:, :4])
    with pytest.raises(ValueError, match="shape"):
        masked_mse(pred, target[:, :4], mask)


def test_length_loss_matches_numpy():
    pred, gold = np.array([3.0, 10.0, 2.5, 7.0], np.float32), np.array([4, 10, 0, 1])
    want = np.mean([np.log(3 / 4) ** 2, 0.0, np.log(7 / 1) ** 2])
    np.testing.assert_allclose(float(length_loss(jnp.asarray(pred), jnp.asarray(gold))), want, rtol=1e-5)
    assert float(length_loss(jnp.asarray(pred), jnp.zeros(4, jnp.int32))) == 0.0


@pytest.mark.parametrize("field,value", [
    ("llm_dim", 0), ("hidden_size", 0), ("num_heads", 5), ("intermediate_size", -1), ("encoder_layers", 0),
    ("decoder_layers", 0), ("hidden_act", "swish9"), ("dtype", "float99"), ("attention_impl", "flash"),
    ("layer_norm_eps", 0.0), ("speech_content_dim", 0), ("speech_content_len", 0), ("video_content_dim", 0),
    ("video_content_len", -3),
])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(CFG, **{field: value})


def test_defaults_and_layer_counts():
    """The paper-scale defaults, built abstractly (no memory): layer counts reach the stacks, output shapes."""
    cfg = SynchronizerConfig(encoder_layers=3)
    assert (cfg.llm_dim, cfg.hidden_size, cfg.num_heads, cfg.decoder_layers) == (4096, 768, 12, 2)
    assert (cfg.speech_content_dim, cfg.speech_content_len, cfg.video_content_dim, cfg.video_content_len) == (
        512, 256, 256, 200)
    block = cfg.block(3)
    assert (block.num_layers, block.hidden_size, block.num_heads, block.intermediate_size) == (3, 768, 12, 3072)
    cs = nnx.eval_shape(lambda: ContentSynchronizer(cfg, rngs=nnx.Rngs(0)))
    assert cs.memory.encoder.layers.attn.q_proj.kernel.shape == (3, 768, 768)
    assert cs.speech_decoder.decoder.layers.cross_attn.q_proj.kernel.shape == (2, 768, 768)
    assert cs.memory.ffn_in.kernel.shape == (4096, 768)
    out = jax.eval_shape(lambda f, m: ContentSynchronizer(cfg, rngs=nnx.Rngs(0))(HiddenFeatures(text=f, text_mask=m)),
                         jax.ShapeDtypeStruct((1, 16, 4096), jnp.float32), jax.ShapeDtypeStruct((1, 16), jnp.bool_))
    assert out.speech.shape == (1, 256, 512) and out.video.shape == (1, 200, 256)


def test_input_errors(cs):
    f = features()
    with pytest.raises(ValueError, match="features.text"):
        cs(dataclasses.replace(f, text=f.text[..., :5]))
    with pytest.raises(ValueError, match="features.speech_mask"):
        cs(dataclasses.replace(f, speech_mask=f.speech_mask[:, :2]))
    with pytest.raises(ValueError, match="features.video_mask"):
        cs(dataclasses.replace(f, video=None))
    with pytest.raises(ValueError, match="speech_lengths"):
        cs(f, speech_lengths=jnp.array([1, 2, 3]))


def test_sharded_on_mesh_matches_unsharded():
    cs = ContentSynchronizer(CFG, rngs=nnx.Rngs(0))
    f = features()
    want = run(cs, f, *GOLD)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    shard_model(cs, mesh)
    with jax.set_mesh(mesh):
        got = run(cs, f, *GOLD)
    assert_outputs_close(got, want)
