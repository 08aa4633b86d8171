"""`merg-jax demo` (merg_jax/app/demo.py): the whole product path on the shrunk tiny recipe — scores beside the
paper's, two answers whose reply.json / reply.wav / reply.mp4 decode with soundfile and imageio and agree in length
and emotion, a second run that reuses everything — plus the phase clock and the bad-argument errors."""

from __future__ import annotations

import json
import pathlib
import shutil

import imageio.v2 as imageio
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from merg_jax.app import demo
from merg_jax.cli import main
from tests.trainer_testing import SMALL


@pytest.mark.slow
def test_demo_answers_with_text_voice_and_a_talking_avatar(trained_run, mini_root, tmp_path):
    run, _ = trained_run
    out = tmp_path / "demo"
    shutil.copytree(run, out)  # every stage already trained: the demo's train phase resumes them
    lines: list[str] = []
    overrides = [o.removeprefix("--") for o in SMALL]
    kw = dict(data=mini_root, dialogues=8, overrides=overrides, eval_turns=2, speech_clips=1, video_clips=1,
              judge_steps=(20, 0), emit=lines.append)
    result = demo.run_demo(out, **kw)

    assert not any("step 1/" in line for line in lines), "a finished stage was trained again"
    phases = [line for line in lines if line.startswith("[demo ")]
    assert [p.split("]")[0] for p in phases] == [f"[demo {i}/4" for i in range(1, 5)]
    assert all("ETA" in p for p in phases)
    table = (out / "metrics.md").read_text()
    assert "48.51" in table and "| Ours" in table and "Voice and face" in table and "SSIM" in table
    assert json.loads((out / "metrics.json").read_text())["num_turns"] == 2

    portrait = np.asarray(Image.open(out / "portrait.png"))
    assert portrait.shape == (200, 200, 3)
    for name, folder in result.replies.items():
        reply = json.loads((folder / "reply.json").read_text())
        assert reply["response"] is not None and reply["emotion7"]
        # what is written, heard and seen is one emotion
        assert reply["speech"]["style"] == reply["video"]["style"] == {"from": "label", "emotion7": reply["emotion7"]}
        wave, sr = sf.read(str(folder / "reply.wav"))
        with imageio.get_reader(str(folder / "reply.mp4"), format="FFMPEG") as video:
            fps = video.get_meta_data()["fps"]
            frames = np.stack([frame for frame in video])  # not list(): its len() is inf
        assert len(frames) == reply["video"]["frames"] and wave.size / sr == pytest.approx(reply["speech"]["seconds"])
        assert abs(wave.size / sr - len(frames) / fps) <= 1 / fps
        if name == "written":  # the astronaut answers the dialogue written into the demo
            assert reply["conversation_id"] == "demo_written" and reply["video"]["portrait"] == "--portrait"
            size = frames.shape[1]
            astronaut = np.asarray(Image.fromarray(portrait).resize((size, size), Image.BILINEAR), np.float32)
            avatar = np.asarray(Image.open(mini_root / "avatars" / "40.png").convert("RGB").resize((size, size)),
                                np.float32)
            first = frames[0].astype(np.float32)
            assert np.abs(first - astronaut).mean() < 0.5 * np.abs(first - avatar).mean()
        else:
            assert reply["conversation_id"] == demo.held_out_dialogue(mini_root)[1]
            assert reply["video"]["portrait"].endswith(f"avatars/{reply['listener_profile']['ID']}.png")

    stamp = (out / "metrics.json").stat().st_mtime_ns
    lines.clear()
    again = demo.run_demo(out, **kw)  # the second run reuses the data, the checkpoints and the scores
    assert (out / "metrics.json").stat().st_mtime_ns == stamp
    assert any("data: reusing" in line for line in lines) and any("eval reused" in line for line in lines)
    assert again.seconds["eval"] < 5.0


def test_phase_clock_eta(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(demo.time, "perf_counter", lambda: now[0])
    lines: list[str] = []
    clock = demo.PhaseClock({"a": 60.0, "b": 120.0}, lines.append)
    t0 = clock.begin("a", "first")
    assert clock.eta() == 180.0 and lines[-1].endswith("(elapsed 0:00, ETA 3:00)")
    now[0] += 20.0
    assert clock.eta() == 160.0  # 40 s left of a, all of b
    now[0] += 70.0
    assert clock.eta() == 120.0  # a overran: it counts as done, never negative
    clock.end("a", t0)
    assert lines[-1] == "[demo] a done in 1:30  (elapsed 1:30, ETA 2:00)"
    clock.begin("b", "second")
    assert lines[-1].startswith("[demo 2/2] b: second")


def test_demo_refuses_bad_arguments(tmp_path, capsys):
    made = tmp_path / "made"
    made.mkdir()
    (made / "metadata.json").write_text(json.dumps({"dialogues_requested": 40}))
    for name in ("train", "valid", "test"):
        (made / f"{name}.json").write_text("[]")
    with pytest.raises(demo.DemoError, match="holds a dataset of 40 dialogues, not 100"):
        demo.ensure_data(made, 100, 1, print)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "train.json").write_text("[]")
    with pytest.raises(demo.DemoError, match="no metadata.json"):
        demo.ensure_data(tmp_path / "half", 100, 1, print)
    with pytest.raises(demo.DemoError, match="the test split is empty"):
        demo.held_out_dialogue(made)
    assert main(["demo", "--data", str(tmp_path / "new"), "--dialogues", "5", "--out", str(tmp_path / "o")]) == 2
    assert "--dialogues 5: the demo needs at least 10" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "o"), "--steps", "3"]) == 2
    assert "unrecognised argument '--steps'" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
