"""Decoded media features, cached: a size-bounded LRU in memory, and optionally a folder on disk.

Decoding is the input pipeline's main cost on a CPU (an mp4 is one ffmpeg run, ~0.1 s): a history utterance's wav
and mp4 are decoded again for every later turn of its conversation (turn t's history holds utterances 1 .. 2t+1)
and again every epoch. Features depend only on the file and the feature settings, so they are cached, keyed by
(what, file path, its size and modification time, settings): a file rewritten in place is decoded afresh.

The memory cache is per process. The disk cache (`directory`) is shared: grain's worker processes, the stages of a
run (each stage starts new workers), validation, `merg-jax eval` and a second run all read what any of them
decoded once. Entries are `.npz` files named by a hash of the key, written atomically (temporary file, then
rename), so concurrent writers and a crash leave only whole entries.

    cache = feature_cache(max_mb=512, directory="runs/feature_cache")   # the process's cache, configured
    value = cache.get_or_compute(key, lambda: decode(...))

Values are tuples of numpy arrays and ints; they are returned as they are stored, so callers copy before writing
into them (`pipeline_features` copies into its batch rows).
"""

from __future__ import annotations

import collections
import hashlib
import os
import pathlib
import tempfile
import threading
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np


def _nbytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 64


class FeatureCache:
    """An LRU mapping bounded by the total bytes of its numpy values; thread-safe (grain reads with threads)."""

    def __init__(self, max_bytes: int = 0, directory: str | os.PathLike | None = None):
        self.max_bytes = int(max_bytes)
        self.directory = pathlib.Path(directory) if directory else None
        self._items: collections.OrderedDict[Hashable, tuple[Any, int]] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def resize(self, max_bytes: int) -> None:
        with self._lock:
            self.max_bytes = int(max_bytes)
            self._evict()

    def _evict(self) -> None:
        while self._items and self._bytes > self.max_bytes:
            _, (_, size) = self._items.popitem(last=False)
            self._bytes -= size

    def set_directory(self, directory: str | os.PathLike | None) -> None:
        self.directory = pathlib.Path(directory) if directory else None

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0 or self.directory is not None

    def _path(self, key: Hashable) -> pathlib.Path:
        return self.directory / (hashlib.sha256(repr(key).encode()).hexdigest()[:32] + ".npz")

    def _load(self, key: Hashable) -> Any:
        """The disk entry of `key`, or None (absent or unreadable: then it is decoded again and rewritten)."""
        path = self._path(key)
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) != repr(key):  # a hash collision: not ours
                    return None
                return tuple(z[f"v{i}"] if z[f"v{i}"].ndim else z[f"v{i}"].item() for i in range(int(z["n"])))
        except (OSError, KeyError, ValueError, EOFError):
            return None

    def _store(self, key: Hashable, value: Any) -> None:
        if not isinstance(value, tuple):
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".entry.", suffix=".npz", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, key=np.asarray(repr(key)), n=np.asarray(len(value)),
                         **{f"v{i}": np.asarray(v) for i, v in enumerate(value)})
            os.replace(tmp, self._path(key))
        except OSError:  # a full or read-only disk costs speed, never the run
            pathlib.Path(tmp).unlink(missing_ok=True)

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        if not self.enabled:
            return compute()
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return hit[0]
            self.misses += 1
        value = None if self.directory is None else self._load(key)
        if value is None:
            value = compute()  # outside the lock: decoding is slow and threads decode different files
            if self.directory is not None:
                self._store(key, value)
        if self.max_bytes <= 0:
            return value
        size = _nbytes(value)
        if size <= self.max_bytes:
            with self._lock:
                if key not in self._items:
                    self._items[key] = (value, size)
                    self._bytes += size
                    self._evict()
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    @property
    def num_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)


_CACHE = FeatureCache()


def feature_cache(max_mb: float | None = None, directory: str | os.PathLike | None = None) -> FeatureCache:
    """The process's cache; `max_mb` (when given) bounds its memory part (0: none), `directory` (when given) sets
    its disk part."""
    if max_mb is not None and int(max_mb * 2**20) != _CACHE.max_bytes:
        _CACHE.resize(int(max_mb * 2**20))
    if directory is not None and pathlib.Path(directory) != _CACHE.directory:
        _CACHE.set_directory(directory)
    return _CACHE


def file_key(path: str | os.PathLike) -> tuple[str, int, int] | None:
    """(absolute path, size, mtime in ns) of a file, or None when it cannot be stat'ed (then nothing is cached)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return os.path.abspath(path), st.st_size, st.st_mtime_ns


__all__ = ["FeatureCache", "feature_cache", "file_key"]
