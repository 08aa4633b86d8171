"""AvaMERG-mini: writes a complete AvaMERG-format dataset (dialogues, speech, talking-avatar videos).

Layout under `root` (the contract every reader of the project uses):
  {split}.json                          list of conversations (DESIGN §2), splits train / valid / test
  {split}/audio/dia{id}utt{n}.wav       16 kHz mono PCM16, the n-th utterance of conversation id (n from 1)
  {split}/video/dia{id}utt{n}.mp4       H.264, `fps` frames per second, size x size, round(duration * fps) frames
  {split}/video/dia{id}utt{n}.json      side-car: per-frame face parameters drawn, plus who says what with which voice
  avatars/{ID}.png                      neutral portrait of each of the 65 identities
  metadata.json, README.txt             seed, counts, Dist-1/2 of the gold replies, engine, choices below

Who looks and sounds like what: an utterance is spoken and shown by whoever says it (speaker or listener profile:
voice from age/gender/timbre, face from the avatar ID). Speaker utterances carry the speaker's emotion at full
intensity. Listener replies carry an empathic expression (`LISTENER_EXPRESSION`): the speaker's emotion
mirrored — fear excepted, which the listener meets with concern ("sad"), since a comforter who looks frightened
reads wrong — and spoken at half intensity (`LISTENER_INTENSITY`), i.e. softened prosody.

Neutral text: a share of the conversations (`Config.neutral_text_share`, `--neutral-text-share`) has words that
carry no emotion (dialogues.py), so the emotion is only in the voices and faces above, which do not change. They
are marked "neutral_text": true in the JSON and listed per split in metadata.json ("neutral_text_conversations",
read back by `neutral_text_conversations`), so an evaluation can score them apart: that is where a model that
ignores audio and video falls to chance.

Determinism: conversation i depends only on (seed, i) — its text, voices, blinks and head motion are all seeded
from them — so the output is the same for any number of worker processes, and the JSON files are
byte-identical across runs. Every file is written atomically. A conversation whose media fail is skipped,
counted and reported, never fatal.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import subprocess
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
from tqdm import tqdm

from merg_jax.data import labels
from merg_jax.data.mini import dialogues, speech

GENERATOR = "avamerg-mini"
GENERATOR_VERSION = "1.1"  # 1.1: neutral-text conversations
SPLITS = ("train", "valid", "test")
LISTENER_EXPRESSION = {"sad": "sad", "happy": "happy", "angry": "angry", "surprised": "surprised", "fear": "sad",
                       "contempt": "contempt", "disgusted": "disgusted"}
LISTENER_INTENSITY = 0.5
AUDIO_TEMPLATE = "{split}/audio/dia{cid}utt{n}.wav"
VIDEO_TEMPLATE = "{split}/video/dia{cid}utt{n}.mp4"
SIDECAR_TEMPLATE = "{split}/video/dia{cid}utt{n}.json"


@dataclasses.dataclass(frozen=True)
class Config:
    """What `make_dataset` writes. splits: fractions for train/valid/test (normalised)."""

    out: Path
    dialogues: int
    seed: int = 0
    size: int = 96
    fps: int = 25
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1)
    workers: int = 1
    engine: str = "auto"  # speech: auto | espeak | formant
    progress: bool = True
    neutral_text_share: float = dialogues.NEUTRAL_TEXT_SHARE

    def __post_init__(self):
        if self.dialogues < 1:
            raise ValueError(f"--dialogues: {self.dialogues} must be at least 1")
        if self.size < 32 or self.size % 2:
            raise ValueError(f"--size: {self.size} must be an even number >= 32 (H.264 needs even sizes)")
        if not 1 <= self.fps <= 120:
            raise ValueError(f"--fps: {self.fps} must be in 1..120")
        if len(self.splits) != 3 or any(f < 0 for f in self.splits) or sum(self.splits) <= 0:
            raise ValueError(f"--splits: {self.splits} must be three non-negative fractions (train,valid,test)")
        if self.workers < 1:
            raise ValueError(f"--workers: {self.workers} must be at least 1")
        if self.engine not in speech.ENGINES:
            raise ValueError(f"--speech: {self.engine!r} must be one of {list(speech.ENGINES)}")
        if not 0.0 <= self.neutral_text_share <= 1.0:  # also rejects NaN
            raise ValueError(f"--neutral-text-share: {self.neutral_text_share} must be a fraction in [0, 1]")


def split_counts(n: int, fractions: tuple[float, ...]) -> tuple[int, ...]:
    """Conversations per split: largest-remainder rounding of n * fraction, summing to n."""
    total = float(sum(fractions))
    exact = [n * f / total for f in fractions]
    counts = [int(np.floor(x)) for x in exact]
    for i in sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))[: n - sum(counts)]:
        counts[i] += 1
    return tuple(counts)


def conversation_id(index: int, n: int) -> str:
    """Zero-padded id of conversation `index` (0-based): "00001" for the first."""
    return f"{index + 1:0{max(5, len(str(n)))}d}"


def derived_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, stable across processes and Python versions (no hash randomisation)."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


@dataclasses.dataclass(frozen=True)
class _Job:
    root: str
    split: str
    index: int
    cid: str
    seed: int
    size: int
    fps: int
    engine: str
    neutral_text_share: float


def _write_text(path: Path, text: str) -> None:
    """Atomic UTF-8 text write (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, obj, *, indent: int | None = 2) -> None:
    """Atomic, deterministic JSON (UTF-8, keys in insertion order, newline at the end)."""
    _write_text(path, json.dumps(obj, ensure_ascii=False, indent=indent) + "\n")


