"""`merg-jax demo`: the project's job end to end on a laptop-sized budget — make AvaMERG-mini, train Empatheia through
every stage, score the test split, and answer two dialogues with text, voice and a talking avatar.

    result = run_demo("runs/demo", data="data/avamerg_demo", dialogues=100)     # ~15 min on 2 CPU cores
    result.replies["written"] / "reply.mp4"

Phases (each reuses what an earlier run left, so a second run takes minutes):
1. data: `make-data` into `data` unless it already holds a dataset of `dialogues` conversations;
2. train: `configs/empatheia_demo.py` (the tiny recipe, every stage cut short) into `out`; the trainer resumes;
3. eval: the test split's first `eval_turns` turns, `speech_clips` utterances and `video_clips` clips scored
   (`merg_jax.eval`), with small judges; `out/metrics.md` is our figures beside the paper's, `out/metrics.json`
   the scores, stamped with the checkpoint they are of (a later run with the same checkpoint reuses them);
4. answers: one test dialogue (the test split's first conversation, its last turn) and `WRITTEN_DIALOGUE`, text only,
   answered by the avatar `skimage.data.astronaut()` (its face) — each into `out/replies/{test,written}/` as
   reply.json, reply.wav and reply.mp4. Voice and face are rendered in the reply's own emotion (`style_from="label"`),
   so what is written, heard and seen agree.

Progress: a line per phase with the time spent and an ETA for the whole demo (`PhaseClock`: the phases' measured
durations, `EXPECTED_S`), and the trainer's own line per logging interval.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "empatheia_demo.py"

# A dialogue written into the demo: text only (no media), answered by the astronaut.
WRITTEN_DIALOGUE: dict[str, Any] = {
    "conversation_id": "demo_written",
    "speaker_profile": {"age": "young", "gender": "female", "timbre": "mid", "ID": 3},
    "listener_profile": {"age": "middle-aged", "gender": "male", "timbre": "low", "ID": 40},
    "topic": "Life Events",
    "turns": [{"turn_id": "0", "dialogue_history": [
        {"index": 0, "role": "speaker",
         "utterance": "I failed my driving test this morning, after months of lessons, and I feel awful."}]}],
}

# Expected seconds of each phase on 2 CPU cores (measured: docs/results.md, "The demo"), for the ETA.
EXPECTED_S = {"data": 75.0, "train": 640.0, "eval": 130.0, "answers": 30.0}


class DemoError(ValueError):
    """Bad demo arguments (the message names the flag)."""


@dataclasses.dataclass
class DemoResult:
    out: pathlib.Path
    data: pathlib.Path
    metrics: dict[str, Any]
    replies: dict[str, pathlib.Path]  # name → folder with reply.json, reply.wav, reply.mp4
    seconds: dict[str, float]  # phase → wall seconds this run (≈ 0 when reused)


class PhaseClock:
    """Phase lines with an ETA for the whole run: the expected seconds of the phases not yet finished, less the time
    the running one has already taken (never below zero)."""

    def __init__(self, expected: dict[str, float], emit: Callable[[str], None]):
        self.expected, self.emit = dict(expected), emit
        self.spent: dict[str, float] = {}
        self.start = time.perf_counter()
        self.running: tuple[str, float] | None = None

    def eta(self) -> float:
        left = sum(self.expected[p] for p in self.expected if p not in self.spent)
        if self.running is not None:
            left -= min(time.perf_counter() - self.running[1], self.expected[self.running[0]])
        return max(left, 0.0)

    def begin(self, phase: str, what: str) -> float:
        n = list(self.expected).index(phase) + 1
        self.running = (phase, time.perf_counter())
        self.emit(f"[demo {n}/{len(self.expected)}] {phase}: {what}  (elapsed {_clock(self.elapsed())}, "
                  f"ETA {_clock(self.eta())})")
        return self.running[1]

    def end(self, phase: str, t0: float, note: str = "") -> None:
        self.spent[phase] = time.perf_counter() - t0
        self.running = None
        self.emit(f"[demo] {phase} {note or 'done'} in {_clock(self.spent[phase])}  (elapsed "
                  f"{_clock(self.elapsed())}, ETA {_clock(self.eta())})")

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 60}:{s % 60:02d}"


def _atomic_write(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def demo_config(out: str | os.PathLike, data: str | os.PathLike, overrides: Sequence[str] = ()):
    """configs/empatheia_demo.py reading `data` and writing `out` (its tokenizer and feature cache inside), then
    `overrides` (`config.a.b=v`)."""
    from merg_jax.config import load_config

    out = pathlib.Path(out)
    return load_config(str(CONFIG), [f"config.data.root={data}", f"config.train.output_dir={out}",
                                     f"config.data.tokenizer={out / 'tokenizer'}",
                                     f"config.data.feature_cache_dir={out / 'feature_cache'}", *overrides])


def ensure_data(data: pathlib.Path, dialogues: int, workers: int, emit: Callable[[str], None]) -> bool:
    """Makes AvaMERG-mini in `data` unless a complete one of `dialogues` conversations is there; True if made."""
    meta = data / "metadata.json"
    if meta.is_file():
        have = json.loads(meta.read_text()).get("dialogues_requested")
        if have == dialogues and all((data / f"{s}.json").is_file() for s in ("train", "valid", "test")):
            emit(f"[demo] data: reusing {data} ({have} dialogues)")
            return False
        raise DemoError(f"--data {data}: holds a dataset of {have} dialogues, not {dialogues}; give another --data "
                        "or the same --dialogues")
    if dialogues < 10:
        raise DemoError(f"--dialogues {dialogues}: the demo needs at least 10 (every split must hold a conversation)")
    if data.exists() and any(data.iterdir()):
        raise DemoError(f"--data {data}: exists, is not empty and holds no metadata.json (an interrupted make-data?);"
                        " remove it or give another --data")
    from merg_jax.data.mini.generate import Config, make_dataset

    make_dataset(Config(out=data, dialogues=dialogues, workers=workers, progress=True))
    return True


def demo_portrait(out: pathlib.Path) -> pathlib.Path:
    """skimage's astronaut, cropped to her face (200×200), saved as `out/portrait.png`."""
    from PIL import Image
    from skimage import data as skdata

    path = out / "portrait.png"
    if not path.is_file():
        Image.fromarray(skdata.astronaut()[20:220, 140:340]).save(path)
    return path


