"""The tfds builder: prepare (array_record, no TensorFlow) -> grain read gives the direct reader's examples."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from avamerg_fixtures import make_conversation, write_dataset

from merg_jax.data import tfds_avamerg
from merg_jax.data.avamerg import read_split
from merg_jax.data.pipeline import DataIterator, make_dataset, raw_source
from merg_jax.data.pipeline_features import FeatureSpec
from merg_jax.data.features import FeatureConfig
from merg_jax.data.pipeline_records import media_names, without_media
from merg_jax.data.tokenizer import train_bpe
from merg_jax.data.tokenizer_cli import training_texts


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    write_dataset(raw, [make_conversation(f"{i:05d}", num_turns=2, emotion=e)
                        for i, e in enumerate(["sad", "happy", "fear"])], seconds=0.15, size=(32, 32))
    write_dataset(raw, [make_conversation("00100", num_turns=1, coe=False, topic=None)], split="test",
                  seconds=0.15, size=(32, 32))
    out = tmp_path_factory.mktemp("tfds")
    builder = tfds_avamerg.prepare(raw, out, config="mini")
    return raw, out, builder


def test_runs_without_tensorflow():
    assert importlib.util.find_spec("tensorflow") is None


def test_prepare_writes_array_record_per_split(prepared):
    raw, out, builder = prepared
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 6, "test": 1}
    files = sorted(p.name for p in (out / "avamerg" / "mini" / tfds_avamerg.VERSION).iterdir())
    assert any(f.startswith("avamerg-train.array_record") for f in files)
    assert any(f.startswith("avamerg-test.array_record") for f in files)


@pytest.mark.parametrize("split", ["train", "test"])
def test_records_equal_the_direct_reader(prepared, split):
    raw, out, _ = prepared
    direct, root = raw_source(raw, split)
    source = tfds_avamerg.data_source(out, split, config="mini")
    assert len(source) == len(direct)
    for i in range(len(direct)):
        record = source[i]
        assert without_media(record) == direct[i]  # every decoded field, in the same order
        assert sorted(record["media"]) == sorted(media_names(direct[i]))
        for name, blob in record["media"].items():
            assert blob == (raw / name).read_bytes()
    if split == "test":
        assert source[0]["coe"] is None and source[0]["topic"] is None


def test_pipeline_batches_equal_from_both_sources(prepared):
    raw, out, _ = prepared
    direct, root = raw_source(raw, "train")
    tok = train_bpe(training_texts(read_split(raw, "train")), vocab_size=600)
    spec = FeatureSpec(seq_len=200, max_clips=2, audio=FeatureConfig(n_mels=16), audio_frames=12,
                       video=FeatureConfig(target_fps=10, size=16), video_frames=2,
                       reply_video=FeatureConfig(size=16), reply_video_frames=3)

    def batches(source, root):
        it = DataIterator(make_dataset(source, tok, spec, root=root, batch_size=2, seed=5, num_epochs=1))
        with it:
            return list(it)

    a = batches(direct, root)
    b = batches(tfds_avamerg.data_source(out, "train", config="mini"), None)
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)
    assert a[0]["audio_mask"].any() and a[0]["reply_video_mask"].all()


def test_errors_name_what_is_missing(prepared, tmp_path):
    raw, out, _ = prepared
    with pytest.raises(FileNotFoundError, match="valid"):
        tfds_avamerg.data_source(out, "valid", config="mini")
    with pytest.raises(FileNotFoundError, match="not an AvaMERG dataset dir"):
        tfds_avamerg.prepare(tmp_path, tmp_path / "out")
    assert tfds_avamerg.main(["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