def _render_conversation(job: _Job) -> dict:
    """Worker: the conversation's JSON and all its media. Returns {"conversation", "seconds", "error"}."""
    from merg_jax.data.mini import avatar  # imported in the worker: numpy-only, cached per process

    root = Path(job.root)
    written: list[Path] = []
    try:
        dialogue = dialogues.make_dialogue(job.seed, job.index, job.cid, neutral_text_share=job.neutral_text_share)
        seconds = 0.0
        for k, (role, text) in enumerate(dialogue.utterances):
            n = k + 1
            profile = dialogue.speaker if role == "speaker" else dialogue.listener
            if role == "speaker":
                emotion, intensity = dialogue.emotion, 1.0
            else:
                emotion, intensity = LISTENER_EXPRESSION[dialogue.emotion], LISTENER_INTENSITY
            voice = speech.voice_for(profile.age, profile.gender, profile.timbre, emotion,
                                     avatar_id=profile.avatar_id, intensity=intensity)
            engine = speech.resolve_engine(job.engine)
            wave = speech.synthesize(text, voice, engine=engine)
            names = {"split": job.split, "cid": job.cid, "n": n}
            wav_path, mp4_path = root / AUDIO_TEMPLATE.format(**names), root / VIDEO_TEMPLATE.format(**names)
            sidecar_path = root / SIDECAR_TEMPLATE.format(**names)
            written += [wav_path, mp4_path, sidecar_path]
            speech.write_wav(wav_path, wave, speech.SAMPLE_RATE)
            duration = len(wave) / speech.SAMPLE_RATE
            seconds += duration
            num_frames = max(1, int(round(duration * job.fps)))
            mouth = avatar.mouth_envelope(wave, speech.SAMPLE_RATE, job.fps, num_frames)
            frames, sidecar = avatar.render_clip(profile.avatar_id, emotion, mouth, fps=job.fps, size=job.size,
                                                 seed=derived_seed(job.seed, job.index, n))
            avatar.write_mp4(mp4_path, frames, job.fps)
            sidecar.update({
                "conversation_id": job.cid, "utterance": n, "role": role, "text": text,
                "audio": wav_path.name, "audio_seconds": duration, "sample_rate": speech.SAMPLE_RATE,
                "speech": {"engine": engine, "intensity": intensity, **voice.to_json()},
            })
            _write_json(sidecar_path, sidecar, indent=None)
        return {"conversation": dialogue.to_json(), "seconds": seconds, "error": None,
                "replies": dialogue.replies, "emotion": dialogue.emotion, "neutral_text": dialogue.neutral_text}
    except Exception:  # one bad conversation must not end a long run: report it, leave no partial media
        for path in written:
            path.unlink(missing_ok=True)
        return {"conversation": None, "seconds": 0.0, "error": traceback.format_exc(limit=3)}


