"""The decoded-feature cache: memory LRU bounded in bytes, a disk folder shared across processes and runs, keys
that follow the file (rewritten file → decoded afresh), damaged entries decoded again; and pipeline batches are
the same with and without it."""

from __future__ import annotations

import os
import time

import numpy as np

from merg_jax.data.feature_cache import FeatureCache, file_key


def test_memory_lru_is_bounded_in_bytes():
    cache = FeatureCache(max_bytes=3 * 800)
    calls = []

    def make(i):
        calls.append(i)
        return (np.full(100, i, np.float64), i)  # 800 bytes (+ an int)

    for i in range(4):
        cache.get_or_compute(i, lambda i=i: make(i))
    assert len(cache) == 2 and cache.num_bytes <= cache.max_bytes  # the oldest went first
    cache.get_or_compute(3, lambda: make(3))
    cache.get_or_compute(0, lambda: make(0))
    assert calls == [0, 1, 2, 3, 0] and cache.hits == 1
    off = FeatureCache(0)
    off.get_or_compute(1, lambda: make(1))
    off.get_or_compute(1, lambda: make(1))
    assert calls[-2:] == [1, 1] and len(off) == 0


def test_disk_entries_are_shared_and_follow_the_file(tmp_path):
    media = tmp_path / "clip.wav"
    media.write_bytes(b"x" * 10)
    calls = []

    def decode():
        calls.append(1)
        return (np.arange(12, dtype=np.float32).reshape(3, 4), 3)

    key = ("audio", file_key(media), "settings")
    first = FeatureCache(0, tmp_path / "cache").get_or_compute(key, decode)
    again = FeatureCache(0, tmp_path / "cache").get_or_compute(key, decode)  # another process, another run
    assert len(calls) == 1
    np.testing.assert_array_equal(again[0], first[0]) and again[1] == 3 and isinstance(again[1], int)
    assert not list((tmp_path / "cache").glob(".entry.*"))  # no temporary left
    time.sleep(0.01)
    media.write_bytes(b"y" * 11)  # rewritten: a new key
    os.utime(media)
    FeatureCache(0, tmp_path / "cache").get_or_compute(("audio", file_key(media), "settings"), decode)
    assert len(calls) == 2
    for entry in (tmp_path / "cache").glob("*.npz"):  # damage every entry: they are decoded again
        entry.write_bytes(b"broken")
    value = FeatureCache(0, tmp_path / "cache").get_or_compute(key, decode)
    assert len(calls) == 3 and value[1] == 3


def test_pipeline_rows_are_the_same_with_and_without_the_cache(mini_root, tmp_path):
    from merg_jax.data import feature_cache as fc
    from merg_jax.data.avamerg import read_split
    from merg_jax.data.features import FeatureConfig
    from merg_jax.data.pipeline_features import FeatureSpec, make_example
    from merg_jax.data.pipeline_records import split_records
    from merg_jax.data.tokenizer import train_bpe

    split = read_split(mini_root, "train")
    records = split_records(split)[:3]
    tok = train_bpe([r["response"]["text"] for r in split_records(split)], vocab_size=300)
    base = dict(seq_len=2048, max_clips=4, audio=FeatureConfig(n_fft=640, hop=320, n_mels=40), audio_frames=64,
                video=FeatureConfig(target_fps=2.0, size=32), video_frames=4)
    plain = [make_example(r, tok, FeatureSpec(**base), str(split.root)) for r in records]
    assert sum(row["audio_mask"].sum() + row["video_mask"].sum() for row in plain) >= 6  # the clips are there
    saved = (fc._CACHE.max_bytes, fc._CACHE.directory)
    try:
        fc._CACHE.clear()
        cached_spec = FeatureSpec(**base, feature_cache_mb=64, feature_cache_dir=str(tmp_path / "c"))
        for _ in range(2):  # a cold then a warm pass
            rows = [make_example(r, tok, cached_spec, str(split.root)) for r in records]
            for a, b in zip(plain, rows):
                assert a.keys() == b.keys()
                for k in a:
                    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        assert fc._CACHE.hits > 0 and list((tmp_path / "c").glob("*.npz"))
    finally:
        fc._CACHE.clear()
        fc._CACHE.resize(saved[0])
        fc._CACHE.set_directory(saved[1])
