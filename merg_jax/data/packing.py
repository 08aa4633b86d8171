"""Packing several turns into one row: the multimodal counterpart of `train.batching.pack_examples`.

`pack_rows(samples, num_rows, seq_len, max_clips, max_segments)` takes per-sample rows as the pipeline makes them
(`pipeline_features.make_example`: tokens padded to L, clips padded to C) and fills `num_rows` rows greedily, in
order: a sample joins the current row while its tokens, clips and the segment count fit, else the next row
starts. In a packed row:

    tokens targets loss_mask positions media_kind   [L]  the samples one after another (positions restart)
    segment_ids                                      [L]  1, 2, ... per sample, 0 on padding
    media_clip                                       [L]  renumbered: sample k's clip c is the row's clip
                                                          (clips of samples before it) + c
    clip_utterance audio_* video_*                   [C, ...]  the samples' clips one after another
    every per-sample field (labels, reply media, sample_index)  [S, ...]  one entry per segment (padding: the
                                                          pipeline's padding values)

The model needs nothing else: segment ids keep samples apart in attention and span ids stay unique per row
(`models.multimodal_input`). Packing suits the text stage (CoE learning); the CS/SD stages read one reply per
row and take unpacked rows. `consumed` samples went in; the caller keeps the rest for the next batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TOKEN_KEYS = ("tokens", "targets", "loss_mask", "positions", "media_kind")
CLIP_KEYS = ("clip_utterance", "audio_mel", "audio_len", "audio_mask", "video_frames", "video_len", "video_mask")
_RENUMBERED = ("segment_ids", "media_clip")


def _sizes(sample: dict) -> tuple[int, int]:
    """(tokens, clips) a sample occupies."""
    tokens = int(np.count_nonzero(sample["segment_ids"]))
    clips = int(np.count_nonzero(np.asarray(sample["clip_utterance"]) >= 0)) if "clip_utterance" in sample else 0
    return tokens, clips


def _empty_like(sample: dict, max_segments: int, pad_row: dict) -> dict[str, np.ndarray]:
    out = {}
    for k, v in sample.items():
        v = np.asarray(v)
        if k in TOKEN_KEYS or k in CLIP_KEYS or k in _RENUMBERED:
            out[k] = np.zeros_like(v) if k not in ("media_clip", "clip_utterance") else np.full_like(v, -1)
        else:
            out[k] = np.repeat(np.asarray(pad_row[k])[None], max_segments, axis=0)
    return out


def pack_rows(samples: Sequence[dict], num_rows: int, *, max_segments: int, pad_row: dict
              ) -> tuple[dict[str, np.ndarray], int]:
    """(a batch of `num_rows` packed rows, how many of `samples` it holds). `pad_row`: one padding row of the
    spec (`FeatureSpec.empty(1)` squeezed), whose values fill unused segment entries."""
    if not samples:
        raise ValueError("pack_rows: no samples")
    if max_segments < 1 or num_rows < 1:
        raise ValueError(f"pack_rows: num_rows={num_rows} and max_segments={max_segments} must be >= 1")
    seq_len = len(samples[0]["tokens"])
    max_clips = len(samples[0]["clip_utterance"]) if "clip_utterance" in samples[0] else 0
    rows = [_empty_like(samples[0], max_segments, pad_row) for _ in range(num_rows)]
    row, used_tokens, used_clips, segment, consumed = 0, 0, 0, 0, 0
    for sample in samples:
        n, c = _sizes(sample)
        if segment and (used_tokens + n > seq_len or used_clips + c > max_clips or segment == max_segments):
            row, used_tokens, used_clips, segment = row + 1, 0, 0, 0
        if row == num_rows:
            break
        r = rows[row]
        for k in TOKEN_KEYS:
            if k in sample:
                r[k][used_tokens:used_tokens + n] = sample[k][:n]
        r["segment_ids"][used_tokens:used_tokens + n] = segment + 1
        clip = np.asarray(sample["media_clip"][:n])
        r["media_clip"][used_tokens:used_tokens + n] = np.where(clip >= 0, clip + used_clips, -1)
        for k in CLIP_KEYS:
            if k in sample:
                r[k][used_clips:used_clips + c] = sample[k][:c]
        for k in r:
            if k not in TOKEN_KEYS and k not in CLIP_KEYS and k not in _RENUMBERED:
                r[k][segment] = sample[k]
        used_tokens, used_clips, segment, consumed = used_tokens + n, used_clips + c, segment + 1, consumed + 1
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    return batch, consumed


__all__ = ["CLIP_KEYS", "TOKEN_KEYS", "pack_rows"]
