"""The shared transformer blocks against PyTorch with the same random weights (float32): EncoderLayer vs
torch.nn.TransformerEncoderLayer(norm_first=True), DecoderLayer vs torch.nn.TransformerDecoderLayer(norm_first=True),
the scanned / unrolled stacks vs torch.nn.TransformerEncoder / TransformerDecoder, Attention(bias_kv=True) vs
torch.nn.MultiheadAttention(add_bias_kv=True); key padding masks throughout; a fully masked memory row."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from merg_jax.bench.encoders import randomize_torch_module
from merg_jax.models.transformer import Attention, BlockConfig, Decoder, DecoderLayer, Encoder, EncoderLayer

torch = pytest.importorskip("torch")

D, H, F = 32, 4, 64
TOL = 1e-5
IMPLS = ("xla", "blockwise")  # "auto" on CPU picks one of these; "reference" is the definition they are tested against


def _cfg(impl="xla", num_layers=1, scan=True):
    return BlockConfig(hidden_size=D, intermediate_size=F, num_layers=num_layers, num_heads=H, hidden_act="gelu",
                       layer_norm_eps=1e-5, attention_impl=impl, scan_layers=scan)


def _randomize(module, seed):
    # train mode (dropout is 0) keeps torch off its fused inference fast path
    return randomize_torch_module(module, seed, scale=0.15).train()


def _np(t):
    return t.detach().numpy().astype(np.float32)


def _mha_params(mha, prefix=""):
    """torch MultiheadAttention → our Attention's parameters: in_proj_weight [3D, D] rows are q, k, v; our
    kernels are [in, out], i.e. the transposed torch weights."""
    w, b = _np(mha.in_proj_weight), _np(mha.in_proj_bias)
    out = {}
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        out[f"{prefix}{name}.kernel"] = w[i * D:(i + 1) * D].T
        out[f"{prefix}{name}.bias"] = b[i * D:(i + 1) * D]
    out[f"{prefix}o_proj.kernel"] = _np(mha.out_proj.weight).T
    out[f"{prefix}o_proj.bias"] = _np(mha.out_proj.bias)
    if mha.bias_k is not None:
        out[f"{prefix}bias_k"], out[f"{prefix}bias_v"] = _np(mha.bias_k).reshape(D), _np(mha.bias_v).reshape(D)
    return out


def _layer_params(tl):
    """A torch encoder or decoder layer → {dotted path in our layer: array}."""
    out = {"mlp.fc1.kernel": _np(tl.linear1.weight).T, "mlp.fc1.bias": _np(tl.linear1.bias),
           "mlp.fc2.kernel": _np(tl.linear2.weight).T, "mlp.fc2.bias": _np(tl.linear2.bias)}
    out.update(_mha_params(tl.self_attn, "attn."))
    if hasattr(tl, "multihead_attn"):
        out.update(_mha_params(tl.multihead_attn, "cross_attn."))
    for i in (1, 2, 3):
        if hasattr(tl, f"norm{i}"):
            out[f"norm{i}.scale"], out[f"norm{i}.bias"] = _np(getattr(tl, f"norm{i}").weight), _np(
                getattr(tl, f"norm{i}").bias)
    return out


def _load(module, params):
    """Assigns each dotted path; checks that every parameter of `module` was given (no silent leftovers)."""
    for path, value in params.items():
        obj = module
        for part in path.split("."):
            obj = getattr(obj, part)
        assert obj[...].shape == value.shape, (path, obj[...].shape, value.shape)
        obj[...] = jnp.asarray(value)
    n_params = len(jax.tree.leaves(nnx.state(module, nnx.Param)))
    assert n_params == len(params), f"{n_params} parameters, {len(params)} loaded"


def _load_stack(stack, torch_layers):
    per_layer = [_layer_params(tl) for tl in torch_layers]
    _load(stack.layers, {k: np.stack([p[k] for p in per_layer]) for k in per_layer[0]})


def _inputs(seed=0, b=3, length=7):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, length, D)).astype(np.float32)
    lengths = np.array([length, 4, 1])[:b]
    mask = np.arange(length)[None, :] < lengths[:, None]  # True = real token
    return x, mask


def _torch_mask(mask):
    return torch.from_numpy(~mask)  # torch: True = padding (ignored)


@pytest.mark.parametrize("impl", IMPLS)
def test_encoder_layer_matches_torch(impl):
    tl = _randomize(torch.nn.TransformerEncoderLayer(D, H, F, dropout=0.0, activation="gelu", batch_first=True,
                                                     norm_first=True), seed=1)
    layer = EncoderLayer(_cfg(impl), rngs=nnx.Rngs(0))
    _load(layer, _layer_params(tl))
    x, mask = _inputs()
    want = _np(tl(torch.from_numpy(x), src_key_padding_mask=_torch_mask(mask)))
    got = np.asarray(jax.jit(lambda x, m: layer(x, m))(x, mask))
    np.testing.assert_allclose(got, want, atol=TOL, rtol=TOL)
    # And without a mask: every key visible.
    got = np.asarray(nnx.jit(lambda layer, x: layer(x))(layer, x))
    np.testing.assert_allclose(got, _np(tl(torch.from_numpy(x))), atol=TOL, rtol=TOL)


@pytest.mark.parametrize("impl", IMPLS)
def test_decoder_layer_matches_torch(impl):
    tl = _randomize(torch.nn.TransformerDecoderLayer(D, H, F, dropout=0.0, activation="gelu", batch_first=True,
                                                     norm_first=True), seed=2)
    layer = DecoderLayer(_cfg(impl), rngs=nnx.Rngs(0))
    _load(layer, _layer_params(tl))
    memory, mask = _inputs(seed=3)
    queries = np.random.default_rng(4).standard_normal((3, 5, D)).astype(np.float32)
    want = _np(tl(torch.from_numpy(queries), torch.from_numpy(memory), memory_key_padding_mask=_torch_mask(mask)))
    got = np.asarray(jax.jit(lambda q, m, k: layer(q, m, k))(queries, memory, mask))
    np.testing.assert_allclose(got, want, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("scan", [True, False])
def test_stacks_match_torch(scan):
    """Encoder (2 layers) vs torch.nn.TransformerEncoder, Decoder (2 layers) vs torch.nn.TransformerDecoder:
    the layers' stacked parameters are applied in order, masks shared by every layer."""
    proto = torch.nn.TransformerEncoderLayer(D, H, F, dropout=0.0, activation="gelu", batch_first=True,
                                             norm_first=True)
    tenc = _randomize(torch.nn.TransformerEncoder(proto, 2, enable_nested_tensor=False), seed=5)
    dproto = torch.nn.TransformerDecoderLayer(D, H, F, dropout=0.0, activation="gelu", batch_first=True,
                                              norm_first=True)
    tdec = _randomize(torch.nn.TransformerDecoder(dproto, 2), seed=6)
    enc, dec = Encoder(_cfg(num_layers=2, scan=scan), rngs=nnx.Rngs(0)), Decoder(_cfg(num_layers=2, scan=scan),
                                                                                 rngs=nnx.Rngs(1))
    _load_stack(enc, tenc.layers)
    _load_stack(dec, tdec.layers)
    x, mask = _inputs(seed=7)
    queries = np.random.default_rng(8).standard_normal((3, 4, D)).astype(np.float32)
    memory_t = tenc(torch.from_numpy(x), src_key_padding_mask=_torch_mask(mask))
    want_dec = _np(tdec(torch.from_numpy(queries), memory_t, memory_key_padding_mask=_torch_mask(mask)))

    @nnx.jit
    def run(enc, dec, x, mask, queries):
        memory = enc(x, mask)
        return memory, dec(queries, memory, mask)

    memory, out = run(enc, dec, x, mask, queries)
    np.testing.assert_allclose(np.asarray(memory), _np(memory_t), atol=TOL, rtol=TOL)
    np.testing.assert_allclose(np.asarray(out), want_dec, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("impl", IMPLS)
def test_attention_bias_kv_matches_torch(impl):
    """The learned extra key/value is appended after projection and always visible, so even a row whose real
    keys are all padding attends to it (torch gives no NaN there either)."""
    mha = _randomize(torch.nn.MultiheadAttention(D, H, add_bias_kv=True, batch_first=True), seed=9)
    attn = Attention(_cfg(impl), bias_kv=True, rngs=nnx.Rngs(0))
    _load(attn, _mha_params(mha))
    x, mask = _inputs(seed=10)
    mask[2] = False  # a fully padded row
    tx = torch.from_numpy(x)
    want_self = _np(mha(tx, tx, tx, key_padding_mask=_torch_mask(mask), need_weights=False)[0])
    run = nnx.jit(lambda attn, x, memory, mask: attn(x, memory, mask))
    np.testing.assert_allclose(np.asarray(run(attn, x, None, mask)), want_self, atol=TOL, rtol=TOL)
    queries = np.random.default_rng(11).standard_normal((3, 2, D)).astype(np.float32)
    tq = torch.from_numpy(queries)
    want_cross = _np(mha(tq, tx, tx, key_padding_mask=_torch_mask(mask), need_weights=False)[0])
    np.testing.assert_allclose(np.asarray(run(attn, queries, x, mask)), want_cross, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("impl", IMPLS)
def test_fully_masked_memory_row(impl):
    """A query whose keys are all padding gets a zero attention output: Attention returns just the output
    projection's bias, and the DecoderLayer equals torch's layer with the cross-attention term replaced by that
    bias (torch itself gives NaN there). Values and gradients stay finite."""
    attn = Attention(_cfg(impl), rngs=nnx.Rngs(0))
    attn.o_proj.bias[...] = jnp.linspace(-1, 1, D)
    memory, mask = _inputs(seed=12)
    mask[1] = False
    queries = np.random.default_rng(13).standard_normal((3, 5, D)).astype(np.float32)
    out = np.asarray(nnx.jit(lambda attn, q, m, k: attn(q, m, k))(attn, queries, memory, mask))
    np.testing.assert_array_equal(out[1], np.broadcast_to(np.asarray(attn.o_proj.bias[...]), (5, D)))
    assert np.isfinite(out).all()

    tl = _randomize(torch.nn.TransformerDecoderLayer(D, H, F, dropout=0.0, activation="gelu", batch_first=True,
                                                     norm_first=True), seed=14)
    layer = DecoderLayer(_cfg(impl), rngs=nnx.Rngs(0))
    _load(layer, _layer_params(tl))
    got = np.asarray(nnx.jit(lambda layer, q, m, k: layer(q, m, k))(layer, queries, memory, mask))
    with torch.no_grad():
        q = torch.from_numpy(queries[1:2])
        h = tl.norm1(q)
        q = q + tl.self_attn(h, h, h, need_weights=False)[0]
        q = q + tl.multihead_attn.out_proj.bias  # the cross-attention of an all-padding memory: zeros → bias
        q = q + tl.linear2(torch.nn.functional.gelu(tl.linear1(tl.norm3(q))))
    np.testing.assert_allclose(got[1], _np(q)[0], atol=TOL, rtol=TOL)
    # The other rows are unaffected by row 1's padding (torch, rows 0 and 2 only).
    keep = [0, 2]
    want = _np(tl(torch.from_numpy(queries[keep]), torch.from_numpy(memory[keep]),
                  memory_key_padding_mask=_torch_mask(mask[keep])))
    np.testing.assert_allclose(got[keep], want, atol=TOL, rtol=TOL)

    def loss(layer, q, m):
        return jnp.sum(jnp.square(layer(q, m, jnp.asarray(mask))))

    grads = nnx.jit(nnx.grad(loss, argnums=(0, 1, 2)))(layer, jnp.asarray(queries), jnp.asarray(memory))
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    # Padded memory positions get exactly zero gradient.
    np.testing.assert_array_equal(np.asarray(grads[2])[~mask], 0.0)
