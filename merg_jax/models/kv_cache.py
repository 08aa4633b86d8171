"""The key/value cache for prefill + decode: a plain pytree, so it passes through jit and scan untouched."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from merg_jax.models.llm_config import LlmConfig
from merg_jax.sharding import constrain

CACHE_AXES = ("layers", "batch", "length", "act_kv_heads", None)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Slots `[0, index)` are written. Slot order is the causal order; `segment_ids` 0 marks padding (a
    left-padded prompt) and unwritten slots, `span_ids` the media spans, as in the attention mask."""

    k: Float[Array, "NL B S Hk K"]  # or a tuple of NL `[B, S, Hk, K]` arrays (`per_layer`)
    v: Float[Array, "NL B S Hk K"]
    segment_ids: Int[Array, "B S"]
    span_ids: Int[Array, "B S"]
    index: Int[Array, ""]

    @classmethod
    def init(cls, config: LlmConfig, batch: int, max_length: int, dtype=None) -> KVCache:
        dtype = config.compute_dtype if dtype is None else jnp.dtype(dtype)
        shape = (config.num_layers, batch, max_length, config.num_kv_heads, config.head_dim)
        zeros = jnp.zeros(shape, dtype)
        return cls(k=constrain(zeros, CACHE_AXES), v=constrain(zeros, CACHE_AXES),
                   segment_ids=jnp.zeros((batch, max_length), jnp.int32),
                   span_ids=jnp.zeros((batch, max_length), jnp.int32), index=jnp.zeros((), jnp.int32))

    @property
    def max_length(self) -> int:
        return (self.k[0] if isinstance(self.k, tuple) else self.k).shape[-3]

    def per_layer(self) -> KVCache:
        """The same cache with `k`/`v` as tuples of per-layer `[B, S, Hk, K]` arrays (for `Llm.forward(layers=)`):
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