def _prepare_root(root: Path) -> None:
    """Creates `root`; clears a previous AvaMERG-mini output there; refuses a non-empty folder of anything else."""
    if root.exists() and any(root.iterdir()):
        meta = root / "metadata.json"
        try:
            ours = json.loads(meta.read_text()).get("generator") == GENERATOR
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise FileExistsError(f"--out {root}: folder is not empty and holds no AvaMERG-mini metadata.json; "
                                  "choose an empty or new folder")
        for name in (*SPLITS, "avatars"):
            shutil.rmtree(root / name, ignore_errors=True)
        for name in (*(f"{s}.json" for s in SPLITS), "metadata.json", "README.txt"):
            (root / name).unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)


def _espeak_version() -> str | None:
    exe = speech.espeak_path()
    if exe is None:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout
    return out.split("Data at")[0].strip() or None


def _write_portraits(root: Path, size: int) -> None:
    import imageio.v3 as iio

    from merg_jax.data.mini import avatar

    folder = root / "avatars"
    folder.mkdir(parents=True, exist_ok=True)
    for avatar_id in range(labels.NUM_AVATARS):
        path = folder / f"{avatar_id}.png"
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        try:
            iio.imwrite(tmp, avatar.render_portrait(avatar_id, size), extension=".png")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def text_stats(replies: list[str]) -> dict:
    """Dist-1/2 (x100) and exact-duplicate fraction of gold replies."""
    return {"replies": len(replies), "dist_1": round(dialogues.distinct_n(replies, 1), 4),
            "dist_2": round(dialogues.distinct_n(replies, 2), 4),
            "duplicate_replies": round(dialogues.duplicate_fraction(replies), 6)}


def make_dataset(config: Config) -> dict:
    """Writes the dataset; returns the metadata dict (also written to {out}/metadata.json)."""
    root = Path(config.out)
    _prepare_root(root)
    engine = speech.resolve_engine(config.engine)  # warns once here, in the parent, if espeak-ng is absent
    counts = split_counts(config.dialogues, config.splits)
    jobs, start = [], 0
    for split, count in zip(SPLITS, counts):
        jobs += [_Job(str(root), split, i, conversation_id(i, config.dialogues), config.seed, config.size,
                      config.fps, engine, config.neutral_text_share) for i in range(start, start + count)]
        start += count

    _write_portraits(root, config.size)
    results: list[dict] = []
    t0 = time.perf_counter()
    with tqdm(total=len(jobs), desc="make-data", unit="dialogue", disable=not config.progress) as bar:
        if config.workers == 1:
            for job in jobs:
                results.append(_render_conversation(job))
                bar.update(1)
        else:
            # spawn, not fork: the parent may hold JAX/XLA threads (tests, notebooks) that fork would copy broken.
            with multiprocessing.get_context("spawn").Pool(config.workers) as pool:
                for result in pool.imap(_render_conversation, jobs, chunksize=1):  # job order: deterministic
                    results.append(result)
                    bar.update(1)
    wall = time.perf_counter() - t0

    per_split: dict[str, list[dict]] = {s: [] for s in SPLITS}
    failed = []
    for job, result in zip(jobs, results):
        if result["error"] is not None:
            failed.append({"conversation_id": job.cid, "split": job.split, "error": result["error"]})
        else:
            per_split[job.split].append(result)
    stats = {}
    all_replies: list[str] = []
    for split in SPLITS:
        convs = [r["conversation"] for r in per_split[split]]
        _write_json(root / f"{split}.json", convs)
        replies = [reply for r in per_split[split] for reply in r["replies"]]
        all_replies += replies
        stats[split] = {
            "conversations": len(convs),
            "turns": sum(len(c["turns"]) for c in convs),
            "utterances": sum(2 * len(c["turns"]) for c in convs),
            "audio_seconds": round(sum(r["seconds"] for r in per_split[split]), 3),
            **text_stats(replies),
            "neutral_text_conversations": [r["conversation"]["conversation_id"] for r in per_split[split]
                                           if r["neutral_text"]],
        }
    emotions = {e: sum(r["emotion"] == e for rs in per_split.values() for r in rs) for e in labels.EMOTIONS_7}
    metadata = {
        "generator": GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "seed": config.seed,
        "dialogues_requested": config.dialogues,
        "fps": config.fps,
        "size": config.size,
        "sample_rate": speech.SAMPLE_RATE,
        "speech_engine": engine,
        "espeak_version": _espeak_version() if engine == "espeak" else None,
        "splits": stats,
        "total": text_stats(all_replies),
        "emotions": emotions,
        "listener_expression": LISTENER_EXPRESSION,
        "listener_speech_intensity": LISTENER_INTENSITY,
        "neutral_text_share": config.neutral_text_share,
        "dist_tokenizer": "lower-cased words (with contractions) and single punctuation marks; n-grams within "
                          "each reply; Dist-n = 100 * distinct / total",
        "failed": failed,
        "layout": {"audio": AUDIO_TEMPLATE.replace("{cid}", "{conversation_id}"),
                   "video": VIDEO_TEMPLATE.replace("{cid}", "{conversation_id}"),
                   "sidecar": SIDECAR_TEMPLATE.replace("{cid}", "{conversation_id}"), "portraits": "avatars/{ID}.png"},
    }
    _write_json(root / "metadata.json", metadata)
    _write_text(root / "README.txt", _readme(metadata))
    metadata["wall_seconds"] = wall  # not in the file: the file must not depend on the machine
    return metadata


