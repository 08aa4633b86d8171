"""A conversation with a trained Empatheia, turn by turn: what `merg-jax serve`'s page runs, usable without a page.

    chat = Conversation(Responder(load_model("runs/demo")), workdir="runs/serve")
    turn = chat.say("I failed my driving test.", wav="me.wav", mp4=None, portrait="me.png", emotion=None)
    turn.reply["response"], turn.wav, turn.mp4          # reply.json's content, reply.wav, reply.mp4
    chat.say("And my car broke down too.")              # the history keeps both sides

Every turn becomes an AvaMERG dialogue (`conversation.json` in the turn's folder, DESIGN §2): the user is the
speaker, the model the listener, their earlier utterances the history, and the user's optional recording and clip
that utterance's `dia{id}utt{n}.wav` / `.mp4`. Uploads are checked first (`UploadError`, a message for the page, and
the conversation is left as it was): an image PIL cannot read, audio soundfile cannot read or longer than
`MAX_SECONDS`, a video that does not decode or is longer than `MAX_SECONDS`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
from typing import Any

import numpy as np

MAX_SECONDS = 30.0
MAX_CHARS = 1000

SPEAKER = {"age": "young", "gender": "female", "timbre": "mid", "ID": 0}
LISTENER = {"age": "middle-aged", "gender": "male", "timbre": "low", "ID": 40}


class UploadError(ValueError):
    """An upload or a message the page refuses (the message says which and why)."""


@dataclasses.dataclass
class Turn:
    user: str
    reply: dict[str, Any]  # reply.json's content
    folder: pathlib.Path
    wav: pathlib.Path | None
    mp4: pathlib.Path | None


def check_audio(path: str | os.PathLike) -> float:
    """Seconds of a readable, non-empty recording no longer than MAX_SECONDS; `UploadError` otherwise."""
    import soundfile as sf

    name = pathlib.Path(path).name
    try:
        info = sf.info(str(path))
    except Exception as e:  # noqa: BLE001 - whatever libsndfile says, the page shows it
        raise UploadError(f"{name}: not an audio file soundfile can read ({type(e).__name__})") from None
    seconds = info.frames / max(info.samplerate, 1)
    if info.frames == 0:
        raise UploadError(f"{name}: the recording is empty")
    if seconds > MAX_SECONDS:
        raise UploadError(f"{name}: {seconds:.1f} s is too long (at most {MAX_SECONDS:.0f} s)")
    return seconds


def check_video(path: str | os.PathLike) -> float:
    """Seconds of a decodable video no longer than MAX_SECONDS; `UploadError` otherwise."""
    import imageio.v2 as imageio

    name = pathlib.Path(path).name
    try:
        with imageio.get_reader(str(path), format="FFMPEG") as reader:
            meta = reader.get_meta_data()
            reader.get_data(0)
    except Exception as e:  # noqa: BLE001
        raise UploadError(f"{name}: not a video that decodes ({type(e).__name__})") from None
    seconds = float(meta.get("duration") or 0.0)
    if seconds > MAX_SECONDS:
        raise UploadError(f"{name}: {seconds:.1f} s is too long (at most {MAX_SECONDS:.0f} s)")
    return seconds


def check_portrait(path: str | os.PathLike) -> np.ndarray:
    """The portrait as uint8 RGB; `UploadError` when it is not an image."""
    from merg_jax.data.face_corpus import read_image

    try:
        return read_image(path)
    except ValueError as e:
        raise UploadError(f"{pathlib.Path(path).name}: {str(e).split(': ', 1)[-1]}") from None


class Conversation:
    """One user's conversation (see the module docstring); turns are answered one at a time."""

    def __init__(self, responder, workdir: str | os.PathLike, conversation_id: str = "web"):
        self.responder = responder
        self.workdir = pathlib.Path(workdir)
        self.conversation_id = conversation_id
        self.history: list[dict[str, str]] = []  # {"role": "speaker" | "listener", "utterance"}
        self.turns: list[Turn] = []

    def dialogue(self, text: str) -> dict[str, Any]:
        """The AvaMERG conversation whose last turn is the user's `text` after the history."""
        utterances = [*self.history, {"role": "speaker", "utterance": text}]
        return {"conversation_id": self.conversation_id, "speaker_profile": SPEAKER, "listener_profile": LISTENER,
                "topic": "Open conversation",
                "turns": [{"turn_id": str(len(self.turns)), "dialogue_history": [
                    {"index": i, **u} for i, u in enumerate(utterances)]}]}

    def say(self, text: str, *, wav: str | os.PathLike | None = None, mp4: str | os.PathLike | None = None,
            portrait: str | os.PathLike | None = None, emotion: str | None = None) -> Turn:
        text = (text or "").strip()
        if not text:
            raise UploadError("type a message first")
        if len(text) > MAX_CHARS:
            raise UploadError(f"the message has {len(text)} characters; at most {MAX_CHARS}")
        image = check_portrait(portrait) if portrait else None
        if wav:
            check_audio(wav)
        if mp4:
            check_video(mp4)
        folder = self.workdir / f"turn{len(self.turns):03d}"
        folder.mkdir(parents=True, exist_ok=True)
        n = len(self.history) + 1  # the user's utterance number (1-based) names its media
        for src, ext in ((wav, "wav"), (mp4, "mp4")):
            if src:
                shutil.copyfile(src, folder / f"dia{self.conversation_id}utt{n}.{ext}")
        path = folder / "conversation.json"
        path.write_text(json.dumps(self.dialogue(text), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        reply = self.responder(path, media_root=folder, out=folder, portrait=image, emotion=emotion or None)
        self.history += [{"role": "speaker", "utterance": text},
                         {"role": "listener", "utterance": reply["response"] or ""}]
        wav_out, mp4_out = folder / "reply.wav", folder / "reply.mp4"
        turn = Turn(user=text, reply=reply, folder=folder, wav=wav_out if wav_out.is_file() else None,
                    mp4=mp4_out if mp4_out.is_file() else None)
        self.turns.append(turn)
        return turn


__all__ = ["Conversation", "LISTENER", "MAX_CHARS", "MAX_SECONDS", "SPEAKER", "Turn", "UploadError", "check_audio",
           "check_portrait", "check_video"]
