"""One batch row per record: the grain iterator the generator stages share (speech utterances, face clips).

    it = make_row_iterator(config, records, transform, empty_rows, name="speech/train")

`records` is a list of picklable dicts (with an "index"); `transform(record, rng)` makes one row (a dict of numpy
arrays) or returns `pipeline_batch.Skipped` (counted and reported, never fatal); `empty_rows(n)` makes n padding
rows. Shuffle, epochs, workers and host slicing follow `config.data`, as the dialogue pipeline's do; the per-host
batch is `data.batch_size` (or `train.batch_size`) divided over the hosts. The iterator's state is grain's, so a
resumed run continues with the next batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class RecordList:
    """Random access over records (grain's MapDataset.source needs len and [i])."""

    def __init__(self, records: list[dict]):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.records[i]


def make_row_iterator(config, records: list[dict], transform: Callable, empty_rows: Callable, *, name: str,
                      shard_index: int | None = None, shard_count: int | None = None, shuffle: bool | None = None,
                      num_epochs: int | None | str = "config", drop_remainder: bool = True,
                      workers: int | None = None):
    import grain
    import jax

    from merg_jax.data.pipeline import DataIterator, HostSlice, _worker_init, ensure_absl_flags
    from merg_jax.data.pipeline_batch import SkipBadBatchIterDataset

    ensure_absl_flags()
    d = config.data
    if shard_index is None or shard_count is None:
        shard_index, shard_count = jax.process_index(), jax.process_count()
    batch = int(d.get("batch_size", 0) or config.train.batch_size)
    if batch % shard_count:
        raise ValueError(f"batch size {batch} is not divisible by the {shard_count} hosts")
    ds = grain.MapDataset.source(RecordList(records))
    if d.shuffle if shuffle is None else shuffle:
        ds = ds.shuffle(seed=int(d.seed))
    epochs = int(d.num_epochs) if num_epochs == "config" else num_epochs
    ds = ds.repeat(None if not epochs or epochs <= 0 else epochs)
    ds = HostSlice(ds, global_batch=batch, host_batch=batch // shard_count, host=shard_index)
    ds = ds.random_map(transform, seed=int(d.seed))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, int(d.read_threads)),
                                              prefetch_buffer_size=int(d.read_buffer)))
    it = SkipBadBatchIterDataset(it, batch // shard_count, drop_remainder=drop_remainder, pad_fn=empty_rows,
                                 max_bad_in_a_row=int(d.get("max_bad_in_a_row", 1000)))
    n_workers = int(d.workers) if workers is None else workers
    if n_workers > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=n_workers,
                                                         per_worker_buffer_size=int(d.worker_buffer_size)),
                            worker_init_fn=_worker_init)
    return DataIterator(it, name=name, log_every_s=float(d.log_every_s))


__all__ = ["RecordList", "make_row_iterator"]
