"""ImageBind importer: the vision and audio towers against a PyTorch re-implementation of ImageBind's forward pass
(tests/imagebind_reference.py, ImageBind's own tensor names) with random weights; name/shape errors; the
safetensors and .pth routes; ImageBind-huge's configs and parameter counts from shapes alone."""

from __future__ import annotations

import dataclasses
import math
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from merg_jax.convert import load_imagebind
from merg_jax.convert.imagebind import imagebind_configs_from_shapes
from merg_jax.convert.safetensors_io import TensorSpec, write_safetensors
from merg_jax.models.encoders import AudioConfig, AudioEncoder, VisionConfig, VisionEncoder, window_starts
from merg_jax.sharding import make_mesh

torch = pytest.importorskip("torch")
from tests.imagebind_reference import ImageBindReference, ReferenceConfig

TOL = 1e-4
CFG = ReferenceConfig()  # tiny: vision 32-d, 2 blocks, 16 px, 2×4×4 tubelets; audio 32-d, 16 mels × 22 frames
HEADS = {"vision_num_heads": CFG.vision_num_heads, "audio_num_heads": CFG.audio_num_heads,
         "audio_num_mel_bins": CFG.audio_num_mel_bins, "audio_target_len": CFG.audio_target_len,
         "audio_stride": CFG.audio_stride}
# A few tensors of the modalities we do not import (names as in imagebind_huge.pth).
OTHERS = {"modality_preprocessors.text.token_embedding.weight": (50, 16),
          "modality_trunks.text.blocks.0.attn.in_proj_weight": (48, 16),
          "modality_postprocessors.text.1.log_logit_scale": (),
          "modality_preprocessors.depth.cls_token": (1, 1, 8),
          "modality_trunks.thermal.blocks.0.attn.bias_k": (1, 1, 8),
          "modality_heads.imu.3.weight": (24, 8)}


@pytest.fixture(scope="module")
def ref():
    """The reference with every tensor random (LayerNorms around 1, bias_k/v, pos_embed, the audio scale too)."""
    torch.manual_seed(0)
    model = ImageBindReference(CFG).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm = "norm" in name or "pre_transformer_layer" in name or name.startswith("modality_heads")
            offset = 1.0 if is_norm and p.ndim == 1 and name.endswith("weight") else 0.0
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + offset)
        model.modality_postprocessors.audio[1].log_logit_scale.fill_(math.log(12.5))
    return model


@pytest.fixture(scope="module")
def state(ref):
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    gen = torch.Generator().manual_seed(2)
    sd.update({k: torch.randn(s, generator=gen) for k, s in OTHERS.items()})
    return sd


@pytest.fixture(scope="module")
def towers(state):
    return load_imagebind(state, **HEADS)


def _diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def _torch(x) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x, np.float32))


def test_report_and_configs(ref, state, towers):
    assert set(towers.report.used) == set(ref.state_dict())  # every vision/audio tensor, the audio scale buffer too
    assert set(towers.report.skipped) == set(OTHERS) and towers.report.unknown == ()
    v, a = towers.vision_config, towers.audio_config
    assert (v.hidden_size, v.num_layers, v.num_heads, v.intermediate_size, v.image_size, v.patch_size,
            v.tubelet_size, v.projection_dim) == (32, 2, 4, 128, 16, 4, 2, 24)
    assert (a.hidden_size, a.num_layers, a.intermediate_size, a.patch_size, a.frequency_patches, a.time_patches,
            a.attention_bias_kv, a.patch_norm, a.num_special_tokens) == (32, 2, 128, 4, 5, 7, True, True, 1)
    assert a.embedding_scale == pytest.approx(12.5, rel=1e-6)
    # "module." prefixes (DataParallel) load the same; vision alone skips audio
    only = load_imagebind({"module." + k: v for k, v in state.items()}, modalities=("vision",), **HEADS)
    assert only.audio is None and any(n.startswith("module.modality_trunks.audio.") for n in only.report.skipped)
    np.testing.assert_array_equal(np.asarray(only.vision.encoder.layers.attn.v_proj.kernel[...]),
                                  np.asarray(towers.vision.encoder.layers.attn.v_proj.kernel[...]))


