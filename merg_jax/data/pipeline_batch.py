"""Batching that skips bad samples and says which: a grain `IterDataset` transformation.

Upstream yields, per sample, either a dict of arrays or a `Skipped` marker (a sample whose media could not be
decoded). `SkipBadBatchIterDataset` stacks `batch_size` good samples into one batch and drops the markers, and
records them in the batch under `SKIPPED_KEY`, as JSON bytes in a uint8 array, so the information crosses
grain's worker processes (which only ship arrays cheaply) to the main process, where `pipeline.DataIterator`
takes it out, logs it and counts it. Its iterator state is its parent's: it holds nothing between batches, so a
restored iterator continues exactly where the saved one stopped.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import numpy as np
from grain._src.python.dataset import dataset

SKIPPED_KEY = "_skipped"


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A sample left out: its source index, the file and why."""

    index: int
    path: str
    message: str


def encode_skipped(items: list[Skipped]) -> np.ndarray:
    return np.frombuffer(json.dumps([dataclasses.asdict(s) for s in items]).encode("utf-8"), np.uint8).copy()


def decode_skipped(array: np.ndarray) -> list[Skipped]:
    return [Skipped(**d) for d in json.loads(np.asarray(array, np.uint8).tobytes().decode("utf-8"))]


class _Iterator(dataset.DatasetIterator):
    def __init__(self, parent, batch_size: int, drop_remainder: bool, pad_fn: Callable[[int], dict],
                 max_bad_in_a_row: int):
        super().__init__(parent)
        self._batch_size = batch_size
        self._drop_remainder = drop_remainder
        self._pad_fn = pad_fn
        self._max_bad_in_a_row = max_bad_in_a_row
        self._bad_in_a_row = 0

    def __next__(self) -> dict[str, Any]:
        rows: list[dict] = []
        skipped: list[Skipped] = []
        while len(rows) < self._batch_size:
            try:
                element = next(self._parent)
            except StopIteration:
                if self._drop_remainder or not rows:
                    # Skips at the very end still reach the main process only with a batch; they are few and
                    # logged in the worker anyway.
                    raise
                break
            if isinstance(element, Skipped):
                skipped.append(element)
                self._bad_in_a_row += 1
                if self._bad_in_a_row > self._max_bad_in_a_row:
                    raise RuntimeError(
                        f"{self._bad_in_a_row} samples in a row could not be read (last: {element.path}: "
                        f"{element.message}); the dataset or its media paths look wrong, stopping")
                continue
            self._bad_in_a_row = 0
            rows.append(element)
        batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        if len(rows) < self._batch_size:  # the end of a finite pass: padding rows (sample_index -1)
            pad = self._pad_fn(self._batch_size - len(rows))
            batch = {k: np.concatenate([v, pad[k]]) for k, v in batch.items()}
        batch[SKIPPED_KEY] = encode_skipped(skipped)
        return batch

    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state)
        self._bad_in_a_row = 0

    def __str__(self) -> str:
        return f"SkipBadBatchDatasetIterator(batch_size={self._batch_size}, drop_remainder={self._drop_remainder})"


class SkipBadBatchIterDataset(dataset.IterDataset):
    """Batches of `batch_size` good samples; `Skipped` markers are dropped and reported in the batch.

    drop_remainder: at the end of a finite pass, drop a last partial batch (else pad it with `pad_fn(n)` rows).
    max_bad_in_a_row: that many unreadable samples in a row is no longer bad luck but a wrong dataset: raise.
    """

    def __init__(self, parent: dataset.IterDataset, batch_size: int, *, drop_remainder: bool,
                 pad_fn: Callable[[int], dict], max_bad_in_a_row: int = 1000):
        super().__init__(parent)
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self._batch_size = batch_size
        self._drop_remainder = drop_remainder
        self._pad_fn = pad_fn
        self._max_bad_in_a_row = max_bad_in_a_row

    def __iter__(self) -> _Iterator:
        return _Iterator(self._parent.__iter__(), self._batch_size, self._drop_remainder, self._pad_fn,
                         self._max_bad_in_a_row)

    def __str__(self) -> str:
        return f"SkipBadBatchIterDataset(batch_size={self._batch_size}, drop_remainder={self._drop_remainder})"


__all__ = ["SKIPPED_KEY", "SkipBadBatchIterDataset", "Skipped", "decode_skipped", "encode_skipped"]
