"""`respond`: a trained Empatheia answers one dialogue turn — the Chain of Empathy, the reply, and the features its
voice and face are made from.

    from merg_jax import respond
    reply = respond("runs/empatheia_tiny", "dialogue.json", out="runs/reply")   # writes runs/reply/reply.json
    reply["emotion"], reply["response"], reply["chain_of_empathy"]

    merg-jax respond --checkpoint DIR --dialogue FILE.json [--turn N] [--conversation ID] [--media-root DIR]
                     [--speech-from content|text] [--face-from content|speech] [--style-from sd|label]
                     [--emotion E] [--portrait IMG] --out DIR

The dialogue is one conversation in the AvaMERG JSON schema (DESIGN §2), or a file holding a list of them (the
first is answered, or the one `conversation` names). The turn answered is `turn` (its `turn_id`), by default the
last; its `response` may be absent. Media are optional per utterance: `dia{conversation_id}utt{n}.wav` / `.mp4`
under `media_root` (default: the dialogue file's folder); a missing one makes that clip text only, and is reported.

`reply.json`:
    {"conversation_id", "turn_id",
     "chain_of_empathy": {"speaker_emotion", "event_scenario", "emotion_cause", "goal_to_response"},
     "emotion": the speaker's emotion as the model wrote it (the classifier's when the Chain of Empathy names none),
     "emotion7": that emotion among the 7 multimodal ones (else the classifier's 7-way one), "response": the reply,
     "listener_profile": {"age", "gender", "timbre", "ID"} (the voice and face it speaks with), "classifier": the Style
     Disentangler classifiers' labels, "coe_valid", "text": the raw generation, "missing_media": [the media files
     that were not found], "chosen_emotion7": `emotion`, when given,
     "speech": {"wav": "reply.wav", "seconds", "from": "content" | "text", "style"} (with a speech generator),
     "video": {"mp4": "reply.mp4", "seconds", "frames", "from": "content" | "speech", "portrait", "style"} (with a
     face generator)}
Each "style" is {"from": "S^s" | "S^v" | "label", "emotion7"}: the emotion the voice / face was rendered with
(for the Style Disentangler's styles, the emotion its classifier reads from the features they are made of).

`reply.wav` (written with `out`, when the model has a speech generator) is spoken as in the paper from the
Content Synchronizer's C^s in the Style Disentangler's style S^s (`speech_from="content"`), or from the reply's
text in style S^s (`speech_from="text"`); an empty C^s (a predicted length of 0) falls back to the text.

`reply.mp4` (with a face generator) is the listener's avatar — `portrait`, else `avatars/{ID}.png` of the listener
profile's ID under the media root or the training data root — driven as in the paper by the Content Synchronizer's
C^v in the Style Disentangler's style S^v (`face_from="content"`; C^v is stretched in time to the length of
reply.wav, so lips and voice end together), or by reply.wav itself through the face generator's audio content
encoder (`face_from="speech"`), with reply.wav muxed in.

`style_from="label"` renders voice and face instead in the generators' label style of the reply's 7-way emotion
(the one the model wrote, else its classifier's): what is written, heard and seen then agree by construction, the
product's choice when a model is too briefly trained for its S^s / S^v to carry the emotion. `emotion` (one of the
7, or of the 32 mapped to them) renders them in that emotion, whatever the model chose — a user's pick.

A `Responder` keeps the model and its compiled programs, so answering again compiles nothing. After each call,
`Responder.timings` holds that call's wall-clock seconds per stage: `read` (the dialogue and its media), `reply`
(the Chain of Empathy and the reply, C^s, C^v, S^s, S^v), `speech` (reply.wav), `video` (reply.mp4) and `total`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import time
from typing import Any

import numpy as np

from merg_jax.infer.bundle import LoadedModel, load_model
from merg_jax.labels import EMOTIONS_7
from merg_jax.reply_rendering import FACE_FROM, SPEECH_FROM, STYLE_FROM

log = logging.getLogger(__name__)


class RespondError(ValueError):
    """Bad input to respond: the message names the file and the field or flag."""


def _select(split, dialogue, conversation: str | None, turn: str | int | None):
    if not split.conversations:
        raise RespondError(f"{dialogue}: no conversation to answer")
    if conversation is None:
        conv = split.conversations[0]
    else:
        matches = [c for c in split.conversations if c.conversation_id == str(conversation)]
        if not matches:
            ids = [c.conversation_id for c in split.conversations][:10]
            raise RespondError(f"{dialogue}: --conversation {conversation}: no such conversation_id (the file has "
                               f"{ids})")
        conv = matches[0]
    if turn is None:
        return conv, conv.turns[-1]
    matches = [t for t in conv.turns if t.turn_id == str(turn)]
    if not matches:
        raise RespondError(f"{dialogue}: --turn {turn}: conversation {conv.conversation_id} has no turn with that "
                           f"turn_id (it has {[t.turn_id for t in conv.turns]})")
    return conv, matches[0]


def read_turn(dialogue: str | os.PathLike, *, turn: str | int | None = None, conversation: str | None = None,
              media_root: str | os.PathLike | None = None, check_media: str = "exists"):
    """(split, conversation, turn) to answer from a dialogue file; `RespondError` naming the file and the field or
    flag when there is none (no model is needed to find out)."""
    from merg_jax.data.avamerg import DataError, read_dialogue_file

    try:
        split = read_dialogue_file(dialogue, media_root=media_root, check_media=check_media)
    except DataError as e:
        raise RespondError(str(e)) from None
    conv, chosen = _select(split, dialogue, conversation, turn)
    if not chosen.history:
        raise RespondError(f"{dialogue}: conversation {conv.conversation_id} turn {chosen.turn_id}: field "
                           "'dialogue_history' is empty: there is nothing to answer")
    return split, conv, chosen


class Responder:
    """A loaded model ready to answer (see the module docstring)."""

    def __init__(self, loaded: LoadedModel, *, speech_from: str = "content", face_from: str = "content",
                 portrait: str | os.PathLike | None = None, style_from: str = "sd", emotion: str | None = None):
        from merg_jax.data.pipeline import PipelineSettings
        from merg_jax.eval.evaluate import eval_config
        from merg_jax.infer.reply import ReplyGenerator

        self.loaded = loaded
        config = eval_config(loaded.config, loaded.config.data.root)
        self.spec = dataclasses.replace(PipelineSettings.from_config(config).spec, prompt_only=True,
                                        missing_media="mask")
        if speech_from not in SPEECH_FROM:
            raise RespondError(f"--speech-from {speech_from!r}: expected one of {SPEECH_FROM}")
        self.speech_from = speech_from
        if face_from not in FACE_FROM:
            raise RespondError(f"--face-from {face_from!r}: expected one of {FACE_FROM}")
        self.face_from = face_from
        if style_from not in STYLE_FROM:
            raise RespondError(f"--style-from {style_from!r}: expected one of {STYLE_FROM}")
        self.style_from = style_from
        self.emotion = None if emotion is None else _emotion7(emotion)
        self.portrait = None
        if portrait is not None:
            from merg_jax.data.face_corpus import read_image

            self.portrait = read_image(portrait)  # a bad --portrait is refused before anything is generated
        self.animator = None
        if loaded.model.face is not None:
            from merg_jax.infer.face import Animator

            self.animator = Animator(loaded.model.face)
        self.synthesizer = None
        if loaded.model.speech is not None:
            from merg_jax.infer.speech import Synthesizer

            self.synthesizer = Synthesizer(loaded.model.speech)
        g = loaded.config.generate
        self.timings: dict[str, float] = {}
        self.generator = ReplyGenerator(loaded.model, loaded.tokenizer, max_new_tokens=int(g.max_new_tokens),
                                        temperature=float(g.temperature), top_k=int(g.top_k), top_p=float(g.top_p),
                                        seed=int(g.get("seed", 0)))

    def __call__(self, dialogue: str | os.PathLike, *, turn: str | int | None = None, conversation: str | None = None,
                 media_root: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                 portrait: str | os.PathLike | np.ndarray | None = None, emotion: str | None = None) -> dict[str, Any]:
        """Answers one turn (module docstring); `portrait` and `emotion` override the Responder's for this call."""
        from merg_jax.data.avamerg import DIALOGUE_MEDIA_TEMPLATES
        from merg_jax.data.pipeline_features import BadSample, make_example
        from merg_jax.data.pipeline_records import turn_record

        t0 = time.perf_counter()
        clock = {}
        chosen_emotion = self.emotion if emotion is None else _emotion7(emotion)
        if isinstance(portrait, (str, os.PathLike)):
            from merg_jax.data.face_corpus import read_image

            portrait = read_image(portrait)
        portrait = self.portrait if portrait is None else portrait
        split, conv, chosen = read_turn(dialogue, turn=turn, conversation=conversation, media_root=media_root)
        missing = [str(split.root / DIALOGUE_MEDIA_TEMPLATES[kind].format(conversation_id=conv.conversation_id,
                                                                           n=u.number))
                   for u in chosen.history for kind in ("audio", "video") if getattr(u, kind) is None]
        for path in missing:
            log.warning("respond: %s is missing or unreadable: that clip is text only", path)
        record = turn_record(chosen, split.root, 0)
        try:
            row = make_example(record, self.loaded.tokenizer, self.spec, str(split.root))
        except BadSample as e:
            raise RespondError(f"{e.path}: {e.message}") from None
        batch = {k: np.asarray(v)[None] for k, v in row.items()}
        clock["read"] = time.perf_counter()
        reply = self.generator(batch)[0]
        clock["reply"] = time.perf_counter()
        listener = chosen.listener_profile
        result = {
            "conversation_id": conv.conversation_id, "turn_id": chosen.turn_id,
            "chain_of_empathy": {"speaker_emotion": reply.fields["emotion"],
                                 "event_scenario": reply.fields["event_scenario"],
                                 "emotion_cause": reply.fields["emotion_cause"],
                                 "goal_to_response": reply.fields["goal_to_response"]},
            "emotion": emotion_of(reply), "emotion7": emotion7_of(reply),
            "response": reply.response,
            "listener_profile": {"age": listener.age, "gender": listener.gender, "timbre": listener.timbre,
                                 "ID": listener.avatar_id},
            "classifier": reply.classifier, "coe_valid": reply.valid, "text": reply.text, "missing_media": missing,
        }
        if chosen_emotion is not None:
            result["chosen_emotion7"] = chosen_emotion
        if out is not None:
            out = pathlib.Path(out)
            out.mkdir(parents=True, exist_ok=True)
            wave = None
            if self.synthesizer is not None:
                result["speech"], wave = self.speak(reply, out / "reply.wav", listener, chosen_emotion)
                clock["speech"] = time.perf_counter()
            if self.animator is not None:
                result["video"] = self.face_video(reply, out, listener, wave, split.root, chosen_emotion,
                                                  portrait)
                clock["video"] = time.perf_counter()
            tmp = out / ".reply.json.tmp"
            tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            os.replace(tmp, out / "reply.json")
        previous = t0
        self.timings = {}
        for stage, at in clock.items():
            self.timings[stage], previous = at - previous, at
        self.timings["total"] = time.perf_counter() - t0
        return result


    def speak(self, reply, path: pathlib.Path, listener, emotion: str | None = None
              ) -> tuple[dict[str, Any], np.ndarray | None]:
        """Writes `reply`'s speech to `path` (`listener`: the profile whose label style stands in when the Style
        Disentangler's S^s does not fit this generator; `emotion`: a chosen 7-way emotion to speak in); returns
        (reply.json's "speech" entry, the wave)."""
        from merg_jax.infer.speech import write_wav

        synth = self.synthesizer
        source = self.speech_from
        if source == "content" and reply.content_speech.shape[0] == 0:
            log.warning("respond: the Content Synchronizer predicted an empty C^s: speaking the reply's text")
            source = "text"
        if source == "text" and not reply.response.strip():
            return {"wav": None, "seconds": 0.0, "from": None, "note": "no reply text to speak"}, None
        label = self._label(reply, emotion)
        style, used = reply.style_speech, {"from": "S^s", "emotion7": reply.classifier["emotion7"]}
        # a label was asked for, or the SD was not trained against this generator
        if label is not None or style.shape[-1] != synth.cfg.style_dim:
            used = {"from": "label", "emotion7": label or emotion7_of(reply)}
            style = synth.style_from_label(used["emotion7"], listener.gender, listener.age, listener.timbre)
        if source == "content" and reply.content_speech.shape[-1] != synth.cfg.content_dim:
            source = "text"
        if source == "content":
            wave = synth.speak_content(reply.content_speech, style)
        else:
            wave = synth.speak(reply.response, style)
        write_wav(path, wave, synth.sample_rate)
        return {"wav": path.name, "seconds": round(wave.size / synth.sample_rate, 3), "from": source,
                "style": used}, wave

    def _label(self, reply, emotion: str | None) -> str | None:
        """The 7-way emotion the media are rendered in by label, or None for the Style Disentangler's styles."""
        if emotion is not None:
            return emotion
        if self.style_from == "label":
            return emotion7_of(reply)
        return None

    def _listener_portrait(self, listener, media_root: pathlib.Path, portrait: np.ndarray | None
                           ) -> tuple[np.ndarray | None, str | None]:
        from merg_jax.data.face_corpus import portrait_path, read_image

        if portrait is not None:
            return portrait, "--portrait"
        for root in (media_root, pathlib.Path(str(self.loaded.config.data.root))):
            path = portrait_path(root, listener.avatar_id)
            if path is not None:
                return read_image(path), str(path)
        return None, None

    def face_video(self, reply, out: pathlib.Path, listener, wave: np.ndarray | None, media_root: pathlib.Path,
                   emotion: str | None = None, portrait: np.ndarray | None = None) -> dict[str, Any]:
        """Writes reply.mp4 (see the module docstring; `emotion`: a chosen 7-way emotion, `portrait`: the avatar,
        else the listener's); returns reply.json's "video" entry."""
        from merg_jax.data.mp4_writer import write_mp4

        anim = self.animator
        portrait, where = self._listener_portrait(listener, media_root, portrait)
        if portrait is None:
            return {"mp4": None, "note": f"no portrait of avatar ID {listener.avatar_id} (avatars/"
                                         f"{listener.avatar_id}.png under the media root): give --portrait"}
        sr = self.synthesizer.sample_rate if self.synthesizer is not None else anim.cfg.sample_rate
        frames_for_wave = None if wave is None else max(1, int(round(wave.size / sr * anim.fps)))
        source = self.face_from
        content = reply.content_video
        if source == "content" and (content.shape[0] == 0 or content.shape[-1] != anim.cfg.content_dim):
            source = "speech"
        if source == "speech" and wave is None:
            return {"mp4": None, "note": "no reply speech and no usable C^v: nothing drives the face"}
        if source == "speech":
            content = anim.content_from_speech(wave, sr)
        elif frames_for_wave is not None:
            content = stretch(content, frames_for_wave)
        label = self._label(reply, emotion)
        style, used = reply.style_video, {"from": "S^v", "emotion7": reply.classifier["emotion7"]}
        if label is not None or style.shape[-1] != anim.cfg.style_dim:
            used = {"from": "label", "emotion7": label or emotion7_of(reply)}
            style = anim.style_from_label(used["emotion7"])
        frames = anim.animate(portrait, content, style)
        path = out / "reply.mp4"
        if wave is None:
            write_mp4(path, frames, int(round(anim.fps)))
        else:
            write_mp4(path, frames, int(round(anim.fps)), audio=out / "reply.wav")
        return {"mp4": path.name, "seconds": round(len(frames) / anim.fps, 3), "frames": int(len(frames)),
                "from": source, "portrait": where, "style": used}


