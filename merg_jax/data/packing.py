"""Packing several turns into one row: the multimodal counterpart of `train.batching.pack_examples`.

`pack_rows(samples, num_rows, seq_len, max_clips, max_segments)` takes per-sample rows as the pipeline makes them
(`pipeline_features.make_example`: tokens padded to L, clips padded to C) and fills `num_rows` rows greedily, in
order: a sample joins the current row while its tokens, clips and the segment count fit, else the next row
starts. In a packed row:

    tokens targets loss_mask positions media_kind   [L]  the samples one after another (positions restart)
    segment_ids                                      [L]  1, 2, ... per sample, 0 on padding
    media_clip                                       [L]  renumbered: sample k's clip c is the row's clip
                                                          (clips of samples before it) + c
    clip_utterance clip_emotion7 audio_* video_*     [C, ...]  the samples' clips one after another
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
CLIP_KEYS = ("clip_utterance", "clip_emotion7", "audio_mel", "audio_len", "audio_mask", "video_frames", "video_len", "video_mask")
_RENUMBERED = ("segment_ids", "media_clip")


def _sizes(sample: dict) -> tuple[int, int]:
    """(tokens, clips) a sample occupies."""
    tokens = int(np.count_nonzero(sample["segment_ids"]))
    clips = int(np.count_nonzero(np.asarray(sample["clip_utterance"]) >= 0)) if "clip_utterance" in sample else 0
    return tokens, clips


def _per_token_or_clip(key: str) -> bool:
    return key in TOKEN_KEYS or key in CLIP_KEYS or key in _RENUMBERED


class RowPacker:
    """Fills `num_rows` packed rows one sample at a time: `add(sample)` puts it in the current row, or opens the
    next row when it does not fit, and returns False when no row is left (the sample stays out: keep it for the
    next batch). `result()` is the batch. `pad_row`: one padding row of the spec (`FeatureSpec.empty(1)`
    squeezed), the values of unused positions, clips and segment entries."""

    def __init__(self, num_rows: int, *, max_segments: int, pad_row: dict):
        if max_segments < 1 or num_rows < 1:
            raise ValueError(f"packing: num_rows={num_rows} and max_segments={max_segments} must be >= 1")
        self.num_rows, self.max_segments = num_rows, max_segments
        row = {k: (np.array(v) if _per_token_or_clip(k) else np.repeat(np.asarray(v)[None], max_segments, axis=0))
               for k, v in pad_row.items()}
        self._rows = [{k: v.copy() for k, v in row.items()} for _ in range(num_rows)]
        self._seq_len = len(row["tokens"])
        self._max_clips = len(row["clip_utterance"]) if "clip_utterance" in row else 0
        self._row = self._tokens = self._clips = self._segment = 0
        self.count = 0  # samples added

    def empty(self) -> bool:
        return self.count == 0

    def add(self, sample: dict) -> bool:
        n, c = _sizes(sample)
        if self._segment and (self._tokens + n > self._seq_len or self._clips + c > self._max_clips
                              or self._segment == self.max_segments):
            self._row, self._tokens, self._clips, self._segment = self._row + 1, 0, 0, 0
        if self._row == self.num_rows:
            return False
        r, t, cl, seg = self._rows[self._row], self._tokens, self._clips, self._segment
        for k in TOKEN_KEYS:
            if k in r:
                r[k][t:t + n] = sample[k][:n]
        r["segment_ids"][t:t + n] = seg + 1
        clip = np.asarray(sample["media_clip"][:n])
        r["media_clip"][t:t + n] = np.where(clip >= 0, clip + cl, -1)
        for k in CLIP_KEYS:
            if k in r:
                r[k][cl:cl + c] = sample[k][:c]
        for k in r:
            if not _per_token_or_clip(k):
                r[k][seg] = sample[k]
        self._tokens, self._clips, self._segment, self.count = t + n, cl + c, seg + 1, self.count + 1
        return True

    def result(self) -> dict[str, np.ndarray]:
        return {k: np.stack([r[k] for r in self._rows]) for k in self._rows[0]}


def pack_rows(samples: Sequence[dict], num_rows: int, *, max_segments: int, pad_row: dict
              ) -> tuple[dict[str, np.ndarray], int]:
    """(a batch of `num_rows` packed rows, how many of `samples` it holds, in order)."""
    if not samples:
        raise ValueError("pack_rows: no samples")
    packer = RowPacker(num_rows, max_segments=max_segments, pad_row=pad_row)
    for sample in samples:
        if not packer.add(sample):
            break
    return packer.result(), packer.count


__all__ = ["CLIP_KEYS", "TOKEN_KEYS", "RowPacker", "pack_rows"]
