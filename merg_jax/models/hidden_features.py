"""The LLM's hidden features for the generators: r^t (text), r^s (speech), r^v (video).

Two sources, chosen by `FeatureConfig.source`:

- `"reply_span"` (default): r^t = the final hidden states at the reply's own tokens (strictly between
  `<response>` and `</response>`, or to the end of the sample when the closing tag is missing), gathered into
  `[B, reply_len, D]` with a mask; r^s and r^v are None (the Content Synchronizer and Style Disentangler read
  r^t for both modalities). Needs nothing beyond the LM's own sequence, so it works unchanged at inference on the
  generated text.
- `"signal_tokens"` (NExT-GPT style): `num_signal_tokens` learned speech and video signal embeddings are
  appended after each row's sequence (RoPE positions continue from the sample's last token, segment id 1), so
  each sees the whole sample causally and no text token sees them; their final hidden states are r^s and r^v
  `[B, K, D]`; r^t is the reply span as above. The LM is never trained to predict them (no vocabulary change);
  at inference they are appended after the generated reply in one extra forward pass.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from merg_jax.models.layers import param

SOURCES = ("reply_span", "signal_tokens")


@dataclasses.dataclass(frozen=True)
class HiddenFeatureConfig:
    """Where r^t, r^s, r^v come from. `response_id` / `response_end_id`: the tokenizer's `<response>` and
    `</response>` ids, `emo_id` / `emo_end_id` its `<emo>` and `</emo>` (`with_tokenizer`; the training stages find
    the emotion in the CoE text by them)."""

    source: str = "reply_span"
    reply_len: int = 64  # R: the reply's first R tokens form r^t
    num_signal_tokens: int = 4  # K per modality ("signal_tokens")
    response_id: int = -1
    response_end_id: int = -1
    emo_id: int = -1
    emo_end_id: int = -1

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"HiddenFeatureConfig.source={self.source!r} must be one of {SOURCES}")
        if self.reply_len < 1 or self.num_signal_tokens < 1:
            raise ValueError(f"HiddenFeatureConfig: reply_len={self.reply_len} and num_signal_tokens="
                             f"{self.num_signal_tokens} must be >= 1")

    @property
    def signal_tokens(self) -> int:
        """Positions appended after each row (both modalities); 0 for "reply_span"."""
        return 2 * self.num_signal_tokens if self.source == "signal_tokens" else 0

    def with_tokenizer(self, tokenizer) -> HiddenFeatureConfig:
        from merg_jax.special_tokens import EMO, EMO_END, RESPONSE, RESPONSE_END

        ids = tokenizer.special_ids
        return dataclasses.replace(self, response_id=ids[RESPONSE], response_end_id=ids[RESPONSE_END],
                                   emo_id=ids[EMO], emo_end_id=ids[EMO_END])


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class HiddenFeatures:
    """What the Content Synchronizer and Style Disentangler read. A pytree."""

    text: Float[Array, "B R D"]  # r^t
    text_mask: Bool[Array, "B R"]
    speech: Float[Array, "B K D"] | None = None  # r^s (signal_tokens only)
    speech_mask: Bool[Array, "B K"] | None = None
    video: Float[Array, "B K D"] | None = None  # r^v (signal_tokens only)
    video_mask: Bool[Array, "B K"] | None = None


def reply_span_mask(tokens: Int[Array, "B L"], response_id: int, response_end_id: int,
                    segment_ids: Int[Array, "B L"] | None = None) -> Bool[Array, "B L"]:
    """True at the reply's own tokens: after a `<response>` and before its `</response>` (to the end of the
    sample when it is missing); never on the tags, nor on padding (`segment_ids == 0`)."""
    if response_id < 0 or response_end_id < 0:
        raise ValueError("reply_span_mask: response_id / response_end_id are not set "
                         "(HiddenFeatureConfig.with_tokenizer(tokenizer))")
    opened = jnp.cumsum(tokens == response_id, axis=1)
    closed = jnp.cumsum(tokens == response_end_id, axis=1)
    inside = (opened > closed) & (tokens != response_id)
    return inside if segment_ids is None else inside & (segment_ids > 0)


def gather_positions(x: Float[Array, "B L D"], mask: Bool[Array, "B L"], length: int
                     ) -> tuple[Float[Array, "B R D"], Bool[Array, "B R"]]:
    """The first `length` positions where `mask` is True, in order, packed to the front: (`[B, R, D]`, valid)."""
    order = jnp.cumsum(mask, axis=1) - 1
    dest = jnp.where(mask & (order < length), order, -1)
    # One-hot contraction, not a scatter: it shards along the batch; HIGHEST precision keeps it exact.
    onehot = (dest[:, None, :] == jnp.arange(length)[None, :, None]).astype(x.dtype)  # [B, R, L]
    out = jnp.einsum("brl,bld->brd", onehot, x, precision=jax.lax.Precision.HIGHEST)
    valid = jnp.arange(length)[None] < jnp.minimum(jnp.sum(mask, axis=1), length)[:, None]
    return out, valid


class SignalTokens(nnx.Module):
    """K learned speech and K video signal embeddings `[2K, D]` appended after each row ("signal_tokens")."""

    def __init__(self, num_tokens: int, dim: int, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.embedding = param(rngs, nnx.initializers.normal(stddev=dim ** -0.5), (2 * num_tokens, dim),
                               (None, "embed"), param_dtype)

    def append(self, embeddings: Float[Array, "B L D"], segment_ids: Int[Array, "B L"],
               positions: Int[Array, "B L"] | None = None):
        """(embeddings, positions, segment_ids, span_ids) of length L + 2K: the signals after the row, at RoPE
        positions continuing from the sample's last token, in segment 1. Rows hold one sample (no packing)."""
        b, length, _ = embeddings.shape
        k = self.embedding.shape[0]
        if positions is None:
            positions = jnp.where(segment_ids > 0, jnp.arange(length)[None], 0)
        last = jnp.max(jnp.where(segment_ids > 0, positions, -1), axis=1)  # [B]
        sig_pos = last[:, None] + 1 + jnp.arange(k)[None]
        sig = jnp.broadcast_to(self.embedding[...].astype(embeddings.dtype)[None], (b, k, embeddings.shape[-1]))
        return (jnp.concatenate([embeddings, sig], axis=1), jnp.concatenate([positions, sig_pos], axis=1),
                jnp.concatenate([segment_ids, jnp.ones((b, k), segment_ids.dtype)], axis=1),
                jnp.zeros((b, length + k), jnp.int32))


def extract_features(cfg: HiddenFeatureConfig, hidden: Float[Array, "B S D"], tokens: Int[Array, "B L"],
                     segment_ids: Int[Array, "B L"] | None = None) -> HiddenFeatures:
    """r^t from the reply span of the first L positions of `hidden`; with "signal_tokens", r^s and r^v from the
    2K positions after them (`SignalTokens.append` order: K speech, then K video)."""
    length = tokens.shape[1]
    text, text_mask = gather_positions(hidden[:, :length],
                                       reply_span_mask(tokens, cfg.response_id, cfg.response_end_id, segment_ids),
                                       cfg.reply_len)
    if cfg.source == "reply_span":
        return HiddenFeatures(text=text, text_mask=text_mask)
    k = cfg.num_signal_tokens
    if hidden.shape[1] != length + 2 * k:
        raise ValueError(f"extract_features: 'signal_tokens' needs hidden states of L + 2K = {length + 2 * k} "
                         f"positions (SignalTokens.append), got {hidden.shape[1]}")
    ones = jnp.ones((hidden.shape[0], k), bool)
    return HiddenFeatures(text=text, text_mask=text_mask, speech=hidden[:, length:length + k], speech_mask=ones,
                          video=hidden[:, length + k:], video_mask=ones)
