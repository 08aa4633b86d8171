"""`merg-jax serve`: a local web page (Gradio) to talk with a trained Empatheia — the avatar answers in text, voice
and video.

    merg-jax serve --checkpoint runs/demo [--port 7860] [--host 127.0.0.1] [--workdir runs/serve]
                   [--style-from label|sd]
    (needs the demo extra: pip install -e '.[demo]')

On the page: pick an avatar (the training data's avatars, or the astronaut) or upload a portrait; type a message,
optionally with a recorded wav or an mp4 clip of yourself saying it; choose the reply's emotion or leave it to the
model; send. Back come the Chain of Empathy, the reply text, the voice and the talking video, playing in the page.
The conversation keeps its history across turns (merg_jax/app/conversation.py); a bad upload (not an image, not
audio, too long) gets a message in the page and changes nothing.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import threading
import uuid
from typing import Any

from merg_jax.labels import EMOTIONS_7

PROG = "merg-jax serve"
MODEL_CHOOSES = "let the model choose"
UPLOADED = "the uploaded portrait"


def avatar_choices(loaded, workdir: pathlib.Path) -> dict[str, pathlib.Path]:
    """Name → portrait file: the astronaut (skimage) and every avatar of the training data."""
    from merg_jax.app.demo import demo_portrait

    workdir.mkdir(parents=True, exist_ok=True)
    out = {"astronaut": demo_portrait(workdir)}
    avatars = pathlib.Path(str(loaded.config.data.root)) / "avatars"
    if avatars.is_dir():
        for p in sorted(avatars.glob("*.png"), key=lambda p: (len(p.stem), p.stem)):
            out[f"avatar {p.stem}"] = p
    return out


class Sessions:
    """One `Conversation` per browser session (Gradio's state holds only its key: the model is never copied)."""

    def __init__(self, responder, workdir: pathlib.Path):
        self.responder, self.workdir = responder, workdir
        self._chats: dict[str, Any] = {}
        self.lock = threading.Lock()  # one answer at a time: the compiled programs are shared

    def get(self, key: str | None):
        from merg_jax.app.conversation import Conversation

        if key is None or key not in self._chats:
            key = uuid.uuid4().hex[:12]
            self._chats[key] = Conversation(self.responder, self.workdir / key, conversation_id=f"web{key}")
        return key, self._chats[key]


def chat_messages(chat) -> list[dict[str, str]]:
    """The conversation as the Chatbot shows it."""
    out = []
    for t in chat.turns:
        out.append({"role": "user", "content": t.user})
        out.append({"role": "assistant", "content": f"({t.reply['emotion']}) {t.reply['response']}"})
    return out


def build_app(loaded, workdir: str | pathlib.Path, style_from: str = "label"):
    """The page, as a `gr.Blocks` (not launched). `style_from`: as `merg-jax respond --style-from`; "label" (the
    default here) renders voice and face in the emotion the reply states."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no network at run time
    import gradio as gr

    from merg_jax.app.conversation import UploadError
    from merg_jax.infer.respond import Responder

    workdir = pathlib.Path(workdir)
    avatars = avatar_choices(loaded, workdir)
    sessions = Sessions(Responder(loaded, style_from=style_from), workdir)

    def answer(key, text, avatar, portrait, emotion, audio, video):
        key, chat = sessions.get(key)
        face = portrait if avatar == UPLOADED else str(avatars.get(avatar, avatars["astronaut"]))
        if avatar == UPLOADED and not portrait:
            return key, gr.update(), gr.update(), gr.update(), gr.update(), "⚠ upload a portrait first", gr.update()
        try:
            with sessions.lock:
                turn = chat.say(text, wav=audio, mp4=video, portrait=face,
                                emotion=None if emotion == MODEL_CHOOSES else emotion)
        except (UploadError, ValueError, OSError) as e:
            return key, gr.update(), gr.update(), gr.update(), gr.update(), f"⚠ {e}", gr.update()
        coe = {**turn.reply["chain_of_empathy"], "emotion": turn.reply["emotion"],
               "voice and face in": (turn.reply.get("video") or turn.reply.get("speech") or {}).get("style")}
        status = f"turn {len(chat.turns)}: answered in the emotion “{turn.reply['emotion']}”"
        return (key, chat_messages(chat), coe, str(turn.wav) if turn.wav else None,
                str(turn.mp4) if turn.mp4 else None, status, "")

    with gr.Blocks(title="merg_jax — Empatheia") as app:
        gr.Markdown("## merg_jax · Empatheia\nTell the avatar how you feel. It answers with a Chain of Empathy, a "
                    "reply, a voice and a talking face.")
        key = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                avatar = gr.Dropdown([*avatars, UPLOADED], value="astronaut", label="Avatar", elem_id="avatar")
                portrait = gr.Image(type="filepath", label="Or upload a portrait", elem_id="portrait")
                emotion = gr.Dropdown([MODEL_CHOOSES, *EMOTIONS_7], value=MODEL_CHOOSES, label="Reply's emotion",
                                      elem_id="emotion")
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Your voice (optional wav)",
                                 elem_id="audio_in")
                video = gr.Video(sources=["upload"], label="Your face (optional mp4)", elem_id="video_in")
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(label="Conversation", elem_id="chat")
                text = gr.Textbox(label="Message", placeholder="I failed my driving test today…", elem_id="message")
                send = gr.Button("Send", variant="primary", elem_id="send")
                status = gr.Markdown("", elem_id="status")
                coe = gr.JSON(label="Chain of Empathy", elem_id="coe")
                reply_audio = gr.Audio(label="Voice", type="filepath", interactive=False, elem_id="reply_audio")
                reply_video = gr.Video(label="Avatar", interactive=False, elem_id="reply_video", autoplay=True,
                                       height=320)
        outputs = [key, chatbot, coe, reply_audio, reply_video, status, text]
        inputs = [key, text, avatar, portrait, emotion, audio, video]
        send.click(answer, inputs, outputs)
        text.submit(answer, inputs, outputs)
    return app


def launch(app, workdir: str | pathlib.Path, host: str = "127.0.0.1", port: int = 7860, *, block: bool = True):
    """Serves the page; the replies written under `workdir` are the only files it may hand out. Nothing is fetched
    from the network: no analytics, and the theme uses the browser's own fonts (not a font CDN)."""
    import gradio as gr

    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    return app.launch(server_name=host, server_port=port, show_error=True, quiet=not block, theme=theme,
                      allowed_paths=[str(pathlib.Path(workdir).resolve())], prevent_thread_lock=not block)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="training output directory or bundle (e.g. runs/demo)")
    p.add_argument("--port", type=int, default=7860, help="port (%(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s: this machine only)")
    p.add_argument("--workdir", default="runs/serve", help="where each turn's files go (%(default)s)")
    p.add_argument("--style-from", default="label", choices=("label", "sd"),
                   help="voice and face in the reply's stated emotion (%(default)s) or in the Style Disentangler's "
                        "S^s, S^v (the paper's route; for well-trained models)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    from merg_jax.console import log, setup_logging, usage_error

    setup_logging()
    try:
        import gradio  # noqa: F401
    except ImportError:
        return usage_error(PROG, "Gradio is not installed: pip install -e '.[demo]'")
    try:
        from merg_jax.infer.bundle import load_model

        loaded = load_model(args.checkpoint)
    except (ValueError, FileNotFoundError, OSError) as e:
        return usage_error(PROG, e)
    app = build_app(loaded, args.workdir, style_from=args.style_from)
    log.info("serving %s on http://%s:%d", loaded.source, args.host, args.port)
    launch(app, args.workdir, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
