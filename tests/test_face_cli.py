"""`merg-jax animate` and the face side of `respond` on the session's trained tiny model: a real photograph
animated for 20 s of speech into an mp4 that another library decodes with audio and video of one length; bad input
refused in one line with exit status 2; the trained face stages' tracks, statistics and targets."""

from __future__ import annotations


import av
import numpy as np
import pytest
import soundfile as sf

from merg_jax.cli import main


def _speech(mini_root, seconds: float) -> tuple[np.ndarray, int]:
    """Real espeak-ng speech of the mini dataset, clips joined until `seconds` long."""
    waves, sr = [], 16000
    for path in sorted((mini_root / "train" / "audio").glob("*.wav")):
        w, sr = sf.read(str(path), dtype="float32")
        waves.append(w)
        if sum(map(len, waves)) >= seconds * sr:
            break
    return np.concatenate(waves)[: int(seconds * sr)], sr


def _durations(path) -> dict[str, float]:
    with av.open(str(path)) as c:
        out = {s.type: float(s.duration * s.time_base) for s in c.streams if s.duration}
        frames = sum(1 for _ in c.decode(video=0))
    return {**out, "frames": frames}


def test_animate_a_photograph_for_twenty_seconds(trained_run, mini_root, tmp_path, capsys):
    from PIL import Image
    from skimage import data

    out, _ = trained_run
    face = data.astronaut()[20:220, 140:340]  # the astronaut's face, 200×200
    Image.fromarray(face).save(tmp_path / "astronaut.png")
    wave, sr = _speech(mini_root, 20.0)
    sf.write(tmp_path / "speech.wav", wave, sr)
    rc = main(["animate", "--checkpoint", str(out), "--portrait", str(tmp_path / "astronaut.png"), "--audio",
               str(tmp_path / "speech.wav"), "--emotion", "happy", "--intensity", "0.7", "--size", "64",
               "--out", str(tmp_path / "a.mp4")])
    assert rc == 0, capsys.readouterr().err
    d = _durations(tmp_path / "a.mp4")
    assert d["frames"] == 500  # 20 s at 25 fps
    assert abs(d["audio"] - d["video"]) <= 1 / 25 and abs(d["video"] - 20.0) <= 1 / 25
    with av.open(str(tmp_path / "a.mp4")) as c:
        frame = next(c.decode(video=0)).to_ndarray(format="rgb24")
    assert frame.shape == (64, 64, 3)
    # a reference clip drives the style instead of a label
    ref = sorted((mini_root / "train" / "video").glob("*.mp4"))[0]
    sf.write(tmp_path / "short.wav", wave[: 2 * sr], sr)
    assert main(["animate", "--checkpoint", str(out), "--portrait", str(tmp_path / "astronaut.png"), "--audio",
                 str(tmp_path / "short.wav"), "--reference", str(ref), "--out", str(tmp_path / "b.mp4")]) == 0
    assert _durations(tmp_path / "b.mp4")["frames"] == 50