def test_vision_matches_reference(ref, towers):
    rng = np.random.default_rng(0)
    b, s = 2, CFG.image_size
    image = rng.standard_normal((b, s, s, 3)).astype(np.float32)
    clips = rng.standard_normal((b, 4, s, s, 3)).astype(np.float32)  # two 2-frame clips per sample
    model = towers.vision
    with torch.no_grad():
        want_img = ref.tower("vision", _torch(image).permute(0, 3, 1, 2))  # [B, C, H, W]: PadIm2Video repeats
        first = _torch(clips[:, :2]).permute(0, 4, 1, 2, 3)  # [B, C, T=2, H, W]
        want_clip = ref.tower("vision", first)
        want_mean = ref({"vision": _torch(clips).reshape(b, 2, 2, s, s, 3).permute(0, 1, 5, 2, 3, 4)})["vision"]
    out = model(jnp.asarray(image))
    assert _diff(out.pooled, want_img["embedding"]) <= TOL
    assert _diff(out.tokens, want_img["trunk"]) <= TOL
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out.pooled), axis=-1), 1.0, rtol=1e-5)
    out = model(jnp.asarray(clips[:, :2]))
    assert _diff(out.pooled, want_clip["embedding"]) <= TOL and _diff(out.tokens, want_clip["trunk"]) <= TOL
    assert _diff(out.pooled, want_img["embedding"]) > 1e-2  # two different frames are not the repeated image
    assert _diff(model.encode_clip(jnp.asarray(clips)).pooled, want_mean) <= TOL  # ImageBind's mean over clips


def test_audio_matches_reference(ref, towers):
    rng = np.random.default_rng(1)
    b, t, f = 2, CFG.audio_target_len, CFG.audio_num_mel_bins
    mel = rng.standard_normal((b, t, f)).astype(np.float32)  # ours: [B, frames, mels]
    with torch.no_grad():
        want = ref.tower("audio", _torch(mel).transpose(1, 2)[:, None])  # ImageBind: [B, 1, mels, frames]
    out = towers.audio(jnp.asarray(mel))
    assert _diff(out.pooled, want["embedding"]) <= TOL
    assert _diff(out.tokens, want["normed"]) <= TOL  # our tokens are after the head's LayerNorm
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out.pooled), axis=-1), 12.5, rtol=1e-5)
    # three windows of a longer clip, embedded and averaged as ImageBind's [B, 3, 1, mels, frames] input
    long = rng.standard_normal((b, 40, f)).astype(np.float32)
    lengths = np.array([40, 30])
    starts = np.asarray(window_starts(jnp.asarray(lengths), t, 3))
    windows = np.stack([np.stack([long[i, s0:s0 + t] for s0 in starts[i]]) for i in range(b)])
    with torch.no_grad():
        want = ref({"audio": _torch(windows).transpose(2, 3)[:, :, None]})["audio"]
    got = towers.audio.encode_clips(jnp.asarray(long), jnp.asarray(lengths), num_windows=3)
    assert _diff(got.pooled, want) <= TOL


def test_bad_keys_are_named(state):
    with pytest.raises(ValueError, match=r"no ImageBind modality.*surprise\.weight"):
        load_imagebind({**state, "surprise.weight": torch.zeros(2)}, **HEADS)
    loose = load_imagebind({**state, "surprise.weight": torch.zeros(2)}, modalities="audio", strict=False, **HEADS)
    assert loose.report.unknown == ("surprise.weight",)
    with pytest.raises(ValueError, match=r"unknown tensors.*modality_trunks\.vision\.blocks\.0\.layer_scale_gamma1"):
        load_imagebind({**state, "modality_trunks.vision.blocks.0.layer_scale_gamma1": torch.ones(1, 1, 32)}, **HEADS)
    key = "modality_trunks.audio.blocks.1.mlp.fc2.bias"
    with pytest.raises(ValueError, match=rf"missing tensors: {re.escape(key)}"):
        load_imagebind({k: v for k, v in state.items() if k != key}, **HEADS)
    with pytest.raises(ValueError, match=r"missing tensors: modality_postprocessors\.audio\.1\.log_logit_scale"):
        load_imagebind({k: v for k, v in state.items() if "postprocessors.audio" not in k}, **HEADS)
    with pytest.raises(ValueError, match=rf"{re.escape(key)}: \[33\] does not give \[32\]"):
        load_imagebind({**state, key: torch.zeros(33)}, **HEADS)
    with pytest.raises(ValueError, match=r"in_proj_weight: \[96, 31\] does not give \[32, 32\]"):
        load_imagebind({**state, "modality_trunks.vision.blocks.1.attn.in_proj_weight": torch.zeros(96, 31)},
                       **HEADS)
    with pytest.raises(ValueError, match="audio_num_mel_bins"):  # geometry that does not fit pos_embed
        load_imagebind(state, **{**HEADS, "audio_target_len": 40})
    with pytest.raises(ValueError, match="pass vision_num_heads="):  # heads are not in any shape
        load_imagebind(state, modalities="vision")
    with pytest.raises(ValueError, match="hidden_size"):
        load_imagebind(state, hidden_size=64, **HEADS)


