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


class _Stacker:
    """`batch_size` samples stacked as rows (padding rows, from `pad_fn`, fill a last partial batch)."""

    holds_back = False  # never refuses a sample: no look-ahead to undo

    def __init__(self, batch_size: int, pad_fn: Callable[[int], dict]):
        self.batch_size, self.pad_fn, self.rows = batch_size, pad_fn, []

    def empty(self) -> bool:
        return not self.rows

    def full(self) -> bool:
        return len(self.rows) == self.batch_size

    def add(self, sample: dict) -> bool:
        self.rows.append(sample)
        return True

    def result(self) -> dict[str, np.ndarray]:
        batch = {k: np.stack([r[k] for r in self.rows]) for k in self.rows[0]}
        if len(self.rows) < self.batch_size:  # the end of a finite pass: padding rows (sample_index -1)
            pad = self.pad_fn(self.batch_size - len(self.rows))
            batch = {k: np.concatenate([v, pad[k]]) for k, v in batch.items()}
        return batch


class _Packer:
    """`batch_size` rows of packed samples (`packing.RowPacker`); a sample that fits no row waits for the next
    batch."""

    holds_back = True

    def __init__(self, batch_size: int, max_segments: int, pad_fn: Callable[[int], dict]):
        from merg_jax.data.packing import RowPacker

        pad_row = {k: v[0] for k, v in pad_fn(1).items()}
        self.packer = RowPacker(batch_size, max_segments=max_segments, pad_row=pad_row)

    def empty(self) -> bool:
        return self.packer.empty()

    def full(self) -> bool:
        return False  # known only when a sample does not fit

    def add(self, sample: dict) -> bool:
        return self.packer.add(sample)

    def result(self) -> dict[str, np.ndarray]:
        return self.packer.result()


class _Iterator(dataset.DatasetIterator):
    def __init__(self, parent, make_collector: Callable[[], Any], drop_remainder: bool, max_bad_in_a_row: int):
        super().__init__(parent)
        self._make_collector = make_collector
        self._drop_remainder = drop_remainder
        self._max_bad_in_a_row = max_bad_in_a_row
        self._bad_in_a_row = 0
        # A packer may take a sample it cannot place: it waits here for the next batch, and the saved state is
        # the parent's state from before it was read, so a restored iterator reads it again.
        self._pending: dict | None = None
        self._pending_state: dict | None = None

    def __next__(self) -> dict[str, Any]:
        collector = self._make_collector()
        skipped: list[Skipped] = []
        while not collector.full():
            if self._pending is not None:
                element, state = self._pending, self._pending_state
                self._pending = self._pending_state = None
            else:
                state = self._parent.get_state() if collector.holds_back else None
                try:
                    element = next(self._parent)
                except StopIteration:
                    if self._drop_remainder or collector.empty():
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
            if not collector.add(element):
                self._pending, self._pending_state = element, state
                break
        batch = collector.result()
        batch[SKIPPED_KEY] = encode_skipped(skipped)
        return batch

    def get_state(self) -> dict[str, Any]:
        return self._pending_state if self._pending is not None else self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state)
        self._pending = self._pending_state = None
        self._bad_in_a_row = 0

    def __str__(self) -> str:
        return f"SkipBadBatchDatasetIterator(drop_remainder={self._drop_remainder})"


class SkipBadBatchIterDataset(dataset.IterDataset):
    """Batches of `batch_size` good samples; `Skipped` markers are dropped and reported in the batch.

    drop_remainder: at the end of a finite pass, drop a last partial batch (else pad it with `pad_fn(n)` rows).
    max_bad_in_a_row: that many unreadable samples in a row is no longer bad luck but a wrong dataset: raise.
    pack_segments: 0 stacks one sample per row; n > 0 packs up to n samples per row (`packing.RowPacker`: the
    batch's per-sample fields get a segment axis, `[batch_size, n, ...]`).
    """

    def __init__(self, parent: dataset.IterDataset, batch_size: int, *, drop_remainder: bool,
                 pad_fn: Callable[[int], dict], max_bad_in_a_row: int = 1000, pack_segments: int = 0):
        super().__init__(parent)
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if pack_segments < 0:
            raise ValueError(f"pack_segments={pack_segments} must be >= 0 (0: no packing)")
        self._batch_size = batch_size
        self._drop_remainder = drop_remainder
        self._pad_fn = pad_fn
        self._max_bad_in_a_row = max_bad_in_a_row
        self._pack_segments = pack_segments

    def _collector(self):
        if self._pack_segments:
            return _Packer(self._batch_size, self._pack_segments, self._pad_fn)
        return _Stacker(self._batch_size, self._pad_fn)

    def __iter__(self) -> _Iterator:
        return _Iterator(self._parent.__iter__(), self._collector, self._drop_remainder, self._max_bad_in_a_row)

    def __str__(self) -> str:
        return (f"SkipBadBatchIterDataset(batch_size={self._batch_size}, drop_remainder={self._drop_remainder}, "
                f"pack_segments={self._pack_segments})")


__all__ = ["SKIPPED_KEY", "SkipBadBatchIterDataset", "Skipped", "decode_skipped", "encode_skipped"]