@pytest.mark.parametrize("case, message", [
    ("portrait", "not a readable image"), ("silent", "silent"), ("empty", "audio"), ("size", "--size=33"),
    ("small", "size 16"), ("emotion", "bored"),
])
def test_animate_refuses_bad_input_in_one_line(trained_run, mini_root, tmp_path, capsys, case, message):
    out, _ = trained_run
    portrait = next((mini_root / "avatars").glob("*.png"))
    wave, sr = _speech(mini_root, 2.0)
    sf.write(tmp_path / "ok.wav", wave, sr)
    args = {"portrait": str(portrait), "audio": str(tmp_path / "ok.wav"), "extra": []}
    if case == "portrait":
        (tmp_path / "bad.png").write_text("not an image")
        args["portrait"] = str(tmp_path / "bad.png")
    elif case == "silent":
        sf.write(tmp_path / "silent.wav", np.zeros(sr, np.float32), sr)
        args["audio"] = str(tmp_path / "silent.wav")
    elif case == "empty":
        sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), sr)
        args["audio"] = str(tmp_path / "empty.wav")
    elif case == "size":
        args["extra"] = ["--size", "33"]
    elif case == "small":
        args["extra"] = ["--size", "16"]
    else:
        args["extra"] = ["--emotion", "bored"]
    rc = main(["animate", "--checkpoint", str(out), "--portrait", args["portrait"], "--audio", args["audio"],
               *args["extra"], "--out", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert message in err
    assert not (tmp_path / "x.mp4").exists()


def test_face_stages_made_tracks_statistics_and_generator_targets(trained_run, mini_root):
    from merg_jax.data.face_corpus import load_tracks
    from merg_jax.train.face_tracks import detector_fingerprint

    out, result = trained_run
    face = result.model.face
    tracks = load_tracks(out / "face_tracks" / "train.npz")
    assert str(tracks["fingerprint"]) == detector_fingerprint(face)
    motion = tracks["motion"]
    np.testing.assert_allclose(np.asarray(face.motion_mean[...]), motion.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(face.motion_std[...]), np.maximum(motion.std(0), 1e-3), rtol=1e-5)
    assert len(tracks["offsets"]) == len(tracks["index"]) + 1 and tracks["offsets"][-1] == len(motion)
    # a clip's track is its frames' keypoints and expression codes minus its portrait's, as the trained detector
    # sees them, one frame at a time
    import jax.numpy as jnp

    from merg_jax.data.face_corpus import clip_frames, clip_portrait, clip_records

    records = {r["index"]: r for r in clip_records(mini_root, "train")}
    i = int(tracks["index"][0])
    rec = records[i]
    frames = clip_frames(rec["video"], face.cfg.size, face.cfg.fps)
    portrait = clip_portrait(rec, face.cfg.size, frames)
    kp0, code0 = face.renderer.kp.detect(jnp.asarray(portrait[None], jnp.float32) / 255.0)
    for t in (0, len(frames) // 2, len(frames) - 1):
        kp, code = face.renderer.kp.detect(jnp.asarray(frames[t:t + 1], jnp.float32) / 255.0)
        want = np.concatenate([np.asarray(kp - kp0).ravel(), np.asarray(code - code0).ravel()])
        np.testing.assert_allclose(motion[t], want, atol=1e-5)
    summary = result.summary
    assert {"face_renderer", "face_motion"} <= set(summary)
    assert np.isfinite(summary["face_motion"]["diffusion"]) and 0 < summary["face_renderer"]["ssim"] <= 1


def test_video_targets_are_the_face_generators_encoders_on_the_gold_reply(trained_run, mini_root):
    import jax.numpy as jnp

    from merg_jax.data.face_corpus import read_image
    from merg_jax.data.pipeline import make_iterator
    from merg_jax.models.face.audio_content import video_frames_of
    from merg_jax.train.targets import GeneratorTargets, make_targets
    from tests.trainer_testing import trainer_config

    out, result = trained_run
    model = result.model
    config = trainer_config(mini_root, out)
    targets = make_targets(config, model.cfg)
    assert isinstance(targets, GeneratorTargets) and targets.video is None
    with make_iterator(config, "train", tokenizer=result.tokenizer, shuffle=False, num_epochs=1, workers=0) as it:
        batch = next(it)
    c = targets.content(batch, model)
    has = batch["reply_audio_mask"]
    mel_len = np.where(has, batch["reply_mel_len"], 0)
    want = model.face.content(jnp.asarray(batch["reply_mel"]), jnp.asarray(mel_len), c.video.shape[1])
    np.testing.assert_allclose(np.asarray(c.video), np.asarray(want), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(c.video_len), np.minimum(
        np.asarray(video_frames_of(jnp.asarray(mel_len), model.face.cfg)), c.video.shape[1]) * has)
    # S^v's target: the style code of the reply video's keypoints against the listener's portrait
    row = int(np.flatnonzero(batch["reply_video_mask"])[0])
    avatar = int(batch["avatar_id"][row])
    portrait = read_image(mini_root / "avatars" / f"{avatar}.png", model.face.cfg.size)
    np.testing.assert_array_equal(batch["reply_portrait"][row], portrait)
    frames = batch["reply_frames"][row].astype(np.float32) / 255.0
    kp, expr = (np.asarray(x) for x in model.face.renderer.kp.detect(jnp.asarray(frames)))
    kp0, expr0 = (np.asarray(x) for x in model.face.renderer.kp.detect(jnp.asarray(portrait[None] / 255.0,
                                                                                    jnp.float32)))
    n = int(batch["reply_frames_len"][row])
    motion = np.concatenate([(kp - kp0).reshape(len(kp), -1), expr - expr0], axis=-1)
    code = model.face.style(jnp.asarray(motion[None]), jnp.asarray([n]))
    s = targets.style(batch, model)
    np.testing.assert_allclose(np.asarray(s.video[row]), np.asarray(code[0]), atol=1e-4)  # batched vs one
    assert bool(s.video_valid[row])