def _readme(meta: dict) -> str:
    neutral = sum(len(s["neutral_text_conversations"]) for s in meta["splits"].values())
    lines = [
        "AvaMERG-mini: a synthetic dataset in the AvaMERG format (merg_jax make-data).",
        f"generator {meta['generator']} {meta['generator_version']}, seed {meta['seed']}, speech engine "
        f"{meta['speech_engine']}, video {meta['size']}x{meta['size']} at {meta['fps']} fps, audio "
        f"{meta['sample_rate']} Hz mono PCM16.",
        "",
        "{split}.json: conversations (conversation_id, speaker_profile, listener_profile, topic, turns with "
        "context, dialogue_history, response, chain_of_empathy).",
        f"Media: {meta['layout']['audio']}, {meta['layout']['video']} (+ .json side-car of per-frame face "
        "parameters), avatars/{ID}.png portraits. n counts the utterances of a conversation from 1.",
        "Each utterance is voiced and shown by whoever says it. Speaker utterances: the speaker's emotion. "
        "Listener replies: " + ", ".join(f"{k}->{v}" for k, v in meta["listener_expression"].items())
        + f" (speaker's emotion -> listener's expression), speech at intensity {meta['listener_speech_intensity']}.",
        f"Neutral text: a share of {meta['neutral_text_share']} of the conversations ({neutral} here) use words that "
        "carry no emotion (the same for every emotion), so their emotion is only in the voices and faces; they are "
        "marked \"neutral_text\": true and listed per split in metadata.json (neutral_text_conversations).",
        "",
    ]
    for split, s in meta["splits"].items():
        lines.append(f"{split}: {s['conversations']} conversations, {s['turns']} turns, {s['utterances']} "
                     f"utterances, {s['audio_seconds']:.0f} s of speech, Dist-1 {s['dist_1']:.2f}, "
                     f"Dist-2 {s['dist_2']:.2f}")
    return "\n".join(lines) + "\n"


def neutral_text_conversations(root: str | os.PathLike, split: str) -> set[str] | None:
    """Ids of the neutral-text conversations of `split` of the dataset at `root`, from its metadata.json.

    None when the dataset does not say (a real AvaMERG download, an AvaMERG-mini older than 1.1, a split it does
    not list): "unknown" must not read as "none of them".
    """
    try:
        meta = json.loads((Path(root) / "metadata.json").read_text(encoding="utf-8"))
        ids = meta["splits"][split]["neutral_text_conversations"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if meta.get("generator") != GENERATOR or not isinstance(ids, list):
        return None
    return {str(i) for i in ids}


__all__ = ["Config", "GENERATOR_VERSION", "LISTENER_EXPRESSION", "LISTENER_INTENSITY", "conversation_id",
           "derived_seed", "make_dataset", "neutral_text_conversations", "split_counts", "text_stats"]
