"""`merg-jax serve` in a real browser — Debian's headless Chromium driven by Playwright's Python API (nothing is
downloaded) — and the conversation behind the page: history across turns, bad uploads refused with a message."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import socket

import imageio.v2 as imageio
import numpy as np
import pytest
import soundfile as sf

from merg_jax.app.conversation import MAX_SECONDS, Conversation, UploadError
from merg_jax.infer.bundle import load_model
from merg_jax.infer.respond import Responder

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9']+", text)


@pytest.mark.slow
def test_the_page_answers_in_a_real_browser(trained_run, tmp_path):
    from playwright.sync_api import sync_playwright

    from merg_jax.app.serve import build_app, launch

    assert CHROMIUM, "the browser test needs Debian's chromium: apt-get install chromium"
    out, _ = trained_run
    work = tmp_path / "serve"
    app = build_app(load_model(out), work)
    port = _free_port()
    launch(app, work, "127.0.0.1", port, block=False)
    long_wav = tmp_path / "long.wav"
    sf.write(long_wav, np.zeros(int(16000 * (MAX_SECONDS + 5)), np.float32), 16000)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="load")
            page.wait_for_selector("#message textarea", timeout=60_000)

            def send(text: str, turn: int):
                page.locator("#message textarea").fill(text)
                page.locator("#send").click()
                page.wait_for_function(f"document.querySelector('#status')?.innerText.includes('turn {turn}:')",
                                       timeout=300_000)

            send("I failed my driving test this morning and I feel awful.", 1)
            session = next(d for d in work.iterdir() if d.is_dir() and d.name != "astronaut")
            reply = json.loads((session / "turn000" / "reply.json").read_text())
            chat = page.locator("#chat").inner_text()
            assert f"({reply['emotion']})" in chat and " ".join(_words(reply["response"])) in " ".join(_words(chat))
            assert reply["video"]["portrait"] == "--portrait"  # the astronaut, the page's default avatar

            # the page's video element loads the reply's mp4; the files behind the players decode
            page.wait_for_function("document.querySelector('#reply_video video')?.readyState >= 1", timeout=60_000)
            seconds = page.evaluate("document.querySelector('#reply_video video').duration")
            mp4 = page.request.get(page.locator("#reply_video video").get_attribute("src")).body()
            (tmp_path / "got.mp4").write_bytes(mp4)
            with imageio.get_reader(str(tmp_path / "got.mp4"), format="FFMPEG") as r:
                frames = [f for f in r]
            assert len(frames) == reply["video"]["frames"] and seconds == pytest.approx(len(frames) / 25, abs=0.1)
            wav = page.request.get(page.locator("#reply_audio a[download]").get_attribute("href")).body()
            (tmp_path / "got.wav").write_bytes(wav)
            wave, sr = sf.read(str(tmp_path / "got.wav"))
            assert wave.size / sr == pytest.approx(reply["speech"]["seconds"], abs=1e-3)

            # a second turn carries the first in its history
            send("And then my car broke down on the way home.", 2)
            chat = page.locator("#chat").inner_text()
            assert "driving test" in chat and "car broke down" in chat
            history = json.loads((session / "turn001" / "conversation.json").read_text())["turns"][0]
            assert [u["role"] for u in history["dialogue_history"]] == ["speaker", "listener", "speaker"]
            assert history["dialogue_history"][1]["utterance"] == reply["response"]

            # a recording that is too long: a message in the page, and the conversation is unchanged
            page.locator("#audio_in input[type=file]").set_input_files(str(long_wav))
            page.wait_for_timeout(1500)
            page.locator("#message textarea").fill("Are you there?")
            page.locator("#send").click()
            page.wait_for_function("document.querySelector('#status')?.innerText.includes('too long')",
                                   timeout=120_000)
            assert "is too long (at most 30 s)" in page.locator("#status").inner_text()
            assert not (session / "turn002" / "reply.json").exists()
            page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
            browser.close()
    finally:
        app.close()
    assert (tmp_path / "serve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_conversation_keeps_history_and_refuses_bad_uploads(trained_run, tmp_path):
    out, _ = trained_run
    chat = Conversation(Responder(load_model(out), style_from="label"), tmp_path / "c", conversation_id="t")
    (tmp_path / "not_an_image.png").write_text("hello")
    (tmp_path / "not_audio.wav").write_bytes(b"RIFF0000WAVEjunk")
    (tmp_path / "not_video.mp4").write_bytes(b"\x00" * 64)
    cases = [(dict(portrait=tmp_path / "not_an_image.png"), "not_an_image.png: not a readable image"),
             (dict(wav=tmp_path / "not_audio.wav"), "not_audio.wav: not an audio file"),
             (dict(mp4=tmp_path / "not_video.mp4"), "not_video.mp4: not a video that decodes"),
             (dict(emotion="bored"), "--emotion 'bored'")]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            chat.say("Hello there.", **kwargs)
    with pytest.raises(UploadError, match="type a message first"):
        chat.say("   ")
    assert chat.turns == [] and chat.history == []

    speech = tmp_path / "me.wav"
    sf.write(speech, 0.1 * np.sin(np.linspace(0, 2000, 16000 * 2)).astype(np.float32), 16000)
    first = chat.say("My dog died yesterday.", wav=speech, emotion="sad")
    assert (first.folder / "diatutt1.wav").is_file() and first.reply["missing_media"] == [
        str(first.folder / "diatutt1.mp4")]  # the recording was heard; no clip was given
    assert first.reply["speech"]["style"] == {"from": "label", "emotion7": "sad"}
    second = chat.say("I miss him.")
    turn = json.loads((second.folder / "conversation.json").read_text())["turns"][0]
    assert [u["utterance"] for u in turn["dialogue_history"]] == ["My dog died yesterday.",
                                                                  first.reply["response"], "I miss him."]
    assert second.reply["speech"]["style"]["emotion7"] == second.reply["emotion7"]  # the model's own emotion
    assert second.wav is not None and second.mp4 is not None and len(chat.turns) == 2
