"""Media encoders: the CLIP vision tower and the Audio Spectrogram Transformer against Hugging Face PyTorch
(tiny random configs, same weights), clip pooling over frames, import errors."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from merg_jax.bench.encoders import randomize_torch_module
from merg_jax.convert.hf_encoders import load_hf_ast, load_hf_clip_vision
from merg_jax.convert.safetensors_io import TensorSpec, read_header, write_safetensors
from merg_jax.models.encoders import (
    AST_MEAN,
    AST_STD,
    CLIP_MEAN,
    CLIP_STD,
    AudioConfig,
    AudioEncoder,
    VisionConfig,
    VisionEncoder,
    fit_length,
    normalize_ast,
    normalize_clip,
    sample_frame_indices,
    sample_frames,
)
from merg_jax.sharding import make_mesh

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4



def make_clip(path, *, hidden_act="quick_gelu", seed=0):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, hidden_act=hidden_act)
    torch.manual_seed(seed)
    model = CLIPVisionModel(cfg).eval()
    randomize_torch_module(model, seed)
    model.save_pretrained(path)
    return model


def make_ast(path, seed=0):
    from transformers import ASTConfig, ASTModel

    cfg = ASTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_mel_bins=16,
                    max_length=32, patch_size=16, frequency_stride=4, time_stride=6)
    torch.manual_seed(seed)
    model = ASTModel(cfg).eval()
    randomize_torch_module(model, seed)
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip")
    return path, make_clip(path)


@pytest.fixture(scope="module")
def ast_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("ast")
    return path, make_ast(path)


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


@pytest.mark.parametrize("impl", ["xla", "reference", "blockwise"])
def test_clip_vision_matches_hf(clip_dir, impl):
    path, hf = clip_dir
    model, cfg = load_hf_clip_vision(path, attention_impl=impl)
    assert (cfg.hidden_size, cfg.num_layers, cfg.patch_size, cfg.hidden_act) == (32, 2, 8, "quick_gelu")
    pixels = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)  # NCHW for torch
    with torch.no_grad():
        ref = hf(pixel_values=torch.from_numpy(pixels))
    out = model(jnp.asarray(pixels.transpose(0, 2, 3, 1)))
    assert out.tokens.shape == (3, 17, 32) and out.pooled.shape == (3, 32)
    assert _max_diff(out.tokens, ref.last_hidden_state.numpy()) <= TOL
    assert _max_diff(out.pooled, ref.pooler_output.numpy()) <= TOL


def test_clip_vision_gelu_unrolled_and_jit(tmp_path):
    hf = make_clip(tmp_path, hidden_act="gelu", seed=3)
    model, cfg = load_hf_clip_vision(tmp_path, scan_layers=False)
    assert cfg.hidden_act == "gelu"
    pixels = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = hf(pixel_values=torch.from_numpy(pixels))
    out = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(pixels.transpose(0, 2, 3, 1)))
    assert _max_diff(out.tokens, ref.last_hidden_state.numpy()) <= TOL
    assert _max_diff(out.pooled, ref.pooler_output.numpy()) <= TOL


def test_ast_matches_hf(ast_dir):
    path, hf = ast_dir
    model, cfg = load_hf_ast(path)
    assert (cfg.frequency_patches, cfg.time_patches, cfg.num_tokens) == (1, 3, 5)
    mel = np.random.default_rng(2).standard_normal((2, 32, 16)).astype(np.float32)
    with torch.no_grad():
        ref = hf(input_values=torch.from_numpy(mel))
    out = model(jnp.asarray(mel))
    assert out.tokens.shape == (2, 5, 32) and out.pooled.shape == (2, 32)
    assert _max_diff(out.tokens, ref.last_hidden_state.numpy()) <= TOL
    assert _max_diff(out.pooled, ref.pooler_output.numpy()) <= TOL


def test_bfloat16_weights_and_compute(ast_dir):
    path, hf = ast_dir
    model, cfg = load_hf_ast(path, dtype=jnp.bfloat16, compute_dtype=jnp.bfloat16)
    assert model.encoder.layers.attn.q_proj.kernel[...].dtype == jnp.bfloat16
    mel = np.random.default_rng(6).standard_normal((2, 32, 16)).astype(np.float32)
    with torch.no_grad():
        ref = hf(input_values=torch.from_numpy(mel)).pooler_output.numpy()
    out = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(mel))
    assert out.pooled.dtype == jnp.bfloat16
    assert _max_diff(out.pooled, ref) <= 0.1 * float(np.max(np.abs(ref)))


def test_ast_more_frequency_patches(tmp_path):
    """Several frequency and time patches: checks the patch order (frequency-major) against HF."""
    from transformers import ASTConfig, ASTModel

    cfg = ASTConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                    num_mel_bins=24, max_length=40, patch_size=16, frequency_stride=4, time_stride=8)
    torch.manual_seed(1)
    hf = ASTModel(cfg).eval()
    randomize_torch_module(hf, 1)
    hf.save_pretrained(tmp_path)
    model, ours = load_hf_ast(tmp_path)
    assert (ours.frequency_patches, ours.time_patches) == (3, 4)
    mel = np.random.default_rng(3).standard_normal((1, 40, 24)).astype(np.float32)
    with torch.no_grad():
        ref = hf(input_values=torch.from_numpy(mel))
    out = model(jnp.asarray(mel))
    assert _max_diff(out.tokens, ref.last_hidden_state.numpy()) <= TOL
    assert _max_diff(out.pooled, ref.pooler_output.numpy()) <= TOL


def test_clip_pooling_is_mean_of_frames(clip_dir):
    path, _ = clip_dir
    model, _ = load_hf_clip_vision(path)
    frames = jnp.asarray(np.random.default_rng(4).standard_normal((2, 3, 32, 32, 3)), jnp.float32)
    out = model.encode_clip(frames)
    per_frame = jnp.stack([model(frames[:, t]).pooled for t in range(3)], axis=1)
    assert out.tokens.shape == (2, 3 * 17, 32) and out.pooled.shape == (2, 32)
    assert _max_diff(out.frame_pooled, per_frame) <= 1e-5
    assert _max_diff(out.pooled, per_frame.mean(axis=1)) <= 1e-5
    np.testing.assert_allclose(np.asarray(out.tokens[:, 17:34]), np.asarray(model(frames[:, 1]).tokens), atol=1e-5)
    masked = model.encode_clip(frames, frame_mask=jnp.array([[1, 1, 0], [1, 0, 0]]))
    assert _max_diff(masked.pooled[0], per_frame[0, :2].mean(axis=0)) <= 1e-5
    assert _max_diff(masked.pooled[1], per_frame[1, 0]) <= 1e-5


def test_frame_sampling():
    np.testing.assert_array_equal(sample_frame_indices(10, 5), [1, 3, 5, 7, 9])
    np.testing.assert_array_equal(sample_frame_indices(2, 4), [0, 0, 1, 1])
    np.testing.assert_array_equal(sample_frame_indices(7, 1), [3])
    video = np.arange(12)[:, None] * np.ones((1, 2))
    np.testing.assert_array_equal(sample_frames(video, 3)[:, 0], [2, 6, 10])
    with pytest.raises(ValueError):
        sample_frame_indices(0, 3)
    mel = np.ones((5, 4), np.float32)
    assert fit_length(mel, 8).shape == (8, 4) and fit_length(mel, 3).shape == (3, 4)
    assert float(fit_length(mel, 8)[6].sum()) == 0.0
    img = np.full((2, 2, 3), 255, np.uint8)
    np.testing.assert_allclose(normalize_clip(img)[0, 0], (1 - np.array(CLIP_MEAN)) / np.array(CLIP_STD), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(normalize_clip(jnp.asarray(img))), normalize_clip(img), rtol=1e-6)
    np.testing.assert_allclose(normalize_ast(np.array([AST_MEAN, AST_MEAN + 2 * AST_STD])), [0.0, 1.0], atol=1e-6)


def _rewrite(src, dst, rename=None, drop=(), extra=None):
    """Copies a HF directory, renaming/dropping/adding tensors."""
    import shutil

    from merg_jax.convert.safetensors_io import SafetensorsReader

    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    infos, _ = read_header(src / "model.safetensors")
    specs = []
    with SafetensorsReader() as reader:
        arrays = {k: np.array(reader.array(v)) for k, v in infos.items()}
    for k, a in arrays.items():
        if k in drop:
            continue
        name = (rename or {}).get(k, k)
        specs.append(TensorSpec(name, a.shape, a.dtype, lambda a=a: a))
    for k, a in (extra or {}).items():
        specs.append(TensorSpec(k, a.shape, a.dtype, lambda a=a: a))
    write_safetensors(dst / "model.safetensors", specs)


def test_bad_keys_are_named(clip_dir, ast_dir, tmp_path):
    path, _ = clip_dir
    _rewrite(path, tmp_path / "extra", extra={"embeddings.surprise.weight": np.zeros((2,), np.float32)})
    with pytest.raises(ValueError, match=r"unknown tensors.*embeddings\.surprise\.weight"):
        load_hf_clip_vision(tmp_path / "extra")
    _rewrite(path, tmp_path / "missing", drop={"encoder.layers.1.mlp.fc2.bias"})
    with pytest.raises(ValueError, match=r"missing tensors: encoder\.layers\.1\.mlp\.fc2\.bias"):
        load_hf_clip_vision(tmp_path / "missing")
    _rewrite(path, tmp_path / "shape", drop={"post_layernorm.bias"},
             extra={"post_layernorm.bias": np.zeros((31,), np.float32)})
    with pytest.raises(ValueError, match=r"post_layernorm\.bias: \[31\]"):
        load_hf_clip_vision(tmp_path / "shape")
    ast_path, _ = ast_dir
    _rewrite(ast_path, tmp_path / "ast_missing", drop={"embeddings.distillation_token"})
    with pytest.raises(ValueError, match=r"missing tensors: embeddings\.distillation_token"):
        load_hf_ast(tmp_path / "ast_missing")
    with pytest.raises(ValueError, match="not a CLIP vision tower"):
        load_hf_clip_vision(ast_path)
    with pytest.raises(FileNotFoundError):
        load_hf_ast(tmp_path / "nowhere")


def test_prefixed_and_new_style_names_load(clip_dir, ast_dir, tmp_path):
    """Older CLIP checkpoints prefix `vision_model.`; newer AST module names (`layers.{i}.attention.q_proj`)."""
    path, hf = clip_dir
    infos, _ = read_header(path / "model.safetensors")
    _rewrite(path, tmp_path / "clip_prefixed", rename={k: "vision_model." + k for k in infos})
    a, _ = load_hf_clip_vision(path)
    b, _ = load_hf_clip_vision(tmp_path / "clip_prefixed")
    x = jnp.ones((1, 32, 32, 3))
    np.testing.assert_array_equal(np.asarray(a(x).pooled), np.asarray(b(x).pooled))

    ast_path, _ = ast_dir
    infos, _ = read_header(ast_path / "model.safetensors")
    new = {}
    for k in infos:
        n = k.replace("encoder.layer.", "layers.").replace("attention.attention.query", "attention.q_proj")
        n = n.replace("attention.attention.key", "attention.k_proj").replace("attention.attention.value",
                                                                                 "attention.v_proj")
        n = n.replace("attention.output.dense", "attention.o_proj").replace("intermediate.dense", "mlp.fc1")
        new[k] = n.replace("output.dense", "mlp.fc2")
    _rewrite(ast_path, tmp_path / "ast_new", rename=new)
    a, _ = load_hf_ast(ast_path)
    b, _ = load_hf_ast(tmp_path / "ast_new")
    mel = jnp.ones((1, 32, 16))
    np.testing.assert_array_equal(np.asarray(a(mel).tokens), np.asarray(b(mel).tokens))


def test_full_clip_config_and_sharded_load(clip_dir, tmp_path):
    """A `clip` config.json (vision_config nested) loads; a mesh places parameters by the rule table."""
    path, _ = clip_dir
    _rewrite(path, tmp_path / "full")
    vision = json.loads((path / "config.json").read_text())
    (tmp_path / "full" / "config.json").write_text(json.dumps({"model_type": "clip", "vision_config": vision}))
    mesh = make_mesh({"data": -1, "fsdp": 2, "tensor": 2})
    model, _ = load_hf_clip_vision(tmp_path / "full", mesh=mesh)
    ref, _ = load_hf_clip_vision(path)
    kernel = model.encoder.layers.attn.q_proj.kernel[...]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    x = jnp.asarray(np.random.default_rng(5).standard_normal((2, 32, 32, 3)), jnp.float32)
    with jax.set_mesh(mesh):
        out = nnx.jit(lambda m, x: m(x))(model, x)
    assert _max_diff(out.pooled, ref(x).pooled) <= 1e-5


def test_fresh_models_run_and_differentiate():
    v = VisionEncoder(VisionConfig(hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2, image_size=16,
                                   patch_size=8), rngs=nnx.Rngs(0))
    a = AudioEncoder(AudioConfig(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_mel_bins=16,
                                 max_length=24, frequency_stride=8, time_stride=8), rngs=nnx.Rngs(0))
    assert v(jnp.ones((1, 16, 16, 3))).tokens.shape == (1, 5, 16)
    assert a(jnp.ones((1, 24, 16))).tokens.shape == (1, 2 + 2, 16)

    def loss(m, x):
        return jnp.sum(m(x).pooled ** 2)

    x = jnp.asarray(np.random.default_rng(7).standard_normal((1, 16, 16, 3)), jnp.float32)
    grads = nnx.grad(loss)(v, x)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    v_remat = VisionEncoder(dataclasses.replace(v.cfg, remat=True, scan_layers=False), rngs=nnx.Rngs(0))
    grads_remat = nnx.grad(loss)(v_remat, x)
    for g, h in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_remat)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(h), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="expected pixels"):
        v(jnp.ones((1, 3, 16, 16)))
    with pytest.raises(ValueError, match="expected log_mel"):
        a(jnp.ones((1, 16, 24)))
    with pytest.raises(ValueError, match="multiple of num_heads"):
        VisionConfig(hidden_size=10, num_heads=3)
