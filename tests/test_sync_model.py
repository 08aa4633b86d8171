"""merg_jax.eval.sync: the LSE-D / LSE-C table against a loop-by-loop recomputation from one-window-at-a-time
embeddings, the MFCCs against librosa's STFT and mel filters with a hand-written DCT, the mouth crop against 2x2
block means, training on a synthetic AvaMERG-format dataset (a tone in random bursts, the mouth dark while it
sounds) to a judge that finds known offsets (with the sign convention checked on audio built late, not shifted by
the module), a still mouth scoring a lower LSE-C, and save/load round trips and broken directories."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from merg_jax.eval.sync import (SyncConfig, SyncModel, SyncModelError, clip_features, embed_clip, load_sync_model,
                                mfcc, mouth_crops, num_params, offset_accuracy, offset_distances, save_sync_model,
                                shift_audio, sync_scores, train_sync_model)
from tests.avamerg_fixtures import make_conversation, write_dataset, write_mp4, write_wav

SR = 16000
SAMPLES_PER_FRAME = SR // 25
MINI = Path("/work/data/mini800")

# ffmpeg decodes in a subprocess; merg_jax.data.media explains why JAX's fork warning does not apply to it.
pytestmark = pytest.mark.filterwarnings(r"ignore:os\.fork\(\) was called:RuntimeWarning")


@pytest.fixture(scope="module")
def untrained() -> SyncModel:
    """A randomly initialised judge of the default shapes (built once: each new shape compiles its initialisers)."""
    return SyncModel(SyncConfig(), rngs=nnx.Rngs(3))


# ------------------------------------------------------------------------------------------- synthetic clips


def bursts(rng: np.random.Generator, n_frames: int) -> np.ndarray:
    """float [n_frames] of 0/1 runs, each 2..7 frames long: when the tone sounds and the mouth is open."""
    out, t, state = np.zeros(n_frames), 0, bool(rng.integers(2))
    while t < n_frames:
        n = int(rng.integers(2, 8))
        out[t:t + n] = state
        state, t = not state, t + n
    return out


def tone_bursts(on: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A tone (random pitch) switched on over the video frames where `on` is 1, with 5 ms ramps and faint noise."""
    env = np.repeat(on, SAMPLES_PER_FRAME)
    env = np.convolve(env, np.ones(80) / 80, mode="same")
    t = np.arange(env.size) / SR
    wave = 0.4 * env * np.sin(2 * np.pi * rng.uniform(150, 400) * t) + rng.normal(0, 0.002, env.size)
    return wave.astype(np.float32)