def held_out_dialogue(data: pathlib.Path) -> tuple[pathlib.Path, str]:
    """The test split's file and its first conversation's id."""
    path = data / "test.json"
    convs = json.loads(path.read_text())
    if not convs:
        raise DemoError(f"{path}: the test split is empty; make the dataset with more --dialogues")
    return path, str(convs[0]["conversation_id"])


def score(loaded, data: pathlib.Path, out: pathlib.Path, *, eval_turns: int, speech_clips: int,
          video_clips: int, judge_steps: tuple[int, int] = (80, 0), judge_clips: int = 64,
          emit: Callable[[str], None] = print) -> dict[str, Any]:
    """The test split scored as `merg-jax eval` does, at the demo's size, with judges of `judge_steps` (sync,
    emotion; 0: none) steps on at most `judge_clips` training clips, kept in out/judges; writes
    out/metrics.{json,md}."""
    from merg_jax.eval.evaluate import evaluate, write_outputs

    result = evaluate(loaded, str(data), "test", limit=eval_turns, progress=False, emit=emit)
    m = result.metrics
    if speech_clips and loaded.model.speech is not None:
        from merg_jax.eval.speech_eval import evaluate_speech

        m["speech"] = evaluate_speech(loaded, str(data), "test", limit=speech_clips, emit=emit)
    if video_clips and loaded.model.face is not None:
        from merg_jax.eval.video_eval import evaluate_video

        judges = out / "judges"
        m["video"] = evaluate_video(loaded, str(data), "test", limit=video_clips, sync_dir=str(judges / "sync"),
                                    sync_steps=judge_steps[0], emotion_dir=str(judges / "emotion"),
                                    emotion_steps=judge_steps[1], judge_clips=judge_clips, emit=emit)
    dataset = f"{data} (test split, {m['num_turns']} turns), the 15-minute demo model"
    write_outputs(result, out / "metrics.json", dataset=dataset)
    return m


