"""The emotion judge of `merg-jax eval` (merg_jax/eval/emotion_judge.py).

(1) its input against naive block means; (2) trained on AvaMERG-format clips of procedural avatars (the
AvaMERG-mini renderer: each emotion moves brows, eyes and mouth corners), it tells the 7 emotions apart on avatars it
has never seen, skipping and counting a clip that does not decode; (3) save/load round trip and errors.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from merg_jax import labels
from merg_jax.data.mini.avatar import render_clip, render_portrait
from merg_jax.eval.emotion_judge import (EmotionJudge, EmotionJudgeConfig, EmotionJudgeError, clip_emotion,
                                         clip_log_probs, expression_input, load_emotion_judge, save_emotion_judge,
                                         train_emotion_judge)
from tests.avamerg_fixtures import SPEAKER_PROFILE, make_conversation, write_dataset, write_mp4

pytestmark = pytest.mark.filterwarnings(r"ignore:os\.fork\(\) was called:RuntimeWarning")

TRAIN_AVATARS, TEST_AVATARS = (0, 1, 2, 3, 4, 5), (6, 7)


def _block_mean(x: np.ndarray) -> np.ndarray:
    """2×2 block means of [..., H, W, C] by explicit slicing."""
    return (x[..., 0::2, 0::2, :] + x[..., 1::2, 0::2, :] + x[..., 0::2, 1::2, :] + x[..., 1::2, 1::2, :]) / 4


def test_input_is_the_frames_change_from_the_portrait_beside_the_portrait_in_block_means():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    portrait = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    x = expression_input(frames, portrait, 48)
    f, p = _block_mean(frames / 255.0), _block_mean(portrait / 255.0)
    assert x.shape == (3, 48, 48, 6) and x.dtype == np.float32
    np.testing.assert_allclose(x[..., :3], f - p[None], atol=1e-5)
    np.testing.assert_allclose(x[..., 3:], np.broadcast_to(p, f.shape), atol=1e-5)
    assert not expression_input(np.repeat(portrait[None], 2, 0), portrait)[..., :3].any()  # a still face: no change
    with pytest.raises(ValueError, match="same size"):
        expression_input(frames, portrait[:64, :64])


@pytest.fixture(scope="module")
def avatar_root(tmp_path_factory):
    """A train split: one 24-frame speaker clip per (training avatar, emotion), its conversation annotated with that
    emotion, the avatars' portraits under avatars/; one more clip's mp4 is junk."""
    root = tmp_path_factory.mktemp("emotion_data")
    convs, clips = [], {}
    for a in TRAIN_AVATARS:
        for e, name in enumerate(labels.EMOTIONS_7):
            cid = f"{len(convs):05d}"
            convs.append(make_conversation(cid, num_turns=1, emotion=name, speaker={**SPEAKER_PROFILE, "ID": a}))
            mouth = 0.5 + 0.5 * np.sin(np.arange(24) / 3 + a + e)
            clips[cid] = render_clip(a, name, mouth, seed=10 * a + e)[0]
    convs.append(make_conversation("99999", num_turns=1, emotion="sad", speaker={**SPEAKER_PROFILE, "ID": 0}))
    write_dataset(root, convs, split="train", media=False)
    for cid, frames in clips.items():
        write_mp4(root / "train" / "video" / f"dia{cid}utt1.mp4", 0, frames=frames)
    (root / "train" / "video" / "dia99999utt1.mp4").write_bytes(b"not an mp4" * 50)
    (root / "avatars").mkdir()
    from PIL import Image

    for a in TRAIN_AVATARS:
        Image.fromarray(render_portrait(a)).save(root / "avatars" / f"{a}.png")
    return root


@pytest.fixture(scope="module")
def trained(avatar_root):
    lines: list[str] = []
    judge = train_emotion_judge(avatar_root, steps=200, batch_size=32, max_clips=None, holdout=0.15, log=lines.append,
                                log_every=50)
    return judge, lines


@pytest.mark.slow
def test_judge_tells_the_emotions_of_unseen_avatars_and_a_still_face_gets_one_answer(trained):
    judge, lines = trained
    right, still = [], set()
    for a in TEST_AVATARS:
        portrait = render_portrait(a)
        for e, name in enumerate(labels.EMOTIONS_7):
            frames, _ = render_clip(a, name, np.full(20, 0.3), seed=100 + e)
            right.append(clip_emotion(judge, frames, portrait) == e)
            still.add(clip_emotion(judge, np.repeat(portrait[None], 20, 0), portrait))
    assert np.mean(right) >= 0.8, right  # chance 1/7
    assert len(still) <= len(TEST_AVATARS)  # no change from the portrait: one answer per face, whatever the label
    # the junk clip is skipped and counted; progress and the held-out accuracy are logged
    assert any("1 failed" in line for line in lines), lines
    assert any("skipped" in line and "dia99999utt1.mp4" in line for line in lines), lines
    assert any("step 100/200" in line and "ETA" in line for line in lines), lines
    assert any("held-out clip accuracy" in line for line in lines), lines


def test_a_clip_reads_up_to_16_evenly_spaced_frames_in_one_shape():
    judge = EmotionJudge(EmotionJudgeConfig(size=16, width=4, hidden=8), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    portrait = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    frames = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    lp = clip_log_probs(judge, frames, portrait)
    assert lp.shape == (7,) and np.exp(lp).sum() < 1.0 + 1e-5  # a mean of log-probabilities: ≤ log of the mean
    picks = np.round(np.linspace(0, 39, 16)).astype(int)
    per_frame = np.asarray(jax.nn.log_softmax(judge(expression_input(frames[picks], portrait, 16)), axis=-1))
    np.testing.assert_allclose(lp, per_frame.mean(0), atol=1e-5)
    np.testing.assert_allclose(clip_log_probs(judge, frames[:3], portrait),
                               np.asarray(jax.nn.log_softmax(judge(expression_input(frames[:3], portrait, 16)),
                                                          axis=-1)).mean(0), atol=1e-5)
    with pytest.raises(ValueError, match="no frames"):
        clip_log_probs(judge, frames[:0], portrait)


def test_save_load_round_trip_and_errors_name_the_file(tmp_path):
    judge = EmotionJudge(EmotionJudgeConfig(size=16, width=4, hidden=8), rngs=nnx.Rngs(2))
    rng = np.random.default_rng(3)
    portrait = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    frames = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    save_emotion_judge(judge, tmp_path / "j")
    again = load_emotion_judge(tmp_path / "j")
    assert again.config == judge.config
    np.testing.assert_array_equal(clip_log_probs(again, frames, portrait), clip_log_probs(judge, frames, portrait))
    with pytest.raises(EmotionJudgeError, match=str(tmp_path / "nowhere")):
        load_emotion_judge(tmp_path / "nowhere")
    (tmp_path / "j" / "config.json").write_text('{"format": "merg_jax.sync_model", "config": {}}')
    with pytest.raises(EmotionJudgeError, match="config.json.*not a merg_jax.emotion_judge"):
        load_emotion_judge(tmp_path / "j")
    with pytest.raises(ValueError, match="size a multiple of 8"):
        EmotionJudgeConfig.from_json({"size": 20})
