"""The interleaved LLM input: text embeddings with each clip's projected media tokens at its `<Aud>`/`<Vid>` slots.

The data pipeline marks every slot (`merg_jax.data.pipeline`): `media_kind [B, L]` (1 audio, 2 video, 0 text) and
`media_clip [B, L]` (the clip c of the slot). A clip with N tokens per modality has N slots of that kind in the
prompt (`data.media_tokens`); the j-th slot (in sequence order) of clip c and kind k receives token j of that
clip's projected tokens `media[k - 1][b, c, j]`. A slot whose clip has no media of that kind (`present` False)
keeps the placeholder token's own embedding.

Span ids make the N tokens of one clip and kind one bidirectional span inside the causal sequence (the
attention mask semantics of `merg_jax.kernels.attention`): span = 1 + (k - 1)·C + c at a slot, 0 on text.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

AUDIO, VIDEO = 1, 2


def slot_keys(media_kind: Int[Array, "B L"], media_clip: Int[Array, "B L"], num_clips: int) -> Int[Array, "B L"]:
    """(kind - 1)·C + clip at a slot, -1 elsewhere (and at slots naming a clip outside 0..C-1)."""
    ok = (media_kind > 0) & (media_clip >= 0) & (media_clip < num_clips)
    return jnp.where(ok, (media_kind - 1) * num_clips + media_clip, -1)


def slot_index(keys: Int[Array, "B L"], num_keys: int) -> Int[Array, "B L"]:
    """For each slot, how many earlier slots have its key: its token index j within the clip; -1 off slots."""
    onehot = (keys[..., None] == jnp.arange(num_keys)).astype(jnp.int32)  # [B, L, K]
    seen = jnp.cumsum(onehot, axis=1) - onehot  # slots of each key strictly before each position
    j = jnp.take_along_axis(seen, jnp.maximum(keys, 0)[..., None], axis=-1)[..., 0]
    return jnp.where(keys >= 0, j, -1)


def media_span_ids(media_kind: Int[Array, "B L"], media_clip: Int[Array, "B L"], num_clips: int) -> Int[Array, "B L"]:
    """Span id of each position: 1 + (kind - 1)·C + clip at a slot, 0 elsewhere."""
    return slot_keys(media_kind, media_clip, num_clips) + 1


def splice_media(
    text: Float[Array, "B L D"],
    media_kind: Int[Array, "B L"],
    media_clip: Int[Array, "B L"],
    audio: Float[Array, "B C N D"] | None,
    video: Float[Array, "B C N D"] | None,
    audio_present: Bool[Array, "B C"] | None = None,
    video_present: Bool[Array, "B C"] | None = None,
) -> tuple[Float[Array, "B L D"], Int[Array, "B L"]]:
    """(embeddings `[B, L, D]` with the media tokens written at their slots, span ids `[B, L]`).

    audio / video: projected tokens per clip (None: that modality is absent, its slots keep their embedding).
    A clip's slots beyond its N tokens keep their embedding too (the data and the projector disagree on N;
    `check_slots` catches that before training)."""
    b, length, d = text.shape
    ref = audio if audio is not None else video
    if ref is None:
        return text, jnp.zeros((b, length), jnp.int32)
    _, c, n, _ = ref.shape
    pieces, present = [], []
    for tokens, mask in ((audio, audio_present), (video, video_present)):
        if tokens is None:
            pieces.append(jnp.zeros((b, c, n, d), text.dtype))
            present.append(jnp.zeros((b, c), bool))
        else:
            if tokens.shape != (b, c, n, d):
                raise ValueError(f"splice_media: audio and video tokens must both be [B={b}, C, N, D={d}] with the "
                                 f"same C and N, got {list(ref.shape)} and {list(tokens.shape)}")
            pieces.append(tokens.astype(text.dtype))
            present.append(jnp.ones((b, c), bool) if mask is None else jnp.asarray(mask, bool))
    table = jnp.concatenate(pieces, axis=1)  # [B, 2C, N, D]
    ok = jnp.concatenate(present, axis=1)  # [B, 2C]
    keys = slot_keys(media_kind, media_clip, c)
    j = slot_index(keys, 2 * c)
    use = (keys >= 0) & (j < n) & jnp.take_along_axis(ok, jnp.maximum(keys, 0), axis=1)
    # A one-hot contraction rather than a gather: it partitions along the batch like any matmul (a batched
    # gather made the SPMD partitioner replicate the table), and with HIGHEST precision 1·x + 0·y is exact.
    row = jnp.where(use, keys * n + j, -1)
    onehot = (row[..., None] == jnp.arange(2 * c * n)).astype(text.dtype)  # [B, L, 2C·N]
    gathered = jnp.einsum("blk,bkd->bld", onehot, table.reshape(b, 2 * c * n, d),
                          precision=jax.lax.Precision.HIGHEST)
    return jnp.where(use[..., None], gathered, text), keys + 1


def check_slots(media_kind, media_clip, num_clips: int, tokens_per_clip: int) -> None:
    """Host-side check of a batch (numpy): every clip's slots of a kind number exactly `tokens_per_clip`."""
    keys = np.asarray(slot_keys(jnp.asarray(media_kind), jnp.asarray(media_clip), num_clips))
    for row in range(keys.shape[0]):
        counts = np.bincount(keys[row][keys[row] >= 0], minlength=2 * num_clips)
        bad = counts[(counts > 0) & (counts != tokens_per_clip)]
        if bad.size:
            raise ValueError(f"batch row {row}: a clip has {int(bad[0])} media slots of one kind but the projector "
                             f"makes {tokens_per_clip} tokens per clip (data.media_tokens must equal "
                             "the projection's num_tokens)")


__all__ = ["AUDIO", "VIDEO", "check_slots", "media_span_ids", "slot_index", "slot_keys", "splice_media"]
