"""The key/value cache for prefill + decode: a plain pytree, so it passes through jit and scan untouched.

Keys and values are stored in the attention core's rows layout, `[B·Hk, S, K]` per layer (batch major, each
key/value head's slots contiguous; `merg_jax.kernels.dense`): a decode step writes its new slot into each row
and the core reads the cache as it lies. Stored `[B, S, Hk, K]`, every step of every layer copied the whole
cache into that layout first; stored `[B, Hk, S, K]`, XLA:CPU fused the slot update into both of its readers
(the carried cache, and the core's reshape of it) and copied the cache for each (docs/performance.md,
"Decoding").
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from merg_jax.models.llm_config import LlmConfig
from merg_jax.sharding import constrain

CACHE_AXES = ("layers", "act_batch_kv_heads", "length", None)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Slots `[0, index)` are written. Slot order is the causal order; `segment_ids` 0 marks padding (a
    left-padded prompt) and unwritten slots, `span_ids` the media spans, as in the attention mask."""

    k: Float[Array, "NL BHk S K"]  # or a tuple of NL `[B·Hk, S, K]` arrays (`per_layer`)
    v: Float[Array, "NL BHk S K"]
    segment_ids: Int[Array, "B S"]
    span_ids: Int[Array, "B S"]
    index: Int[Array, ""]

    @classmethod
    def init(cls, config: LlmConfig, batch: int, max_length: int, dtype=None) -> KVCache:
        dtype = config.compute_dtype if dtype is None else jnp.dtype(dtype)
        shape = (config.num_layers, batch * config.num_kv_heads, max_length, config.head_dim)
        zeros = jnp.zeros(shape, dtype)
        return cls(k=constrain(zeros, CACHE_AXES), v=constrain(zeros, CACHE_AXES),
                   segment_ids=jnp.zeros((batch, max_length), jnp.int32),
                   span_ids=jnp.zeros((batch, max_length), jnp.int32), index=jnp.zeros((), jnp.int32))

    @property
    def max_length(self) -> int:
        return (self.k[0] if isinstance(self.k, tuple) else self.k).shape[-2]

    def per_layer(self) -> KVCache:
        """The same cache with `k`/`v` as tuples of per-layer `[B·Hk, S, K]` arrays (for `Llm.forward(layers=)`):
        a decode loop then updates each layer's slot in place instead of slicing and restacking the whole cache
        on every step."""
        if isinstance(self.k, tuple):
            return self
        n = self.k.shape[0]
        return dataclasses.replace(self, k=tuple(self.k[i] for i in range(n)), v=tuple(self.v[i] for i in range(n)))

    def write_mask_ids(self, segment_ids: Int[Array, "B L"], span_ids: Int[Array, "B L"]) -> KVCache:
        """Records the new tokens' segment and span ids at slots `[index, index + L)`."""
        at = (0, self.index)
        return dataclasses.replace(
            self,
            segment_ids=jax.lax.dynamic_update_slice(self.segment_ids, segment_ids.astype(jnp.int32), at),
            span_ids=jax.lax.dynamic_update_slice(self.span_ids, span_ids.astype(jnp.int32), at))
