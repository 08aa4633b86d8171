"""Minimal safetensors reading and writing on numpy, with bfloat16 and lazy, sliced reads.

Why not `safetensors.safe_open(framework="numpy")`: numpy has no bfloat16, so that path rejects the dtype most
LLaMA checkpoints ship in, and the `flax`/`pt` frameworks would pull in a device or torch. The format is simple
(https://github.com/huggingface/safetensors#format): an 8-byte little-endian header length N, N bytes of JSON
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, then the raw little-endian
tensor bytes, offsets relative to the end of the header. We memory-map each file read-only, so slicing a tensor
touches only the pages of that slice (the OS page cache is the only other copy), and write files streaming,
one tensor at a time.
"""

from __future__ import annotations

import dataclasses
import json
import mmap
import os
import struct
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import ml_dtypes
import numpy as np

# safetensors dtype tag → numpy dtype (little-endian; ml_dtypes supplies bfloat16 and float8).
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype(np.bool_),
}
_TAGS: dict[np.dtype, str] = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's limit


class SafetensorsError(ValueError):
    """A malformed or unsupported safetensors file; the message names the file."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: `file`, absolute byte range `[start, end)`, dtype and shape."""

    name: str
    file: Path
    dtype: np.dtype
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def dtype_tag(dtype) -> str:
    """numpy dtype → safetensors tag (`float32` → `F32`, `bfloat16` → `BF16`)."""
    dt = np.dtype(dtype)
    if dt not in _TAGS:
        raise SafetensorsError(f"dtype {dt} has no safetensors encoding; supported: {sorted(map(str, _TAGS))}")
    return _TAGS[dt]


def read_header(path: str | os.PathLike) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parses a file's header: ({name: TensorInfo}, metadata). Reads only the header bytes."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise SafetensorsError(f"{path}: too short to be a safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER or 8 + n > size:
            raise SafetensorsError(f"{path}: header length {n} is invalid for a file of {size} bytes")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsError(f"{path}: header is not valid JSON ({e})") from e
    metadata = header.pop("__metadata__", None) or {}
    base = 8 + n
    infos = {}
    for name, entry in header.items():
        try:
            tag, shape, (begin, end) = entry["dtype"], tuple(int(s) for s in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise SafetensorsError(f"{path}: malformed header entry for {name!r}: {entry!r}") from e
        if tag not in DTYPES:
            raise SafetensorsError(f"{path}: tensor {name!r} has unsupported dtype {tag!r}")
        dtype = DTYPES[tag]
        if end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize or base + end > size:
            raise SafetensorsError(f"{path}: tensor {name!r} offsets {begin}..{end} do not fit shape {shape} "
                                   f"{tag} inside a {size}-byte file")
        infos[name] = TensorInfo(name, path, dtype, shape, base + begin, base + end)
    return infos, metadata


class SafetensorsReader:
    """Lazily memory-maps files and returns tensors as read-only numpy views (no bytes read until sliced).

    Use as a context manager (or call `close`) to release the maps; views must not outlive it.
    """

    def __init__(self):
        self._maps: dict[Path, mmap.mmap] = {}

    def array(self, info: TensorInfo) -> np.ndarray:
        if info.nbytes == 0:
            return np.zeros(info.shape, info.dtype)
        buf = self._maps.get(info.file)
        if buf is None:
            with open(info.file, "rb") as f:
                buf = self._maps[info.file] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return np.frombuffer(buf, dtype=info.dtype, count=info.nbytes // info.dtype.itemsize,
                             offset=info.start).reshape(info.shape)

    def drop_pages(self) -> None:
        """Unmaps the pages read so far from this process (they stay in the OS page cache), so the resident
        size does not grow to the whole checkpoint while a model is loaded from it."""
        for buf in self._maps.values():
            if hasattr(mmap, "MADV_DONTNEED"):
                buf.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        for buf in self._maps.values():
            try:
                buf.close()
            except BufferError:  # a view is still alive somewhere; the map closes when it is collected
                pass
        self._maps.clear()

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A tensor to write: its shape and dtype up front (the header comes first), its bytes from `produce()`."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    produce: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def write_safetensors(path: str | os.PathLike, tensors: Iterable[TensorSpec],
                      metadata: Mapping[str, str] | None = None) -> int:
    """Streams `tensors` into one file, calling each `produce()` only when its turn comes (one tensor in
    memory at a time). Returns the number of data bytes written."""
    tensors = list(tensors)
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": dtype_tag(t.dtype), "shape": list(t.shape),
                          "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as the reference writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in tensors:
            arr = np.asarray(t.produce())
            if arr.shape != tuple(t.shape) or arr.dtype != np.dtype(t.dtype):
                raise SafetensorsError(f"{path}: tensor {t.name!r} produced {arr.dtype}{list(arr.shape)}, "
                                       f"header says {np.dtype(t.dtype)}{list(t.shape)}")
            np.ascontiguousarray(arr).tofile(f)  # raw bytes, no extra copy; hosts are little-endian
    return offset