def test_safetensors_pth_and_sharded_routes(state, towers, tmp_path, monkeypatch):
    arrays = {k: v.numpy() for k, v in state.items()}
    write_safetensors(tmp_path / "ib.safetensors",
                      [TensorSpec(k, a.shape, a.dtype, lambda a=a: a) for k, a in arrays.items()])
    torch.save(state, tmp_path / "ib.pth")
    mesh = make_mesh({"data": -1, "fsdp": 2, "tensor": 2})
    for got in (load_imagebind(tmp_path / "ib.safetensors", **HEADS), load_imagebind(str(tmp_path / "ib.pth"),
                                                                                     mesh=mesh, **HEADS)):
        assert got.vision_config == towers.vision_config and got.audio_config == towers.audio_config
        assert got.report == towers.report
        for a, b in ((got.vision, towers.vision), (got.audio, towers.audio)):
            for (pa, va), (pb, vb) in zip(nnx.to_flat_state(nnx.state(a)), nnx.to_flat_state(nnx.state(b))):
                assert pa == pb
                np.testing.assert_array_equal(np.asarray(va.get_value()), np.asarray(vb.get_value()))
    kernel = got.audio.encoder.layers.attn.q_proj.kernel[...]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    monkeypatch.setitem(sys.modules, "torch", None)  # torch is optional: a clear message without it
    with pytest.raises(ImportError, match="needs torch.*safetensors"):
        load_imagebind(tmp_path / "ib.pth", **HEADS)


def _vision_params(d, layers, mlp, proj, patch, tubelet, tokens):
    block = 3 * d * d + 3 * d + d * d + d + 2 * mlp * d + mlp + d + 4 * d  # in_proj, out_proj, MLP, 2 LayerNorms
    return d * 3 * tubelet * patch ** 2 + d + tokens * d + 2 * d + layers * block + 2 * d + d * proj


def _audio_params(d, layers, mlp, proj, patch, tokens):
    block = 3 * d * d + 3 * d + d * d + d + 2 * mlp * d + mlp + d + 4 * d + 2 * d  # + bias_k, bias_v
    return d * patch ** 2 + 2 * d + d + tokens * d + layers * block + 2 * d + d * proj


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_huge_configs_and_parameter_counts():
    """ImageBind-huge's reference built on torch's meta device (shapes only, nothing allocated)."""
    with torch.device("meta"):
        huge = ImageBindReference(ReferenceConfig.huge())
    shapes = {k: tuple(v.shape) for k, v in huge.state_dict().items()}
    vcfg, acfg = imagebind_configs_from_shapes(shapes)  # ImageBind-huge's head counts and audio geometry by default
    assert vcfg == VisionConfig.imagebind_huge() and acfg == AudioConfig.imagebind_huge()
    torch_counts = {m: sum(p.numel() for n, p in huge.named_parameters() if f".{m}." in n) for m in ("vision", "audio")}
    ours = {"vision": _count(nnx.state(nnx.eval_shape(lambda: VisionEncoder(vcfg, rngs=nnx.Rngs(0))), nnx.Param)),
            "audio": _count(nnx.state(nnx.eval_shape(lambda: AudioEncoder(acfg, rngs=nnx.Rngs(0))), nnx.Param))}
    analytic = {"vision": _vision_params(1280, 32, 5120, 1024, 14, 2, 257),
                "audio": _audio_params(768, 12, 3072, 1024, 16, 229)}
    assert ours == torch_counts == analytic
    assert 630e6 < analytic["vision"] < 635e6 and 85e6 < analytic["audio"] < 87e6
    assert dataclasses.replace(vcfg, scan_layers=False) == imagebind_configs_from_shapes(
        shapes, modalities="vision", scan_layers=False)[0]
