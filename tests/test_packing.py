"""data.packing.pack_rows: greedy packing of padded per-turn rows, checked against a direct construction."""

from __future__ import annotations

import numpy as np
import pytest

from merg_jax.data.packing import pack_rows

L, C = 10, 3


def sample(n_tokens: int, n_clips: int, label: int) -> dict:
    tokens = np.zeros(L, np.int32)
    tokens[:n_tokens] = 100 * label + np.arange(n_tokens)
    clip = np.full(L, -1, np.int32)
    kind = np.zeros(L, np.int32)
    for c in range(n_clips):
        clip[c], kind[c] = c, 1
    utt = np.full(C, -1, np.int32)
    utt[:n_clips] = 10 * label + np.arange(n_clips)
    mel = np.zeros((C, 2), np.float32)
    mel[:n_clips] = label
    return dict(tokens=tokens, targets=tokens + 1, loss_mask=(tokens > 0).astype(np.int32),
                positions=np.where(np.arange(L) < n_tokens, np.arange(L), 0).astype(np.int32),
                segment_ids=(np.arange(L) < n_tokens).astype(np.int32), media_clip=clip, media_kind=kind,
                clip_utterance=utt, audio_mel=mel, emotion7=np.int32(label))


PAD = {k: np.full_like(v, -1 if k in ("media_clip", "clip_utterance", "emotion7") else 0)
       for k, v in sample(0, 0, 0).items()}


def test_greedy_rows_segments_and_renumbered_clips():
    samples = [sample(4, 1, 1), sample(5, 2, 2), sample(3, 1, 3), sample(6, 0, 4), sample(2, 1, 5)]
    batch, consumed = pack_rows(samples, 2, max_segments=3, pad_row=PAD)
    # row 0: samples 1 and 2 (9 tokens, 3 clips); sample 3 would need a 4th clip -> row 1: samples 3 and 4 (9
    # tokens); sample 5 (2 tokens) does not fit row 1 and no row is left.
    assert consumed == 4
    np.testing.assert_array_equal(batch["segment_ids"][0], [1] * 4 + [2] * 5 + [0])
    np.testing.assert_array_equal(batch["segment_ids"][1], [1] * 3 + [2] * 6 + [0])
    np.testing.assert_array_equal(batch["tokens"][0, :9], np.r_[100 + np.arange(4), 200 + np.arange(5)])
    np.testing.assert_array_equal(batch["positions"][0, :9], np.r_[np.arange(4), np.arange(5)])
    # sample 2's clips 0, 1 are the row's clips 1, 2
    np.testing.assert_array_equal(batch["media_clip"][0, :9], [0, -1, -1, -1, 1, 2, -1, -1, -1])
    np.testing.assert_array_equal(batch["clip_utterance"][0], [10, 20, 21])
    np.testing.assert_array_equal(batch["audio_mel"][0, :, 0], [1, 2, 2])
    np.testing.assert_array_equal(batch["emotion7"], [[1, 2, -1], [3, 4, -1]])
    np.testing.assert_array_equal(batch["clip_utterance"][1], [30, -1, -1])


def test_segment_limit_and_errors():
    samples = [sample(1, 0, k) for k in range(1, 6)]
    batch, consumed = pack_rows(samples, 2, max_segments=2, pad_row=PAD)
    assert consumed == 4 and batch["segment_ids"][1].max() == 2
    with pytest.raises(ValueError, match="no samples"):
        pack_rows([], 1, max_segments=1, pad_row=PAD)
    with pytest.raises(ValueError, match="max_segments"):
        pack_rows(samples, 1, max_segments=0, pad_row=PAD)