def mouth_frames(on: np.ndarray, rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """uint8 [T, size, size, 3]: a textured face-grey background (per clip) whose mouth (inside the mouth region)
    is a dark slot, taller while `on`."""
    base = rng.uniform(110, 170) + rng.normal(0, 6, (size, size, 1))
    frames = np.repeat(base[None], len(on), axis=0).repeat(3, axis=-1)
    s = size / 96
    c0, c1 = round(38 * s), round(58 * s)
    for k, v in enumerate(on):
        half = (2 + 6 * v) * s
        frames[k, round((68 - half)):round((68 + half)), c0:c1] = 40.0
    return np.clip(frames, 0, 255).astype(np.uint8)


def synthetic_clip(seed: int, n_frames: int = 100, size: int = 96, audio_delay: int = 0):
    """(frames, wave, on): audio_delay > 0 makes the sound of frame k start at frame k + audio_delay."""
    rng = np.random.default_rng(seed)
    on = bursts(rng, n_frames + abs(audio_delay))
    video_on = on[abs(audio_delay):] if audio_delay > 0 else on[:n_frames]
    audio_on = on[:n_frames] if audio_delay > 0 else on[abs(audio_delay):]
    return mouth_frames(video_on, rng, size), tone_bursts(audio_on, rng), video_on


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    """An AvaMERG-format train split of 7 conversations x 4 utterances of synthetic 4 s clips; one mp4 is junk."""
    root = tmp_path_factory.mktemp("sync_data")
    convs = [make_conversation(f"{i:05d}", num_turns=2) for i in range(7)]
    write_dataset(root, convs, split="train", media=False)
    for i, conv in enumerate(convs):
        for n in range(1, 5):
            frames, wave, _ = synthetic_clip(1000 + 10 * i + n)
            name = f"dia{conv['conversation_id']}utt{n}"
            write_wav(root / "train" / "audio" / f"{name}.wav", 0, sr=SR, signal=wave)
            write_mp4(root / "train" / "video" / f"{name}.mp4", 0, frames=frames)
    (root / "train" / "video" / "dia00003utt2.mp4").write_bytes(b"this is not an mp4 file" * 40)
    return root


@pytest.fixture(scope="module")
def trained(synthetic_root):
    lines: list[str] = []
    model = train_sync_model(synthetic_root, steps=300, batch_size=32, max_clips=None, log=lines.append,
                             log_every=100)
    return model, lines


# ------------------------------------------------------------------------------------------ (1) the scores


def naive_scores(model: SyncModel, crops: np.ndarray, feats: np.ndarray, max_offset: int):
    """LSE-D, LSE-C, offset and the per-offset means, loop by loop: each window embedded on its own, distances
    summed coordinate by coordinate, windows outside the clip left out, the median by sorting."""
    one_video, one_audio = jax.jit(lambda x: model.embed_video(x)), jax.jit(lambda x: model.embed_audio(x))
    video = [np.asarray(one_video(crops[k:k + 5][None]))[0] for k in range(len(crops) - 4)]
    audio = [np.asarray(one_audio(feats[4 * j:4 * j + 20][None]))[0] for j in range((len(feats) - 20) // 4 + 1)]
    means = []
    for o in range(-max_offset, max_offset + 1):
        dists = []
        for k in range(len(video)):
            if 0 <= k + o < len(audio):
                dists.append(math.sqrt(sum((float(x) - float(y)) ** 2 for x, y in zip(video[k], audio[k + o]))))
        means.append(sum(dists) / len(dists))
    best = min(range(len(means)), key=lambda i: means[i])
    median = sorted(means)[len(means) // 2]  # 2 max_offset + 1 entries: the middle one
    return means[best], median - means[best], best - max_offset, np.array(means), np.array(video), np.array(audio)


@pytest.mark.parametrize("size,n_frames", [(96, 40), (64, 33)])
def test_sync_scores_match_a_naive_recomputation(untrained, size, n_frames):
    model = untrained
    rng = np.random.default_rng(size)
    frames = rng.integers(0, 256, (n_frames, size, size, 3)).astype(np.uint8)
    wave = rng.normal(0, 0.1, n_frames * SAMPLES_PER_FRAME + 123).astype(np.float32)
    crops, feats = clip_features(frames, wave, SR)
    lse_d, lse_c, offset, means, video, audio = naive_scores(model, crops, feats, 15)

    ev, ea = embed_clip(model, crops, feats)
    np.testing.assert_allclose(ev, video, atol=2e-6)  # batching and padding change nothing
    np.testing.assert_allclose(ea, audio, atol=2e-6)
    np.testing.assert_allclose(offset_distances(ev, ea, 15), means, rtol=1e-5)
    scores = sync_scores(model, frames, wave, SR)
    assert scores["offset"] == offset
    assert scores["lse_d"] == pytest.approx(lse_d, rel=1e-5)
    assert scores["lse_c"] == pytest.approx(lse_c, rel=1e-4, abs=1e-6)
    assert set(scores) == {"lse_d", "lse_c", "offset"}


def test_sync_scores_refuse_a_clip_shorter_than_the_offsets(untrained):
    model = untrained
    frames = np.zeros((19, 96, 96, 3), np.uint8)
    with pytest.raises(ValueError, match="too short"):
        sync_scores(model, frames, np.zeros(19 * SAMPLES_PER_FRAME, np.float32), SR)


def test_the_model_is_small(untrained):
    assert 50_000 < num_params(untrained) < 400_000


# ------------------------------------------------------------------------------------------- (2) the inputs


def test_mfcc_matches_librosa_log_mel_and_a_hand_written_dct():
    librosa = pytest.importorskip("librosa")
    rng = np.random.default_rng(0)
    t = np.arange(int(1.37 * SR)) / SR
    wave = (0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t) * (1 + np.sin(7 * t))
            + rng.normal(0, 0.01, t.size)).astype(np.float32)
    wave[5000:7000] = 0.0  # digital silence: the log floor
    ours = mfcc(wave, SR)
    assert ours.shape == (1 + wave.size // 160, 13) and ours.dtype == np.float32

    power = np.abs(librosa.stft(wave.astype(np.float64), n_fft=400, hop_length=160, window="hann", center=True,
                                pad_mode="constant")) ** 2
    logmel = np.log(np.maximum(librosa.filters.mel(sr=SR, n_fft=400, n_mels=40) @ power, 1e-5))  # [40, F]
    n = logmel.shape[0]
    dct = np.zeros((13, n))
    for i in range(13):
        for m in range(n):
            dct[i, m] = math.sqrt(2.0 / n) * math.cos(math.pi * i * (2 * m + 1) / (2 * n))
    dct[0] /= math.sqrt(2.0)
    reference = (dct @ logmel).T
    np.testing.assert_allclose(ours, reference, atol=2e-3, rtol=1e-4)


def test_mfcc_resamples_to_16k():
    wave = np.random.default_rng(1).normal(0, 0.1, 22050).astype(np.float32)  # 1 s at 22.05 kHz
    assert mfcc(wave, 22050).shape == (101, 13)


def test_mouth_crop_is_the_region_in_2x2_block_means_at_any_size():
    frames = np.random.default_rng(2).integers(0, 256, (3, 96, 96, 3)).astype(np.uint8)
    luma = frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
    region = luma[:, 52:84, 28:68]
    expected = region.reshape(3, 16, 2, 20, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(mouth_crops(frames), expected, atol=1e-5)
    doubled = frames.repeat(2, axis=1).repeat(2, axis=2)  # the same face at 192x192
    np.testing.assert_allclose(mouth_crops(doubled), expected, atol=1e-5)


def test_shift_audio_delays_and_advances():
    wave = np.arange(2000, dtype=np.float32) + 1
    later = shift_audio(wave, SR, 2)  # 2 frames = 1280 samples later
    assert later.shape == wave.shape and not later[:1280].any() and np.array_equal(later[1280:], wave[:720])
    earlier = shift_audio(wave, SR, -1)
    assert np.array_equal(earlier[:1360], wave[640:]) and not earlier[1360:].any()


# -------------------------------------------------------------------------------------- (3) a trained judge


def test_training_skips_the_bad_clip_and_logs_progress(trained):
    _, lines = trained
    decoded = next(line for line in lines if "decoded" in line)
    assert "27 clips" in decoded and "1 failed to decode" in decoded, decoded
    assert any("dia00003utt2.mp4" in line for line in lines)
    progress = [line for line in lines if "step" in line and "ETA" in line]
    assert len(progress) == 3 and "steps/s" in progress[0]


def test_trained_judge_finds_known_offsets(trained):
    model, _ = trained
    clips = [synthetic_clip(seed)[:2] + (SR,) for seed in range(8)]  # unseen clips, never through a codec
    result = offset_accuracy(model, clips, shifts=(-9, -4, 0, 4, 9))
    assert result["trials"] == 40 and result["clips"] == 8
    assert result["offset_accuracy"] >= 0.8, result  # chance: 3 / 31
    assert result["lse_c"] > 0.1


def test_sign_convention_audio_built_late_gives_a_positive_offset(trained):
    model, _ = trained
    for delay in (6, -6):
        hits = 0
        for seed in range(3):
            frames, wave, _ = synthetic_clip(100 + seed, audio_delay=delay)
            hits += abs(sync_scores(model, frames, wave, SR)["offset"] - delay) <= 1
        assert hits >= 2, delay


def test_a_still_mouth_is_less_confident_than_a_synced_one(trained):
    model, _ = trained
    for seed in range(3):
        frames, wave, _ = synthetic_clip(200 + seed)
        synced = sync_scores(model, frames, wave, SR)
        still = sync_scores(model, np.repeat(frames[:1], len(frames), axis=0), wave, SR)
        assert still["lse_c"] < 0.5 * synced["lse_c"], (synced, still)
        assert still["lse_d"] > synced["lse_d"]


def test_frames_at_another_rate_are_resampled(trained):
    model, _ = trained
    frames, wave, _ = synthetic_clip(300)
    idx = np.floor(np.arange(200) * 25 / 50).astype(int)  # the same clip at 50 fps
    a, b = sync_scores(model, frames, wave, SR), sync_scores(model, frames[idx], wave, SR, fps=50.0)
    assert a["offset"] == b["offset"] and a["lse_c"] == pytest.approx(b["lse_c"], rel=1e-5)


# -------------------------------------------------------------------------------------------- (4) save/load


def test_save_load_round_trip_gives_identical_embeddings(untrained, tmp_path):
    out = save_sync_model(untrained, tmp_path / "sync")
    assert sorted(os.listdir(out)) == ["config.json", "weights.npz"]  # no temporary files left
    meta = json.loads((out / "config.json").read_text())
    assert meta["config"] == dataclasses.asdict(SyncConfig()) and meta["params"] == num_params(untrained)
    loaded = load_sync_model(out)
    assert loaded.config == untrained.config
    rng = np.random.default_rng(0)
    crops = rng.normal(size=(40, 16, 20)).astype(np.float32)
    feats = rng.normal(size=(161, 13)).astype(np.float32)
    for a, b in zip(embed_clip(loaded, crops, feats), embed_clip(untrained, crops, feats)):
        assert a.shape == (36, 64) and np.array_equal(a, b)


def test_loading_a_missing_or_broken_directory_names_the_path(untrained, tmp_path):
    with pytest.raises(SyncModelError, match=str(tmp_path / "nowhere")):
        load_sync_model(tmp_path / "nowhere")

    good = save_sync_model(untrained, tmp_path / "good")
    weights = (good / "weights.npz").read_bytes()
    config = (good / "config.json").read_text()

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "config.json").write_text(config)
    (truncated / "weights.npz").write_bytes(weights[:len(weights) // 2])
    with pytest.raises(SyncModelError, match=str(truncated / "weights.npz")):
        load_sync_model(truncated)

    no_config = tmp_path / "no_config"
    no_config.mkdir()
    (no_config / "weights.npz").write_bytes(weights)
    with pytest.raises(SyncModelError, match=str(no_config / "config.json")):
        load_sync_model(no_config)

    bad_json = tmp_path / "bad_json"
    bad_json.mkdir()
    (bad_json / "config.json").write_text("{not json")
    (bad_json / "weights.npz").write_bytes(weights)
    with pytest.raises(SyncModelError, match=str(bad_json / "config.json")):
        load_sync_model(bad_json)

    other = tmp_path / "other_config"  # a config that asks for other shapes than the weights have
    other.mkdir()
    assert '"video_width": 32' in config
    (other / "config.json").write_text(config.replace('"video_width": 32', '"video_width": 16'))
    (other / "weights.npz").write_bytes(weights)
    with pytest.raises(SyncModelError, match="shape"):
        load_sync_model(other)


# ------------------------------------------------------------------------------------------ real data (slow)


@pytest.mark.slow
@pytest.mark.skipif(not (MINI / "train.json").exists(), reason="AvaMERG-mini not at /work/data/mini800")
def test_judge_trained_on_avamerg_mini_finds_offsets():
    """A short training run (150 clips, 300 steps, ~40 s) already finds the offsets of unseen test clips."""
    from merg_jax.eval.sync import dataset_clips

    model = train_sync_model(MINI, steps=300, max_clips=150, log=lambda line: None)
    clips = list(dataset_clips(MINI, "test", max_clips=10, seed=1))
    result = offset_accuracy(model, clips)
    assert result["offset_accuracy"] >= 0.8, result
    still = [sync_scores(model, np.repeat(f[:1], len(f), axis=0), w, sr)["lse_c"] for f, w, sr in clips]
    assert np.mean(still) < 0.5 * result["lse_c"]
