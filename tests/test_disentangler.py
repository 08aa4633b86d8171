"""The Style Disentangler and its classifiers: shapes from config, padding invariance, the style and classifier
heads against numpy, gradients for every parameter, L_cls against a naive numpy computation (unknown labels,
all-unknown and absent heads), config and label errors."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from merg_jax.data.labels import AGES, EMOTIONS_7, EMOTIONS_32, GENDERS, TIMBRES
from merg_jax.models.disentangler import (
    HEADS,
    DisentanglerConfig,
    StyleClassifiers,
    StyleDisentangler,
    StyleLogits,
    classification_loss,
)
from merg_jax.models.feature_memory import FeatureMemory
from merg_jax.models.synchronizer import masked_mse
from tests.empatheia_testing import pad_features, random_features

# One layer per stack keeps XLA:CPU compile times down (multi-layer stacks: test_transformer.py).
CFG = DisentanglerConfig(llm_dim=24, hidden_size=16, intermediate_size=32, num_heads=4, encoder_layers=1,
                         decoder_layers=1, speech_style_dim=5, video_style_dim=3)
TOL = 1e-5


def features(**kw):
    return random_features(CFG.llm_dim, **kw)


def pad(f, n):
    """Random junk appended to text and speech and prepended to video (mask False)."""
    return pad_features(f, n, left=("video",))


@pytest.fixture(scope="module")
def models():
    return StyleDisentangler(CFG, rngs=nnx.Rngs(0)), StyleClassifiers(CFG, rngs=nnx.Rngs(1))


@nnx.jit
def run(sd, clf, f):
    style = sd(f)
    return style, clf(style)


@pytest.mark.parametrize("signal", [False, True], ids=["reply_span", "signal_tokens"])
def test_shapes_from_config(models, signal):
    sd, clf = models
    assert isinstance(sd.memory, FeatureMemory)  # the construction the Content Synchronizer uses
    style, logits = run(sd, clf, features(b=2, signal=signal))
    for name in ("emotion_speech", "emotion_video", "profile_speech", "profile_video"):
        assert getattr(style, name).shape == (2, CFG.hidden_size), name
    assert style.style_speech.shape == (2, CFG.speech_style_dim)
    assert style.style_video.shape == (2, CFG.video_style_dim)
    sizes = {"emotion7": len(EMOTIONS_7), "emotion32": len(EMOTIONS_32), "age": len(AGES), "gender": len(GENDERS),
             "timbre": len(TIMBRES)}
    assert sizes == HEADS == {"emotion7": 7, "emotion32": 32, "age": 4, "gender": 2, "timbre": 3}
    for name, n in sizes.items():
        assert getattr(logits, name).shape == (2, n) and getattr(logits, name).dtype == jnp.float32
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves((style, logits)))


def test_padding_invariance(models):
    sd, clf = models
    f = features()
    (s1, l1), (s2, l2) = run(sd, clf, f), run(sd, clf, pad(f, 4))
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path((s1, l1)), jax.tree.leaves((s2, l2)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=TOL, rtol=TOL,
                                   err_msg=jax.tree_util.keystr(path))


def test_style_and_classifier_heads_match_numpy(models):
    """S^s = [E^s, P^s]·W + b and S^v = [E^v, P^v]·W + b; emotion heads read mean(E^s, E^v), profile heads
    mean(P^s, P^v) — and the four query outputs are distinct (not one vector reused)."""
    sd, clf = models
    style, logits = run(sd, clf, features(signal=False))
    e_s, e_v, p_s, p_v = (np.asarray(getattr(style, n)) for n in
                          ("emotion_speech", "emotion_video", "profile_speech", "profile_video"))
    for a, b in ((e_s, e_v), (e_s, p_s), (e_v, p_v), (p_s, p_v)):
        assert np.abs(a - b).max() > 1e-3
    dense = lambda layer, x: x @ np.asarray(layer.kernel[...]) + np.asarray(layer.bias[...])
    np.testing.assert_allclose(np.asarray(style.style_speech), dense(sd.speech_style, np.concatenate([e_s, p_s], -1)),
                               atol=TOL, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(style.style_video), dense(sd.video_style, np.concatenate([e_v, p_v], -1)),
                               atol=TOL, rtol=1e-4)
    for name in HEADS:
        x = (e_s + e_v) / 2 if name.startswith("emotion") else (p_s + p_v) / 2
        np.testing.assert_allclose(np.asarray(getattr(logits, name)), dense(clf.heads[name], x), atol=TOL, rtol=1e-4,
                                   err_msg=name)


def test_gradients_finite_and_nonzero_for_every_parameter(models):
    sd, clf = models
    f = features()
    rng = np.random.default_rng(3)
    ts = jnp.asarray(rng.standard_normal((2, CFG.speech_style_dim)), jnp.float32)
    tv = jnp.asarray(rng.standard_normal((2, CFG.video_style_dim)), jnp.float32)
    labels = {"emotion7": jnp.array([1, 6]), "emotion32": jnp.array([31, 0]), "age": jnp.array([3, 0]),
              "gender": jnp.array([1, 0]), "timbre": jnp.array([2, 1])}

    @nnx.jit
    def grads(sd, clf):
        def loss(sd, clf):
            style = sd(f)
            mse = lambda p, t: masked_mse(p[:, None], t[:, None], jnp.ones((2, 1), bool))
            return (mse(style.style_speech, ts) + mse(style.style_video, tv)
                    + classification_loss(clf(style), labels)[0])
        return nnx.grad(loss, argnums=(0, 1))(sd, clf)

    g_sd, g_clf = grads(sd, clf)
    for state in (g_sd, g_clf):
        flat = nnx.to_flat_state(state)
        assert len(flat) >= 10
        for path, g in flat:
            g = np.asarray(g[...])
            assert np.isfinite(g).all(), path
            assert np.abs(g).max() > 0, f"zero gradient for {path}"


def _naive_loss(logits: dict, labels: dict):
    total, acc = 0.0, {}
    for name, lg in logits.items():
        if name not in labels:
            continue
        terms, correct = [], 0
        for row, y in zip(lg.astype(np.float64), labels[name], strict=True):
            if y < 0:
                continue
            terms.append(np.log(np.sum(np.exp(row))) - row[y])
            correct += int(np.argmax(row) == y)
        total += np.mean(terms) if terms else 0.0
        acc[name] = correct / len(terms) if terms else 0.0
    return total, acc


def test_classification_loss_matches_numpy():
    rng = np.random.default_rng(0)
    b = 6
    logits = {name: (rng.standard_normal((b, n)) * 3).astype(np.float32) for name, n in HEADS.items()}
    labels = {
        "emotion7": np.array([0, 6, -1, 3, 3, -1]),
        "emotion32": np.array([31, -1, -1, -1, -1, -1]),  # one known label
        "age": np.array([-1] * b),  # nothing known in this batch: contributes 0, not NaN
        "gender": np.array([1, 0, 1, 0, 1, 0]),
        # "timbre" absent: skipped
    }
    for name in ("gender",):  # make some predictions right, so accuracy is neither 0 nor 1 by accident
        logits[name][np.arange(3), labels[name][:3]] += 20
    want_loss, want_acc = _naive_loss(logits, labels)
    loss, acc = jax.jit(classification_loss)(StyleLogits(**{k: jnp.asarray(v) for k, v in logits.items()}),
                                             {k: jnp.asarray(v) for k, v in labels.items()})
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
    assert set(acc) == set(labels)
    for name in labels:
        np.testing.assert_allclose(float(acc[name]), want_acc[name], rtol=1e-6, err_msg=name)
    assert 0 < float(acc["gender"]) < 1 and float(acc["age"]) == 0.0
    # Every label unknown: exactly 0, and a finite zero gradient.
    none = {k: jnp.full((b,), -1) for k in HEADS}
    lg = StyleLogits(**{k: jnp.asarray(v) for k, v in logits.items()})
    loss0, grad0 = jax.value_and_grad(lambda lg: classification_loss(lg, none)[0])(lg)
    assert float(loss0) == 0.0
    assert all(np.array_equal(np.asarray(g), np.zeros_like(g)) for g in jax.tree.leaves(grad0))


def test_classification_loss_errors():
    lg = StyleLogits(**{k: jnp.zeros((2, n)) for k, n in HEADS.items()})
    with pytest.raises(ValueError, match="mood"):
        classification_loss(lg, {"mood": jnp.array([0, 1])})
    with pytest.raises(ValueError, match="age"):
        classification_loss(lg, {"age": jnp.array([0, 1, 2])})
    with pytest.raises(ValueError, match="gender"):
        classification_loss(lg, {"gender": np.array([0, 2])})
    with pytest.raises(ValueError, match="timbre"):
        classification_loss(lg, {"timbre": np.array([-2, 0])})


@pytest.mark.parametrize("field,value", [
    ("speech_style_dim", 0), ("video_style_dim", -1), ("num_heads", 3), ("llm_dim", 0), ("encoder_layers", 0),
    ("hidden_act", "nope"), ("attention_impl", "flash"),
])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(CFG, **{field: value})


def test_defaults():
    cfg = DisentanglerConfig()
    assert (cfg.llm_dim, cfg.hidden_size, cfg.num_heads, cfg.encoder_layers, cfg.decoder_layers) == (
        4096, 768, 12, 2, 2)
    assert (cfg.speech_style_dim, cfg.video_style_dim) == (256, 256)
    for cls in (StyleDisentangler, StyleClassifiers):
        with pytest.raises(ValueError, match="DisentanglerConfig"):
            cls(object(), rngs=nnx.Rngs(0))
