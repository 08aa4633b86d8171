"""The grain pipeline: static batch shapes, features equal to the feature functions on the same files, exact resume
(0 and 2 workers), host sharding, bad samples skipped and counted."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
from avamerg_fixtures import make_conversation, write_dataset, write_mp4, write_wav

from merg_jax.data import labels, media
from merg_jax.data.avamerg import read_split
from merg_jax.data.features import FeatureConfig, log_mel, video_frames
from merg_jax.data.pipeline import DataIterator, make_dataset, make_iterator, raw_source
from merg_jax.data.pipeline_features import FeatureSpec
from merg_jax.data.templates import render_target
from merg_jax.data.tokenizer import train_bpe
from merg_jax.data.tokenizer_cli import training_texts

EMOTIONS = ["sad", "happy", "angry", "anxious"]  # "anxious" is one of the 32 only
SPEC = FeatureSpec(seq_len=256, max_clips=3,
                   audio=FeatureConfig(n_mels=16), audio_frames=24,
                   video=FeatureConfig(target_fps=10, size=32), video_frames=4,
                   reply_audio=FeatureConfig(sample_rate=8000, n_fft=256, hop=80, n_mels=16), reply_audio_frames=40,
                   reply_video=FeatureConfig(target_fps=25, size=24), reply_video_frames=8)
TEXT_ONLY = FeatureSpec(seq_len=256, max_clips=3)

DOCUMENTED_KEYS = {  # merg_jax/data/pipeline.py's docstring
    "tokens", "targets", "loss_mask", "segment_ids", "positions", "media_clip", "media_kind", "clip_utterance",
    "clip_emotion7", "audio_mel", "audio_len", "audio_mask", "video_frames", "video_len", "video_mask", "reply_mel", "reply_mel_len",
    "reply_audio_mask", "reply_frames", "reply_frames_len", "reply_video_mask", "emotion7", "emotion32", "age",
    "gender", "timbre", "avatar_id", "topic", "sample_index"}


def _write(root):
    """4 conversations x 2 turns (8 samples); every clip distinct (tone frequency, length, frame size)."""
    listeners = [{"age": "young", "gender": "female", "timbre": "mid", "ID": 18},
                 {"age": "elderly", "gender": "male", "timbre": "low", "ID": 64},
                 {"age": "child", "timbre": "high"}, None]
    convs = [make_conversation(f"{i:05d}", num_turns=2, emotion=e, listener=listeners[i])
             for i, e in enumerate(EMOTIONS)]
    write_dataset(root, convs, media=False)
    for i, conv in enumerate(convs):
        cid = conv["conversation_id"]
        for n in range(1, 5):
            write_wav(root / f"train/audio/dia{cid}utt{n}.wav", 0.12 + 0.05 * n, sr=16000 if n % 2 else 22050,
                      freq=180.0 + 90 * n + 37 * i)
            write_mp4(root / f"train/video/dia{cid}utt{n}.mp4", 0.16 + 0.04 * ((n + i) % 4), fps=25,
                      size=(40 + 8 * (n % 2), 48))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = _write(tmp_path_factory.mktemp("avamerg"))
    split = read_split(root, "train")
    tok = train_bpe(training_texts(split), vocab_size=800)
    source, root_s = raw_source(root, "train")
    return {"root": root, "split": split, "tok": tok, "source": source, "root_s": root_s}


def _iterator(data, spec=SPEC, **kw) -> DataIterator:
    kw = {"batch_size": 2, "seed": 3, **kw}
    return DataIterator(make_dataset(kw.pop("source", data["source"]), data["tok"], spec, root=data["root_s"], **kw))


def _epoch(it: DataIterator) -> list[dict]:
    with it:
        return list(it)


def test_batch_shapes_dtypes_static_and_documented(data):
    batches = _epoch(_iterator(data, batch_size=3, num_epochs=1, drop_remainder=False))
    assert len(batches) == 3  # 8 samples: 3 + 3 + 2 and a padding row
    shapes = SPEC.shapes(3)
    assert set(shapes) == DOCUMENTED_KEYS
    for b in batches:
        assert set(b) == DOCUMENTED_KEYS
        for k, (shape, dtype) in shapes.items():
            assert b[k].shape == shape and b[k].dtype == dtype, k
    last = batches[-1]
    assert list(last["sample_index"] >= 0) == [True, True, False]
    assert last["segment_ids"][2].sum() == 0 and last["loss_mask"][2].sum() == 0 and last["emotion7"][2] == -1
    assert sorted(np.concatenate([b["sample_index"] for b in batches]).tolist()) == [-1] + list(range(8))
    # Text-only spec: no media arrays at all.
    b = next(iter(_iterator(data, spec=TEXT_ONLY)))
    assert set(b) == DOCUMENTED_KEYS - {k for k in DOCUMENTED_KEYS if "audio" in k or "video" in k or "mel" in k
                                        or "frames" in k}


def _expected_clip(path, kind, config: FeatureConfig, frames: int):
    """Features straight from merg_jax.data.media + features, zero-padded/cut by hand."""
    if kind == "audio":
        x = log_mel(*media.read_wav(path), sample_rate=config.sample_rate, n_fft=config.n_fft, hop=config.hop,
                    n_mels=config.n_mels)
    else:
        x = video_frames(*media.read_video(path), target_fps=config.target_fps, size=config.size)
    out = np.zeros((frames, *x.shape[1:]), x.dtype)
    out[:min(frames, len(x))] = x[:frames]
    return out, min(frames, len(x)), len(x)


def test_features_tokens_and_labels_equal_direct_computation(data):
    tok, turns = data["tok"], data["split"].turns
    seen_cut = seen_pad = 0
    for b in _epoch(_iterator(data, batch_size=4, num_epochs=1)):
        for r in range(4):
            turn = turns[b["sample_index"][r]]
            # Clips: the history, oldest first (all of it fits max_clips=3 here).
            assert b["clip_utterance"][r].tolist() == [u.number for u in turn.history] + [-1] * (3 - len(turn.history))
            for c, u in enumerate(turn.history):
                mel, n, total = _expected_clip(u.audio, "audio", SPEC.audio, SPEC.audio_frames)
                np.testing.assert_array_equal(b["audio_mel"][r, c], mel)
                assert b["audio_len"][r, c] == n and b["audio_mask"][r, c]
                seen_cut += total > SPEC.audio_frames
                frames, n, total = _expected_clip(u.video, "video", SPEC.video, SPEC.video_frames)
                np.testing.assert_array_equal(b["video_frames"][r, c], frames)
                assert b["video_len"][r, c] == n and b["video_mask"][r, c]
                seen_pad += total < SPEC.video_frames
            assert not b["audio_mask"][r, len(turn.history):].any()
            assert not b["audio_mel"][r, len(turn.history):].any()
            mel, n, _ = _expected_clip(turn.response.audio, "audio", SPEC.reply_audio, SPEC.reply_audio_frames)
            np.testing.assert_array_equal(b["reply_mel"][r], mel)
            assert b["reply_mel_len"][r] == n and b["reply_audio_mask"][r]
            frames, n, _ = _expected_clip(turn.response.video, "video", SPEC.reply_video, SPEC.reply_video_frames)
            np.testing.assert_array_equal(b["reply_frames"][r], frames)
            assert b["reply_frames_len"][r] == n
            # Tokens: the masked targets are the CoE target; every media token points at a clip of its kind.
            m = b["loss_mask"][r].astype(bool)
            assert tok.decode(b["targets"][r][m], stop_at_eos=False, skip_roles=False) == \
                render_target(turn.response.text, turn.coe) + "</s>"
            np.testing.assert_array_equal(b["targets"][r][:-1][b["segment_ids"][r][1:] == 1],
                                          b["tokens"][r][1:][b["segment_ids"][r][1:] == 1])
            aud = b["tokens"][r] == tok.aud_id
            assert b["media_clip"][r][aud].tolist() == list(range(len(turn.history)))
            assert (b["media_kind"][r] == 1).tolist() == aud.tolist()
            assert b["positions"][r][b["segment_ids"][r] == 1].tolist() == list(range(int(b["segment_ids"][r].sum())))
            # Labels.
            emotion = turn.coe.speaker_emotion
            e7 = labels.EMOTIONS_7.index(labels.ED_TO_MULTIMODAL.get(emotion, emotion)) \
                if labels.ED_TO_MULTIMODAL.get(emotion, emotion) in labels.EMOTIONS_7 else -1
            assert b["emotion7"][r] == e7
            assert b["emotion32"][r] == labels.EMOTIONS_32.index(labels.MULTIMODAL_TO_ED.get(emotion, emotion))
            p = turn.listener_profile
            assert b["age"][r] == (labels.AGES.index(p.age) if p.age else -1)
            assert b["gender"][r] == (labels.GENDERS.index(p.gender) if p.gender else -1)
            assert b["avatar_id"][r] == (-1 if p.avatar_id is None else p.avatar_id)
            assert b["topic"][r] == labels.TOPICS.index("Work")
    assert seen_cut and seen_pad  # both the cut and the padded path were compared


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_resume_from_json_state_is_exact(data, workers):
    kw = {"workers": workers, "num_epochs": None}
    with _iterator(data, **kw) as it:  # uninterrupted; the state is taken on the way
        straight = [next(it) for _ in range(2)]
        state = json.dumps(it.get_state())
        straight += [next(it) for _ in range(3)]
    with _iterator(data, **kw) as it:  # a new iterator, as after a restart
        it.set_state(json.loads(state))
        rest = [next(it) for _ in range(3)]
        assert it.batches == 5
    for a, b in zip(straight, straight[:2] + rest):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # The run went past one epoch (8 samples): a reshuffled second epoch resumes exactly too.
    assert sorted(np.concatenate([b["sample_index"] for b in straight[:4]]).tolist()) == list(range(8))


def test_two_hosts_see_disjoint_halves(data):
    seen = []
    for host in range(2):
        batches = _epoch(_iterator(data, spec=TEXT_ONLY, num_epochs=1, drop_remainder=False, shard_index=host,
                                   shard_count=2))
        idx = np.concatenate([b["sample_index"] for b in batches])
        seen.append(set(idx[idx >= 0].tolist()))
        assert len(idx[idx >= 0]) == 4
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(8))


@pytest.fixture(scope="module")
def broken(tmp_path_factory, data):
    """The dataset with one corrupt wav (conversation 00001's reply to turn 0, in turn 1's history) and one missing
    mp4 (00002's first utterance, in both its turns' histories)."""
    root = tmp_path_factory.mktemp("broken")
    shutil.copytree(data["root"], root, dirs_exist_ok=True)
    (root / "train/audio/dia00001utt2.wav").write_bytes(b"RIFF this is no wav file at all" * 10)
    (root / "train/video/dia00002utt1.mp4").unlink()
    return root


@pytest.mark.parametrize("check_media", ["none", "exists"])
def test_bad_media_are_skipped_and_counted(data, broken, check_media):
    source, root = raw_source(broken, "train", check_media=check_media)
    it = DataIterator(make_dataset(source, data["tok"], SPEC, root=root, batch_size=2, num_epochs=1, shuffle=False,
                                   drop_remainder=False))
    batches = _epoch(it)
    got = sorted(i for b in batches for i in b["sample_index"].tolist() if i >= 0)
    assert got == [0, 1, 6, 7] and it.skipped == 4 and it.stats["skipped"] == 4
    paths = sorted(s.path for s in it.skipped_samples)
    assert sum("dia00001utt2.wav" in p for p in paths) == 2
    assert sum("00002" in p for p in paths) == 2
    assert sorted(s.index for s in it.skipped_samples) == [2, 3, 4, 5]


def test_missing_media_can_be_masked_instead(data, broken):
    spec = FeatureSpec(**{**SPEC.__dict__, "missing_media": "mask"})
    source, root = raw_source(broken, "train", check_media="exists")
    it = DataIterator(make_dataset(source, data["tok"], spec, root=root, batch_size=2, num_epochs=1, shuffle=False,
                                   drop_remainder=False))
    batches = _epoch(it)
    assert it.skipped == 2  # only the corrupt wav's two turns; the missing mp4 becomes a masked clip
    rows = [(b, r) for b in batches for r in range(2) if b["sample_index"][r] in (4, 5)]
    assert len(rows) == 2
    for b, r in rows:
        n = (b["clip_utterance"][r] > 0).sum()
        assert not b["video_mask"][r, 0] and not b["video_frames"][r, 0].any() and b["video_len"][r, 0] == 0
        assert b["video_mask"][r, 1:n].all() and b["audio_mask"][r, :n].all()


def test_too_many_bad_samples_in_a_row_stop_the_run(data, broken):
    source, root = raw_source(broken, "train", check_media="none")
    it = DataIterator(make_dataset(source, data["tok"], SPEC, root=root, batch_size=2, num_epochs=1, shuffle=False,
                                   max_bad_in_a_row=3))
    with pytest.raises(RuntimeError, match="4 samples in a row"):
        _epoch(it)


def test_make_iterator_from_config(data, tmp_path):
    from merg_jax.config import load_config

    data["tok"].save(tmp_path / "tok")
    config = load_config("configs/tiny.py", [
        f"--config.data.root={data['root']}", f"--config.data.tokenizer={tmp_path / 'tok'}",
        "--config.data.batch_size=4", "--config.data.seq_len=200", "--config.data.audio.frames=8",
        "--config.data.video.frames=2", "--config.data.reply_video.frames=0", "--config.data.reply_audio.frames=0",
        "--config.data.log_every_s=0"])
    calls = []
    it = make_iterator(config, "train", shard_index=1, shard_count=2, on_progress=calls.append)
    with it:
        b = next(it)
    assert b["tokens"].shape == (2, 200) and b["audio_mel"].shape == (2, 6, 8, 40)
    assert b["video_frames"].shape == (2, 6, 2, 32, 32, 3) and "reply_frames" not in b
    assert calls and calls[-1]["batches"] == 1 and calls[-1]["samples"] == 2
    # Two hosts read the two halves of the global batches one host reads, for several batches (past an epoch).
    def order(index, count):
        with make_iterator(config, "train", shard_index=index, shard_count=count) as it:
            return [next(it)["sample_index"].tolist() for _ in range(3)]

    one, host0 = order(0, 1), order(0, 2)
    assert [h0 + h1 for h0, h1 in zip(host0, [b["sample_index"].tolist()] + order(1, 2)[1:])] == one
    bad = load_config("configs/tiny.py", ["--config.data.batch_size=3", f"--config.data.root={data['root']}"])
    with pytest.raises(ValueError, match="not divisible"):
        make_iterator(bad, "train", tokenizer=data["tok"], shard_index=0, shard_count=2)


def test_bench_data_prints_both_rates_and_their_ratio(data, capsys):
    from merg_jax import bench

    rc = bench.main(["data", "--data", str(data["root"]), "--workers", "1", "--batches", "2", "--batch-size", "2",
                     "--config.data.audio.frames=8", "--config.data.reply_video.frames=4"])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = {int(line.split()[0]): [float(x) for x in line.split()[1:]] for line in out.splitlines()
            if line.strip() and line.split()[0].isdigit()}
    assert set(rows) == {0, 1} and all(r[1] > 0 and r[2] == 4 and r[3] == 0 for r in rows.values())
    ratio = float(out.split("ratio (1 workers / 0 workers):")[1].split()[0])
    assert ratio == pytest.approx(rows[1][1] / rows[0][1], rel=0.02, abs=0.01)
    assert "seq_len 256" in out and "audio 8x40 mel" in out
    assert bench.main(["data", "--data", str(data["root"] / "nope")]) == 2


def test_packed_batches_hold_every_turn_once_with_its_own_tokens(data):
    """data.pack_segments: rows of several turns; each segment is the turn's unpacked row, every turn appears
    once per pass, and a saved state resumes exactly (a turn waiting for the next batch is read again)."""
    # Text only (the media copying is tested in test_packing.py and test_empatheia.py): decoding is the slow part.
    spec = dataclasses.replace(TEXT_ONLY, seq_len=640, max_clips=6)  # room for 2-3 turns per row
    plain = _epoch(_iterator(data, spec, num_epochs=1, drop_remainder=False, shuffle=False))
    rows = {int(b["sample_index"][r]): {k: v[r] for k, v in b.items()}
            for b in plain for r in range(len(b["sample_index"])) if b["sample_index"][r] >= 0}
    packed = _epoch(_iterator(data, spec, num_epochs=1, drop_remainder=False, shuffle=False, pack_segments=3))
    assert len(packed) < len(plain)
    seen = []
    for b in packed:
        assert b["sample_index"].shape == (2, 3) and b["emotion7"].shape == (2, 3)
        for r in range(2):
            start = 0
            for seg, idx in enumerate(b["sample_index"][r]):
                if idx < 0:
                    assert not np.any(b["segment_ids"][r] == seg + 1)
                    continue
                seen.append(int(idx))
                one = rows[int(idx)]
                n = int(one["segment_ids"].sum())
                np.testing.assert_array_equal(b["segment_ids"][r, start:start + n], seg + 1)
                for k in ("tokens", "targets", "loss_mask", "positions", "media_kind"):
                    np.testing.assert_array_equal(b[k][r, start:start + n], one[k][:n], err_msg=k)
                assert b["emotion7"][r, seg] == one["emotion7"]
                start += n
    assert sorted(seen) == sorted(rows)

    kw = {"num_epochs": None, "pack_segments": 3}
    with _iterator(data, spec, **kw) as it:
        straight = [next(it) for _ in range(2)]
        state = json.dumps(it.get_state())
        straight += [next(it) for _ in range(2)]
    with _iterator(data, spec, **kw) as it:
        it.set_state(json.loads(state))
        rest = [next(it) for _ in range(2)]
    for a, b in zip(straight[2:], rest):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_a_worker_ends_when_its_parent_is_killed():
    """grain workers block on a full buffer; `_exit_with_parent` ends one whose parent died of SIGKILL."""
    import os
    import signal
    import subprocess
    import sys
    import time

    child = ("from merg_jax.data.pipeline import _exit_with_parent; import time; _exit_with_parent(0.1); "
             "print('ready', flush=True); time.sleep(120)")
    parent = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', sys.argv[1]], "
              "stdout=subprocess.PIPE, text=True); p.stdout.readline(); print(p.pid, flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", parent, child], stdout=subprocess.PIPE, text=True)
    worker = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    def alive(pid):
        try:
            state = open(f"/proc/{pid}/status").read()
        except FileNotFoundError:
            return False
        return "State:\tZ" not in state  # a zombie has exited; only its parent's reaping is missing

    deadline = time.time() + 20
    while alive(worker) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(worker)