def _emotion7(emotion: str) -> str:
    from merg_jax.infer.reply import emotion_labels

    e7 = emotion_labels(emotion)[0]
    if e7 is None:
        raise RespondError(f"--emotion {emotion!r}: expected one of the 7 emotions {list(EMOTIONS_7)} (or one of the "
                           "32 that map to them)")
    return e7


def emotion_of(reply) -> str:
    """The reply's emotion as reply.json gives it: the Chain of Empathy's, else the classifier's 32-way one."""
    return reply.emotion32 or reply.emotion7 or reply.classifier["emotion32"]


def emotion7_of(reply) -> str:
    """`emotion_of(reply)` among the 7 multimodal emotions; the classifier's 7-way label when it has no
    counterpart there (an ED label such as "terrified")."""
    from merg_jax.infer.reply import emotion_labels

    return emotion_labels(emotion_of(reply))[0] or reply.classifier["emotion7"]


def stretch(x: np.ndarray, n: int) -> np.ndarray:
    """A sequence [T, D] resampled to [n, D] by linear interpolation in time (ends kept)."""
    x = np.asarray(x, np.float32)
    if len(x) == n:
        return x
    pos = np.linspace(0.0, len(x) - 1, n)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, len(x) - 1)
    w = (pos - lo)[:, None]
    return (1 - w) * x[lo] + w * x[hi]


def respond(checkpoint: str | os.PathLike | LoadedModel, dialogue: str | os.PathLike, *,
            turn: str | int | None = None, conversation: str | None = None,
            media_root: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
            speech_from: str = "content", face_from: str = "content", portrait: str | os.PathLike | None = None,
            style_from: str = "sd", emotion: str | None = None) -> dict[str, Any]:
    """Answers one turn (see the module docstring); `checkpoint`: a training output dir, a bundle or a
    `LoadedModel`. Returns reply.json's content (and writes it, reply.wav and reply.mp4 into `out` when given)."""
    loaded = checkpoint if isinstance(checkpoint, LoadedModel) else load_model(checkpoint)
    responder = Responder(loaded, speech_from=speech_from, face_from=face_from, portrait=portrait,
                          style_from=style_from, emotion=emotion)
    return responder(dialogue, turn=turn, conversation=conversation, media_root=media_root, out=out)


__all__ = ["FACE_FROM", "STYLE_FROM", "RespondError", "Responder", "emotion7_of", "emotion_of", "read_turn", "respond",
           "stretch"]
