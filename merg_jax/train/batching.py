"""Language-model batches: prompt/completion examples packed into fixed-length rows, and an epoch iterator.

A row holds several examples one after another. Each keeps its own segment id (1, 2, … ; 0 marks padding) and
positions restarting at 0, so with `segment_ids` the model sees every example alone, as if unpacked. Targets are
the tokens shifted by one inside each example; `loss_mask` is 1 on the completion's targets only (the reply
and its end-of-sequence token), 0 on the prompt and the padding. The keys are the AvaMERG pipeline's
(`merg_jax.data.pipeline`: `tokens targets loss_mask segment_ids positions`), the one batch contract of every
trainer.

Placement: `shard_batch` takes a global batch that every process holds alike; `place_local_batch` takes each
process's own rows of the global batch (the pipeline's host slices) and assembles the global array from them.

`BatchIterator` keeps its position as a small dict (`get_state` / `set_state`), the shape of a grain
iterator's state, so a checkpoint can hold it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

BATCH_KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions")
# Batches are split over every data-parallel mesh axis.
BATCH_SPEC = P(("data", "fsdp"))


@dataclasses.dataclass(frozen=True)
class LmExample:
    """tokens: the whole sequence (prompt then completion); loss_mask: 1 where the token is a target to learn."""

    tokens: tuple[int, ...]
    loss_mask: tuple[int, ...]


def prompt_completion_example(tokenizer, prompt: str, completion: str) -> LmExample:
    """`<s> prompt completion </s>`, learning the completion and its `</s>`."""
    p = tokenizer.encode(prompt, add_bos=True)
    c = tokenizer.encode(completion, add_eos=True)
    return LmExample(tokens=tuple(p + c), loss_mask=(0,) * len(p) + (1,) * len(c))


def pack_examples(examples: Sequence[LmExample], seq_len: int, *, pad_id: int = 0) -> dict[str, np.ndarray]:
    """First-fit packing into `[num_rows, seq_len]` arrays (`BATCH_KEYS`): each example goes into the first row
    with room for it (deterministic; examples keep their order inside a row). An example longer than
    `seq_len + 1` tokens is cut (with a warning)."""
    rows: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = []
    used: list[int] = []
    cut = 0
    for ex in examples:
        tok = np.asarray(ex.tokens, np.int32)
        mask = np.asarray(ex.loss_mask, np.float32)
        if len(tok) < 2:
            continue
        if len(tok) - 1 > seq_len:
            cut += 1
            tok, mask = tok[:seq_len + 1], mask[:seq_len + 1]
        n = len(tok) - 1
        row = next((i for i, u in enumerate(used) if u + n <= seq_len), None)  # first fit
        if row is None:
            rows.append([])
            used.append(0)
            row = len(rows) - 1
        rows[row].append((tok[:-1], tok[1:], mask[1:]))
        used[row] += n
    if cut:
        log.warning("pack_examples: %d examples longer than seq_len=%d were cut", cut, seq_len)
    out = {
        "tokens": np.full((len(rows), seq_len), pad_id, np.int32),
        "targets": np.full((len(rows), seq_len), pad_id, np.int32),
        "loss_mask": np.zeros((len(rows), seq_len), np.float32),
        "segment_ids": np.zeros((len(rows), seq_len), np.int32),
        "positions": np.zeros((len(rows), seq_len), np.int32),
    }
    for i, row in enumerate(rows):
        at = 0
        for seg, (inp, tgt, m) in enumerate(row, start=1):
            n = len(inp)
            sl = slice(at, at + n)
            out["tokens"][i, sl], out["targets"][i, sl], out["loss_mask"][i, sl] = inp, tgt, m
            out["segment_ids"][i, sl] = seg
            out["positions"][i, sl] = np.arange(n)
            at += n
    return out


class BatchIterator(Iterator[dict[str, np.ndarray]]):
    """Endless batches of `batch_size` rows from packed `rows`, reshuffled each epoch (seeded), last partial
    batch of an epoch dropped (rows are reused when there are fewer than `batch_size`)."""

    def __init__(self, rows: dict[str, np.ndarray], batch_size: int, *, seed: int = 0, shuffle: bool = True):
        self.rows = rows
        self.num_rows = len(next(iter(rows.values())))
        if self.num_rows == 0:
            raise ValueError("BatchIterator: no data (0 packed rows)")
        self.batch_size, self.seed, self.shuffle = int(batch_size), int(seed), shuffle
        self.epoch, self.index = 0, 0
        self._order = self._make_order(0)

    def _make_order(self, epoch: int) -> np.ndarray:
        n = max(self.num_rows, self.batch_size)
        base = np.arange(n) % self.num_rows
        if not self.shuffle:
            return base
        return np.random.default_rng([self.seed, epoch]).permutation(base)

    @property
    def batches_per_epoch(self) -> int:
        return max(self.num_rows, self.batch_size) // self.batch_size

    def __next__(self) -> dict[str, np.ndarray]:
        if self.index + self.batch_size > len(self._order):
            self.epoch += 1
            self.index = 0
            self._order = self._make_order(self.epoch)
        idx = self._order[self.index:self.index + self.batch_size]
        self.index += self.batch_size
        return {k: v[idx] for k, v in self.rows.items()}

    def get_state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed}

    def set_state(self, state: dict[str, int]) -> None:
        self.seed = int(state.get("seed", self.seed))
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._make_order(self.epoch)


def shard_batch(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """Places a global batch on the mesh, split over (`data`, `fsdp`) along the batch axis.

    Every process holds the same global batch (the iterators are seeded alike) and hands each of its devices
    only that device's rows, so one process and N processes train on exactly the same data.
    """
    sharding = NamedSharding(mesh, BATCH_SPEC)
    return {k: jax.make_array_from_callback(np.shape(v), sharding, lambda idx, v=np.asarray(v): v[idx])
            for k, v in batch.items()}


def place_local_batch(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """The global batch from each process's rows (process i holds rows [i*b, (i+1)*b) of the global batch, the
    rows its devices hold under `BATCH_SPEC`), split over (`data`, `fsdp`) along the batch axis."""
    sharding = NamedSharding(mesh, BATCH_SPEC)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}
