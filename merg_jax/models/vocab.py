"""Growing an LLM's vocabulary to its tokenizer's: our tokenizer adds its special tokens (`<Aud>`, `<Vid>`,
`<emo>`, `<response>`, ... — `data.tokenizer.SPECIAL_TOKENS`) to a LLaMA/Vicuna tokenizer, which then has more
ids than the imported checkpoint has embedding rows.

`resize_vocab(model, vocab_size)` returns a new `Llm` whose embedding table (and untied LM head) has
`vocab_size` rows; the old rows are kept and every new row is the mean of the old ones (Hugging Face's
`resize_token_embeddings(mean_resizing=True)` draws the new rows around that mean; the mean itself keeps a new
token's logit at the average, so adding tokens does not disturb the checkpoint's predictions). The result is
placed by the rule table on `mesh` (default: the mesh the old embedding lives on). Pad the size to a multiple of
the tensor-parallel degree (e.g. 128) so the vocabulary axis shards evenly.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from merg_jax.models.llm import Llm
from merg_jax.sharding import state_shardings


def _grow(rows: jax.Array, n: int, axis: int) -> jax.Array:
    mean = jnp.mean(rows.astype(jnp.float32), axis=axis, keepdims=True).astype(rows.dtype)
    shape = list(rows.shape)
    shape[axis] = n - rows.shape[axis]
    return jnp.concatenate([rows, jnp.broadcast_to(mean, shape)], axis=axis)


def resize_vocab(model: Llm, vocab_size: int, *, mesh: jax.sharding.Mesh | None = None) -> Llm:
    """A copy of `model` with `vocab_size` embedding rows (>= the current size); see the module docstring."""
    cfg = model.cfg
    if vocab_size < cfg.vocab_size:
        raise ValueError(f"resize_vocab: vocab_size={vocab_size} is smaller than the model's {cfg.vocab_size} "
                         "(shrinking would drop tokens the checkpoint knows)")
    if vocab_size == cfg.vocab_size:
        return model
    new_cfg = dataclasses.replace(cfg, vocab_size=vocab_size)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Llm(new_cfg, rngs=nnx.Rngs(0))))
    old = nnx.state(model)
    if mesh is None:
        sharding = model.embed.embedding[...].sharding
        mesh = sharding.mesh if isinstance(sharding, jax.sharding.NamedSharding) else None
    if mesh is None:
        from merg_jax.sharding import single_device_mesh

        mesh = single_device_mesh()
    shardings = state_shardings(abstract, mesh)

    def grow(state):
        flat = dict(nnx.to_flat_state(state))
        out = []
        for path, var in nnx.to_flat_state(abstract):
            value = flat[path][...]
            if path == ("embed", "embedding"):
                value = _grow(value, vocab_size, axis=0)
            elif path[:1] == ("lm_head",) and path[-1] == "kernel":
                value = _grow(value, vocab_size, axis=1)
            elif path[:1] == ("lm_head",) and path[-1] == "bias":
                value = _grow(value, vocab_size, axis=0)
            out.append((path, var.replace(value)))
        return nnx.from_flat_state(out)

    with jax.set_mesh(mesh):
        state = jax.jit(grow, out_shardings=shardings)(old)
    return nnx.merge(graphdef, state)


__all__ = ["resize_vocab"]