def run_demo(out: str | os.PathLike = "runs/demo", *, data: str | os.PathLike = "data/avamerg_demo",
             dialogues: int = 100, workers: int = 2, overrides: Sequence[str] = (), eval_turns: int = 6,
             speech_clips: int = 3, video_clips: int = 3, judge_steps: tuple[int, int] = (80, 0),
             emit: Callable[[str], None] | None = None) -> DemoResult:
    """The whole demo (see the module docstring); returns where everything went."""
    from merg_jax.console import log

    emit = emit or log.info
    if min(eval_turns, speech_clips, video_clips) < 0 or workers < 1:
        raise DemoError("demo: eval_turns, speech_clips and video_clips must be >= 0 and workers >= 1")
    out, data = pathlib.Path(out), pathlib.Path(data)
    out.mkdir(parents=True, exist_ok=True)
    clock = PhaseClock(EXPECTED_S, emit)

    t0 = clock.begin("data", f"AvaMERG-mini, {dialogues} dialogues, into {data}")
    made = ensure_data(data, dialogues, workers, emit)
    clock.end("data", t0, "made" if made else "reused")

    config = demo_config(out, data, overrides)
    t0 = clock.begin("train", f"{config.stages.replace(',', ', ')} (configs/empatheia_demo.py) into {out}")
    from merg_jax.train.trainer import train_stages

    train_stages(config, emit=emit)
    clock.end("train", t0)

    from merg_jax.infer.bundle import load_model

    loaded = load_model(out)
    t0 = clock.begin("eval", f"the test split ({eval_turns} turns, {speech_clips} utterances, {video_clips} clips)")
    stamp = out / "metrics.json"  # `evaluate` records the checkpoint it scored
    metrics = json.loads(stamp.read_text()) if stamp.is_file() else None
    if metrics is not None and metrics.get("checkpoint") == loaded.source:
        clock.end("eval", t0, f"reused ({stamp}, same checkpoint)")
    else:
        metrics = score(loaded, data, out, eval_turns=eval_turns, speech_clips=speech_clips,
                        video_clips=video_clips, judge_steps=judge_steps, emit=emit)
        clock.end("eval", t0)

    t0 = clock.begin("answers", "one test dialogue and one written one: text, voice, avatar")
    from merg_jax.infer.respond import Responder

    portrait = demo_portrait(out)
    written = out / "written_dialogue.json"
    _atomic_write(written, json.dumps(WRITTEN_DIALOGUE, indent=2) + "\n")
    test_file, test_id = held_out_dialogue(data)
    replies = {"test": out / "replies" / "test", "written": out / "replies" / "written"}
    responder = Responder(loaded, style_from="label")  # one Responder: its programs compile once for both answers
    responder(test_file, conversation=test_id, media_root=data, out=replies["test"])
    responder(written, out=replies["written"], portrait=portrait)
    clock.end("answers", t0)

    for name, folder in replies.items():
        reply = json.loads((folder / "reply.json").read_text())
        seconds, frames = (reply.get("speech") or {}).get("seconds", 0), (reply.get("video") or {}).get("frames", 0)
        emit(f"[demo] {name}: {reply['emotion']} → \"{reply['response']}\"  ({folder}/reply.json, reply.wav "
             f"{seconds} s, reply.mp4 {frames} frames)")
    emit(f"[demo] done in {_clock(clock.elapsed())}: {out}/metrics.md, {out}/replies/*/reply.{{json,wav,mp4}}")
    return DemoResult(out=out, data=data, metrics=metrics, replies=replies, seconds=dict(clock.spent))


__all__ = ["CONFIG", "DemoError", "DemoResult", "EXPECTED_S", "PhaseClock", "WRITTEN_DIALOGUE", "demo_config",
           "demo_portrait", "ensure_data", "held_out_dialogue", "run_demo", "score"]
