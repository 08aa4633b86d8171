"""The procedural avatar renderer (merg_jax/data/mini/avatar*.py), judged from its pixels.

Every measurement here reads the rendered frames (or decodes the mp4 with imageio's ffmpeg reader); the side-car
is only used as the ground truth the pixels must agree with (which frames blink, where the head is).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import imageio.v2 as imageio
import numpy as np
import pytest
import soundfile
from scipy.ndimage import gaussian_filter
from scipy.stats import spearmanr

from merg_jax.data import labels
from merg_jax.data.mini import avatar

S = 96
NO_MOUTH = np.zeros(100, np.float32)


def gray(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float32).mean(-1)


def luminance(frames: np.ndarray) -> np.ndarray:
    f = frames.astype(np.float32)
    return 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]


def region(images: np.ndarray, rows: tuple[float, float], cols: tuple[float, float]) -> np.ndarray:
    """The part of images [..., H, W] (or [..., H, W, 3] if the last axis is 3) between fractions of H and W."""
    h_axis = -3 if images.shape[-1] == 3 else -2
    h, w = images.shape[h_axis], images.shape[h_axis + 1]
    index = [slice(None)] * images.ndim
    index[h_axis] = slice(int(rows[0] * h), int(rows[1] * h))
    index[h_axis + 1] = slice(int(cols[0] * w), int(cols[1] * w))
    return images[tuple(index)]


def undo_head_shift(frames: np.ndarray, sidecar: dict) -> np.ndarray:
    """Rolls each frame back by its side-car head offset rounded to whole pixels."""
    return np.stack([np.roll(f, (-round(dy), -round(dx)), axis=(0, 1))
                     for f, dx, dy in zip(frames, sidecar["head_dx"], sidecar["head_dy"])])


@pytest.fixture(scope="module")
def portraits() -> np.ndarray:
    return np.stack([avatar.render_portrait(i) for i in range(labels.NUM_AVATARS)])


# --- identities ---------------------------------------------------------------------------------------------------

def test_portraits_are_distinct_identities(portraits):
    assert portraits.shape == (65, S, S, 3) and portraits.dtype == np.uint8
    np.testing.assert_array_equal(avatar.render_portrait(5), portraits[5])
    p = portraits.astype(np.float32)
    dist = np.abs(p[:, None] - p[None]).mean(axis=(2, 3, 4))
    between = dist[np.triu_indices(65, 1)]
    # Within one identity: any two frames of a neutral clip (blinks, head drift).
    within = []
    for aid in (0, 31, 64):
        frames, _ = avatar.render_clip(aid, "neutral", NO_MOUTH, seed=3)
        f = frames.astype(np.float32)
        within.append(np.abs(f[:, None] - f[None, ::10]).mean(axis=(2, 3, 4)).max())
    assert between.min() > 3.0, "two identities render (nearly) the same portrait"
    assert between.mean() > 4 * max(within), (between.mean(), within)


def test_identity_matches_its_profile():
    for aid in range(labels.NUM_AVATARS):
        ident = avatar.identity(aid)
        assert (ident.age, ident.gender) == labels.avatar_profile(aid)[:2]


def test_any_size_draws_the_same_face():
    for size in (32, 33, 50):
        frames, sidecar = avatar.render_clip(7, "sad", np.linspace(0, 1, 5, dtype=np.float32), size=size, seed=0)
        assert frames.shape == (5, size, size, 3) and sidecar["size"] == size
    # Resolution independence: a 192 px portrait averaged down 2x is the 96 px portrait.
    for aid in (0, 33):
        big = avatar.render_portrait(aid, 192).astype(np.float32).reshape(96, 2, 96, 2, 3).mean(axis=(1, 3))
        assert np.abs(big - avatar.render_portrait(aid, 96)).mean() < 2.0


# --- clips and side-cars ------------------------------------------------------------------------------------------

def test_render_clip_is_deterministic_and_seeded():
    mouth = np.abs(np.sin(np.arange(60) / 4.0)).astype(np.float32)
    a, sa = avatar.render_clip(12, "fear", mouth, seed=9)
    b, sb = avatar.render_clip(np.int64(12), "fear", mouth, seed=np.int64(9))  # numpy integers are fine too
    np.testing.assert_array_equal(a, b)
    assert sa == sb
    c, _ = avatar.render_clip(12, "fear", mouth, seed=10)
    assert not np.array_equal(a, c)
    # Blinks and head drift come from (seed, avatar) only: other emotions of the same seed move identically.
    _, sd = avatar.render_clip(12, "happy", mouth, seed=9)
    assert sd["blink"] == sa["blink"] and sd["head_dx"] == sa["head_dx"] and sd["head_dy"] == sa["head_dy"]


def test_sidecar_records_what_is_drawn(portraits):
    rng = np.random.default_rng(0)
    mouth = rng.random(150).astype(np.float32)
    frames, sidecar = avatar.render_clip(20, "contempt", mouth, fps=25, seed=4)
    sidecar = json.loads(json.dumps(sidecar))  # what generate.py writes next to the mp4
    assert {k: sidecar[k] for k in ("avatar_id", "emotion", "fps", "size", "num_frames")} == \
        {"avatar_id": 20, "emotion": "contempt", "fps": 25, "size": S, "num_frames": 150}
    for key in ("mouth_open", "brow", "eye_open", "mouth_corner", "blink", "head_dx", "head_dy"):
        assert len(sidecar[key]) == 150 and all(isinstance(v, float) for v in sidecar[key]), key
    np.testing.assert_allclose(sidecar["mouth_open"], mouth, atol=1e-5)
    # The side-car alone redraws the clip exactly.
    np.testing.assert_array_equal(avatar.render_frames(20, sidecar, S), frames)
    # Head drift: at most ~2 px, smooth, and the pixels moved by what the side-car says.
    dx, dy = np.array(sidecar["head_dx"]), np.array(sidecar["head_dy"])
    assert np.abs(dx).max() <= 2.5 and np.abs(dy).max() <= 2.5 and np.abs(dx).max() + np.abs(dy).max() > 0.5
    assert np.abs(np.diff(dx)).max() <= 0.5 and np.abs(np.diff(dy)).max() <= 0.5
    still, _ = avatar.render_clip(20, "neutral", np.zeros(150, np.float32), seed=4)
    ref = gray(portraits[20:21])[0]
    for t in range(0, 150, 10):
        errs = {(sx, sy): np.abs(np.roll(ref, (sy, sx), axis=(0, 1)) - gray(still[t:t + 1])[0])[8:-8, 8:-8].mean()
                for sx in range(-3, 4) for sy in range(-3, 4)}
        sx, sy = min(errs, key=errs.get)
        assert abs(sx - dx[t]) <= 0.75 and abs(sy - dy[t]) <= 0.75, (t, (sx, sy), (dx[t], dy[t]))


def test_bad_arguments_are_named():
    ok = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="avatar ID"):
        avatar.render_clip(65, "sad", ok, seed=0)
    with pytest.raises(ValueError, match="avatar ID"):
        avatar.render_portrait(-1)
    with pytest.raises(ValueError, match="size"):
        avatar.render_portrait(0, size=31)
    with pytest.raises(ValueError, match="mouth"):
        avatar.render_clip(0, "sad", np.full(3, 1.5, np.float32), seed=0)
    with pytest.raises(ValueError, match="mouth"):
        avatar.render_clip(0, "sad", np.zeros((3, 2), np.float32), seed=0)
    with pytest.raises(ValueError, match="fps"):
        avatar.render_clip(0, "sad", ok, fps=0, seed=0)
    with pytest.raises(ValueError, match="'bored'"):
        avatar.render_clip(0, "bored", ok, seed=0)
    with pytest.raises(ValueError, match="missing"):
        avatar.render_frames(0, {"mouth_open": [0.0]})


def test_emotion_names():
    assert set(labels.EMOTIONS_7) | {"neutral"} == set(avatar.EMOTIONS)
    for ed in labels.EMOTIONS_32:
        assert avatar.canonical_emotion(ed) in labels.EMOTIONS_7
    for ed, mm in labels.ED_TO_MULTIMODAL.items():
        assert avatar.canonical_emotion(ed) == mm
    assert avatar.canonical_emotion("Surprised") == "surprised"
    a, sa = avatar.render_clip(3, "joyful", NO_MOUTH[:10], seed=1)
    b, _ = avatar.render_clip(3, "happy", NO_MOUTH[:10], seed=1)
    np.testing.assert_array_equal(a, b)
    assert sa["emotion"] == "happy"


def test_rendering_is_fast():
    mouth = np.abs(np.sin(np.arange(150) / 3.0)).astype(np.float32)  # 6 s at 25 fps
    avatar.render_clip(40, "happy", mouth, seed=0)  # draws and caches the identity's static layers
    start = time.perf_counter()
    avatar.render_clip(40, "sad", mouth, seed=1)
    assert time.perf_counter() - start < 1.0


# --- mouth --------------------------------------------------------------------------------------------------------

def mouth_darkness(frames: np.ndarray, skin: float) -> np.ndarray:
    """Soft count of pixels in the lower face much darker than the skin there (the open mouth): a pixel counts 1
    at 30 % of the skin's luminance or darker, 0 at 60 % or lighter, linearly between (so a pixel half covered
    by the mouth counts about half and sub-pixel motion does not make the count jump)."""
    lum = luminance(region(frames, (0.6, 0.86), (0.32, 0.68)))
    return np.clip((0.6 * skin - lum) / (0.3 * skin), 0, 1).sum(axis=(-1, -2))


def test_mouth_opening_shows_in_the_pixels(portraits):
    ramp = np.linspace(0, 1, 11, dtype=np.float32)
    rng = np.random.default_rng(1)
    track = np.clip(np.convolve(rng.random(100), np.ones(4) / 4, "same") * 1.6 - 0.3, 0, 1).astype(np.float32)
    clean = 0
    for aid in range(0, 65, 4):
        skin = float(np.median(luminance(region(portraits[aid], (0.6, 0.86), (0.32, 0.68)))))
        at_rest = mouth_darkness(portraits[aid:aid + 1], skin)[0]
        frames, _ = avatar.render_clip(aid, "neutral", ramp, seed=aid)
        dark = mouth_darkness(frames, skin)
        assert dark[-1] - dark[0] > 30, (aid, dark)
        if at_rest > 5:
            continue  # a beard or hair in the lower face: shifts with the head and blurs the count
        clean += 1
        # Monotone (up to a few percent of anti-aliasing noise as the head moves) and proportional.
        assert np.all(np.diff(dark) >= -0.04 * dark[-1]), (aid, dark)
        frames, _ = avatar.render_clip(aid, "happy", track, seed=aid + 1)
        rho = spearmanr(track, mouth_darkness(frames, skin))[0]
        assert rho >= 0.9, (aid, rho)
    assert clean >= 8


# --- expressions --------------------------------------------------------------------------------------------------

def test_emotions_are_visible_and_separable():
    """Per identity, each emotion differs from neutral (same seed: same blinks and head motion) in the brow/eye
    and mouth regions; and a nearest-centroid classifier on those difference images, trained on the other
    identities, names the emotion of a held-out identity."""
    emotions7 = list(labels.EMOTIONS_7)
    ids = list(range(0, 65, 6))
    features: dict[tuple[int, str], np.ndarray] = {}
    for aid in ids:
        clips = {e: avatar.render_clip(aid, e, NO_MOUTH[:50], seed=7) for e in emotions7 + ["neutral"]}
        sidecar = clips["neutral"][1]
        keep = np.array(sidecar["blink"]) == 0
        neutral = gray(undo_head_shift(clips["neutral"][0], sidecar))[keep]
        for e in emotions7:
            diff = gray(undo_head_shift(clips[e][0], sidecar))[keep] - neutral
            upper = np.abs(region(diff, (0.33, 0.56), (0.2, 0.8))).mean()
            lower = np.abs(region(diff, (0.62, 0.85), (0.3, 0.7))).mean()
            assert upper > 0.8, (aid, e, upper)
            if e != "surprised":  # surprise keeps a shut mouth shut (only a little rounder)
                assert lower > 0.15, (aid, e, lower)
            face = gaussian_filter(region(diff[::5], (0.3, 0.86), (0.2, 0.8)), (0, 1, 1))
            n, h, w = face.shape
            small = face[:, :h // 4 * 4, :w // 4 * 4].reshape(n, h // 4, 4, w // 4, 4).mean(axis=(2, 4))
            small = small.reshape(n, -1)
            features[(aid, e)] = small / np.linalg.norm(small, axis=1, keepdims=True)
    correct = total = 0
    for held_out in ids:
        centroids = np.stack([np.concatenate([features[(a, e)] for a in ids if a != held_out]).mean(0)
                              for e in emotions7])
        for k, e in enumerate(emotions7):
            x = features[(held_out, e)]
            pred = np.argmin(((x[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
            correct += int((pred == k).sum())
            total += len(x)
    assert correct / total >= 0.85, correct / total


def test_eye_opening_follows_emotion():
    """Visible white of the eyes (bright, unsaturated pixels): surprised > neutral > disgusted."""
    for aid in (2, 23, 47):
        white = {}
        for e in ("surprised", "neutral", "disgusted"):
            frames, sidecar = avatar.render_clip(aid, e, NO_MOUTH[:40], seed=2)
            f = region(frames[np.array(sidecar["blink"]) == 0], (0.4, 0.56), (0.28, 0.72)).astype(np.int32)
            sclera = (f.min(-1) > 170) & (f.max(-1) - f.min(-1) < 30)
            white[e] = sclera.sum(axis=(1, 2)).mean()
        assert white["surprised"] > 1.5 * white["neutral"] > 1.5 * 1.5 * white["disgusted"] > 0, (aid, white)


# --- blinks -------------------------------------------------------------------------------------------------------

def test_blinks_close_the_eyes():
    for aid in (0, 10, 30, 50, 60):
        frames, sidecar = avatar.render_clip(aid, "neutral", np.zeros(150, np.float32), seed=aid)
        blink = np.array(sidecar["blink"])
        assert (blink >= 0.9).any(), "a 6 s clip has at least one blink"
        variance = region(gray(frames), (0.38, 0.56), (0.22, 0.78)).reshape(150, -1).var(axis=1)
        shut, open_ = variance[blink >= 0.9], variance[blink == 0]
        assert shut.max() < open_.min(), (aid, shut, open_.min())
        assert shut.mean() < 0.85 * open_.mean()


def test_blink_timing():
    sidecar = avatar.clip_params(5, "neutral", np.zeros(25 * 60), fps=25, size=S, seed=3)  # a minute, undrawn
    blink = np.array(sidecar["blink"])
    starts = np.flatnonzero((blink > 0) & (np.concatenate([[0.0], blink[:-1]]) == 0))
    ends = np.flatnonzero((blink > 0) & (np.concatenate([blink[1:], [0.0]]) == 0))
    assert 10 <= len(starts) <= 25
    assert np.all((ends - starts + 1 >= 3) & (ends - starts + 1 <= 4))  # 3-4 frames at 25 fps
    gaps = np.diff(starts) / 25.0
    assert gaps.min() >= 2.5 and gaps.max() <= 5.3
    assert all(blink[s:e + 1].max() == 1.0 for s, e in zip(starts, ends))


# --- mouth envelope -----------------------------------------------------------------------------------------------

def test_mouth_envelope_of_a_tone_burst():
    sr, fps = 16000, 25
    t = np.arange(sr) / sr
    wave = np.concatenate([np.zeros(sr), 0.3 * np.sin(2 * np.pi * 220 * t), np.zeros(sr)]).astype(np.float32)
    env = avatar.mouth_envelope(wave, sr, fps, 80)  # 3.2 s of video for 3 s of audio
    assert env.shape == (80,) and env.dtype == np.float32
    assert env[:23].max() < 0.05 and env[52:].max() < 0.05
    assert env[27:48].min() > 0.8
    np.testing.assert_allclose(avatar.mouth_envelope(5 * wave, sr, fps, 80), env, atol=1e-5)  # level-free
    assert not avatar.mouth_envelope(np.zeros(sr, np.float32), sr, fps, 25).any()
    with pytest.raises(ValueError, match="wave"):
        avatar.mouth_envelope(np.zeros((2, 10)), sr, fps, 5)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_mouth_envelope_of_real_speech(tmp_path):
    wav = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "I am so sorry to hear that, it must have been hard."], check=True)
    speech, sr = soundfile.read(wav, dtype="float32")
    pad = np.zeros(sr, np.float32)
    wave = np.concatenate([pad, speech, pad])
    n = int(np.ceil(len(wave) / sr * 25))
    env = avatar.mouth_envelope(wave, sr, 25, n)
    assert env[:20].max() < 0.05 and env[-20:].max() < 0.05  # the second of silence on each side
    speaking = env[30:n - 30]
    assert speaking.max() > 0.9 and (speaking > 0.3).mean() > 0.4  # the lips move through the sentence
    assert (np.diff(speaking) ** 2).mean() > 0.005  # open and close, not a plateau


# --- mp4 ----------------------------------------------------------------------------------------------------------

def test_write_mp4_round_trip_and_reproducible(tmp_path):
    mouth = np.abs(np.sin(np.arange(50) / 3.0)).astype(np.float32)
    frames, _ = avatar.render_clip(8, "happy", mouth, seed=0)
    a, b = tmp_path / "a.mp4", tmp_path / "sub" / "b.mp4"
    avatar.write_mp4(a, frames, 25)
    avatar.write_mp4(b, frames, 25)
    assert a.read_bytes() == b.read_bytes()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.mp4", "b.mp4"]  # no temp files
    reader = imageio.get_reader(a, format="FFMPEG")
    assert reader.get_meta_data()["fps"] == 25
    decoded = np.stack(list(reader.iter_data()))  # (len(reader) is inf for ffmpeg streams)
    reader.close()
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(np.int32) - frames).mean() < 4.0
    # Replacing an existing file is atomic: a rejected write leaves it as it was.
    before = a.read_bytes()
    with pytest.raises(ValueError, match=str(a)):
        avatar.write_mp4(a, frames[:, :95], 25)
    with pytest.raises(ValueError, match="uint8"):
        avatar.write_mp4(a, frames.astype(np.float32), 25)
    assert a.read_bytes() == before
    (tmp_path / "plain").write_bytes(b"")  # the permissions any new file gets here (not mkstemp's 0600)
    assert os.stat(a).st_mode & 0o777 == os.stat(tmp_path / "plain").st_mode & 0o777
