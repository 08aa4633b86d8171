"""HiFi-GAN: our generator equals transformers' `SpeechT5HifiGan` on the same weights (imported from its
`save_pretrained` directory, plain or weight-normalised), its output length is PyTorch's, a checkpoint that does not
match is named, and every parameter gets a finite, nonzero gradient."""

import importlib.util
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from merg_jax.models.speech.hifigan import HifiGan, HifiGanConfig, MelStat

needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None,
    reason="the reference side needs torch and transformers")

SMALL = dict(model_in_dim=20, upsample_initial_channel=32, upsample_rates=[4, 4], upsample_kernel_sizes=[8, 8],
             resblock_kernel_sizes=[3, 7], resblock_dilation_sizes=[[1, 3], [1, 3]])
SCALE = 0.1  # weight std of the random peer: its waveform spans about ±0.6, short of tanh's saturation


def _peer(tmp_path, seed: int = 0, weight_norm: bool = False, **overrides):
    """A random SpeechT5HifiGan (every tensor random; mean/scale too), saved to tmp_path: (torch model, dir)."""
    import torch
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig
    from transformers.utils import logging as hf_logging

    from merg_jax.bench.encoders import randomize_torch_module

    torch.manual_seed(seed)
    peer = SpeechT5HifiGan(SpeechT5HifiGanConfig(**{**SMALL, **overrides})).eval()
    randomize_torch_module(peer, seed, scale=SCALE)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # buffers: randomize_torch_module covers parameters only; scale stays away from 0
        peer.mean.copy_(torch.randn(peer.mean.shape, generator=gen))
        peer.scale.copy_(torch.rand(peer.scale.shape, generator=gen) + 0.5)
    if weight_norm:
        peer.apply_weight_norm()
        with torch.no_grad():  # g ≠ ‖v‖, so a fold that ignored g would show
            for name, p in peer.named_parameters():
                if name.endswith("original0"):
                    p.mul_(torch.rand(p.shape, generator=gen) + 0.5)
    hf_logging.disable_progress_bar()
    peer.save_pretrained(tmp_path)
    return peer, tmp_path


def _reference(peer, mel: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return peer(torch.from_numpy(mel)).numpy()


def _mel(b: int, t: int, m: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((b, t, m)).astype(np.float32)


@needs_torch
@pytest.mark.parametrize("normalize_before, weight_norm", [(False, False), (True, False), (True, True)],
                         ids=["plain", "normalize_before", "weight_norm"])
def test_matches_speecht5_hifigan(tmp_path, normalize_before, weight_norm):
    from merg_jax.convert import load_hf_hifigan

    peer, path = _peer(tmp_path, normalize_before=normalize_before, weight_norm=weight_norm)
    model = load_hf_hifigan(path)
    assert model.config.normalize_before is normalize_before
    assert (model.mean is not None) is normalize_before
    mel = _mel(2, 11, 20)
    ref = _reference(peer, mel)
    ours = np.asarray(model(jnp.asarray(mel)))
    assert ours.shape == ref.shape == (2, 11 * 16)
    # tanh output, |y| <= 1: an absolute tolerance is a relative one; a random net keeps it far from saturation
    assert np.abs(ref).max() < 0.99 and np.abs(ref).std() > 0.05
    np.testing.assert_allclose(ours, ref, atol=5e-6, rtol=0)  # float32 rounding: ~3e-7 seen


@needs_torch
def test_output_length_is_torchs_for_odd_kernel_minus_rate(tmp_path):
    # k - u odd (5 - 2, 7 - 4): PyTorch's padding (k - u) // 2 rounds down, one extra sample per stage.
    from merg_jax.convert import load_hf_hifigan

    peer, path = _peer(tmp_path, upsample_rates=[2, 4], upsample_kernel_sizes=[5, 7], normalize_before=False)
    model = load_hf_hifigan(path)
    mel = _mel(1, 7, 20)
    ref = _reference(peer, mel)
    assert ref.shape[-1] == model.config.output_length(7) == (7 * 2 + 1) * 4 + 1 != 7 * model.config.hop_length
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(mel))), ref, atol=5e-6, rtol=0)


@needs_torch
def test_missing_or_unexpected_tensor_is_named(tmp_path):
    from merg_jax.convert import load_hf_hifigan
    from merg_jax.convert.safetensors_io import SafetensorsReader, TensorSpec, read_header, write_safetensors

    _, path = _peer(tmp_path, normalize_before=True)
    file = path / "model.safetensors"
    infos, _ = read_header(file)
    with SafetensorsReader() as reader:
        arrays = {n: np.array(reader.array(i)) for n, i in infos.items()}
    arrays["resblocks.2.extra.weight"] = arrays.pop("resblocks.3.convs2.1.weight")
    write_safetensors(file, [TensorSpec(n, a.shape, a.dtype, lambda a=a: a) for n, a in arrays.items()])
    with pytest.raises(ValueError) as e:
        load_hf_hifigan(path)
    msg = str(e.value)
    assert str(file) in msg
    assert "missing tensors: resblocks.3.convs2.1.weight" in msg
    assert "unexpected tensors: resblocks.2.extra.weight" in msg


def test_config_from_hf_and_tiny():
    cfg = HifiGanConfig.from_hf_config({"model_type": "speecht5_hifigan", "initializer_range": 0.01, **SMALL})
    assert cfg.upsample_rates == (4, 4) and cfg.resblock_dilation_sizes == ((1, 3), (1, 3))
    assert cfg.hop_length == 16 and cfg.output_length(10) == 160 and cfg.normalize_before
    hash(cfg)  # usable as a static jit argument
    with pytest.raises(ValueError, match="resblock_type"):
        HifiGanConfig.from_hf_config({**SMALL, "resblock_type": "2"})
    with pytest.raises(ValueError, match="divisible"):
        HifiGanConfig(upsample_initial_channel=24, upsample_rates=(2, 2, 2, 2), upsample_kernel_sizes=(4,) * 4)
    tiny = HifiGanConfig.tiny()
    assert tiny.hop_length == 256 and tiny.model_in_dim == 80


def test_gradients_are_finite_and_nonzero_for_every_parameter():
    # Two stages, one resblock kernel: every kind of parameter, few distinct shapes (each new shape costs an
    # initializer compilation, ~0.5 s on a busy CPU). The parity tests cover the multi-kernel fusion.
    cfg = HifiGanConfig.tiny(model_in_dim=4, upsample_initial_channel=8, upsample_rates=(2, 2),
                             upsample_kernel_sizes=(4, 4), resblock_kernel_sizes=(3,),
                             resblock_dilation_sizes=((1, 2),), normalize_before=True)
    model = HifiGan(cfg, rngs=nnx.Rngs(0))  # the real initialisation (the importer only builds abstractly)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    # mean / scale are state, not parameters: an optimiser over nnx.Param never moves them
    assert {type(v) for v in jax.tree.leaves(rest, is_leaf=lambda x: isinstance(x, nnx.Variable))} == {MelStat}
    mel = jnp.asarray(_mel(2, 6, 4))
    target = jnp.asarray(np.random.default_rng(0).uniform(-0.5, 0.5, (2, cfg.output_length(6))), jnp.float32)

    def loss(p):
        return jnp.mean(jnp.abs(nnx.merge(graphdef, p, rest)(mel) - target))

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    assert math.isfinite(float(value))
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        g = np.asarray(g)
        assert np.isfinite(g).all() and np.abs(g).max() > 0, jax.tree_util.keystr(path)
    n_params = sum(np.size(g) for g in jax.tree.leaves(grads))
    assert n_params == sum(np.size(v) for v in jax.tree.leaves(params))
