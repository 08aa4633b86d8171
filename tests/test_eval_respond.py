"""`merg-jax eval`, `merg-jax respond` and `merg-jax export` on a (briefly) trained tiny Empatheia: the metrics file,
the submission, Dist-n against an independent count, replies to a hand-written dialogue, one-line errors for
malformed input, and bundles that hold exactly the trained parameters."""

from __future__ import annotations

import json
import re

import av

import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
from flax import nnx

from merg_jax.cli import main
from merg_jax.data.avamerg import read_split
from merg_jax.eval.submission import validate_submission
from merg_jax.infer import generate
from merg_jax.infer.bundle import load_model
from merg_jax.infer.reply import emotion_labels, left_pad_prompts
from merg_jax.labels import EMOTIONS_7, EMOTIONS_32
from merg_jax.models import Llm
from tests.llm_testing import tiny_config

HAND_WRITTEN = {
    "conversation_id": "hand1",
    "speaker_profile": {"age": "young", "gender": "female", "timbre": "mid", "ID": 3},
    "listener_profile": {"age": "middle-aged", "gender": "male", "timbre": "low", "ID": 40},
    "topic": "Life Events",
    "turns": [{"turn_id": "0", "dialogue_history": [
        {"index": 0, "role": "speaker", "utterance": "I failed my driving test this morning and I feel awful."}]}],
}


def test_generation_from_embeddings_equals_generation_from_tokens():
    model = Llm(tiny_config(), rngs=nnx.Rngs(0))
    tokens = np.asarray([[0, 0, 5, 9, 3, 7], [4, 8, 2, 6, 1, 9]], np.int32)
    mask = np.asarray([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], np.int32)
    plain = generate(model, tokens, 8, prompt_mask=mask)
    emb = model.embed_tokens(jnp.asarray(tokens))
    via = generate(model, tokens, 8, prompt_mask=mask, prompt_embeddings=emb)
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(via))
    with pytest.raises(ValueError, match="prompt_embeddings has shape"):
        generate(model, tokens, 8, prompt_mask=mask, prompt_embeddings=emb[:, 1:])


def test_left_padding_and_emotion_labels():
    batch = {"tokens": np.asarray([[1, 2, 3, 0], [4, 0, 0, 0]]), "segment_ids": np.asarray([[1, 1, 1, 0], [1, 0, 0, 0]]),
             "media_kind": np.asarray([[0, 1, 0, 0], [0, 0, 0, 0]]), "media_clip": np.asarray([[-1, 0, -1, -1]] * 2)}
    left, n = left_pad_prompts(batch)
    assert left["tokens"].tolist() == [[0, 1, 2, 3], [0, 0, 0, 4]] and n.tolist() == [3, 1]
    assert left["mask"].tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]] and left["media_kind"][0].tolist() == [0, 0, 1, 0]
    assert emotion_labels(" Afraid ") == ("fear", "afraid") and emotion_labels("sad") == ("sad", "sad")
    assert emotion_labels("terrified") == (None, "terrified")  # an ED label outside the 7 multimodal ones
    assert emotion_labels("bored") == (None, None) and emotion_labels(None) == (None, None)


# ---------------------------------------------------------------------------------------------------------- eval


def _distinct(texts, n):
    """Dist-n counted here: the paper's regex tokens, n-grams within each reply, pooled."""
    grams = [tuple(t[i:i + n]) for text in texts for t in [re.findall(r"\w+|[^\w\s]", text.lower())]
             for i in range(len(t) - n + 1)]
    return 100.0 * len(set(grams)) / len(grams) if grams else 0.0


def test_eval_writes_metrics_a_table_and_a_valid_submission(trained_run, mini_root, tmp_path, capsys):
    out, _ = trained_run
    rc = main(["eval", "--checkpoint", str(out), "--data", str(mini_root), "--split", "test", "--out",
               str(tmp_path / "m.json"), "--submission", str(tmp_path / "sub"), "--with-ablation", "--quiet",
               "--speech", "4", "--video", "2", "--sync-steps", "20", "--emotion-steps", "20"])
    assert rc == 0
    table = capsys.readouterr().out
    assert "48.51" in table and "| Ours" in table
    metrics = json.loads((tmp_path / "m.json").read_text())
    turns = read_split(mini_root, "test", check_media="none").turns
    assert metrics["num_turns"] == len(turns)
    for key in ("emotion_acc", "emotion_acc_32", "cls_emotion_acc", "coe_valid", "dist1", "dist2", "bleu1", "bleu2",
                "bleu4", "rougeL", "emotion_acc_neutral_text", "ablation_audio_video"):
        assert key in metrics, key
    assert 0.0 <= metrics["coe_valid"] <= 1.0 and 0.0 <= metrics["cls_emotion_acc"] <= 1.0
    speech = metrics["speech"]  # the speech generator's figures beside their baselines (values: a 3-step model)
    assert speech["utterances"] == speech["pairs"] == 4 and speech["scored"] + speech["skipped"] == 4
    for key in ("mcd_db", "mcd_baseline_mean_training_mc", "duration_ratio", "wer_generated", "wer_reference",
                "real_time_factor", "emotion_acc_generated", "emotion_acc_real", "f0_by_gender", "f0_order_kept",
                "style_contrast"):
        assert key in speech, key
    assert speech["mcd_baseline_mean_training_mc"] > 0 and speech["real_time_factor"] > 0
    assert 0.0 <= speech["wer_reference"] and speech["mcd_keeps_c0"] is False
    rows = [json.loads(line) for line in (tmp_path / "m.predictions.jsonl").read_text().splitlines()]
    assert [r["sample_index"] for r in rows] == list(range(len(turns)))
    assert metrics["num_neutral_text_turns"] == sum(r["neutral_text"] for r in rows)
    validate_submission(tmp_path / "sub", media_dir=tmp_path / "sub")
    submission = json.loads((tmp_path / "sub" / "submission.json").read_text())
    responses = [t["response"] for c in submission for t in c["turns"]]
    assert len(responses) == len(turns)
    # Each reply's speech under the challenge's name (utterance 2t + 2), decodable 16 kHz audio.
    wavs = {p.name for p in (tmp_path / "sub").glob("*.wav")}
    assert wavs == {f"dia{c['conversation_id']}utt{2 * int(t['turn_id']) + 2}.wav" for c in submission
                    for t in c["turns"]}
    assert all(sf.read(str(tmp_path / "sub" / w))[0].size for w in wavs)
    # ... and its talking-face video with that speech muxed in: one length, within a frame
    mp4s = {p.name for p in (tmp_path / "sub").glob("*.mp4")}
    assert mp4s == {w[:-4] + ".mp4" for w in wavs}
    for name in sorted(mp4s)[:2]:
        with av.open(str(tmp_path / "sub" / name)) as c:
            d = {s.type: float(s.duration * s.time_base) for s in c.streams}
        seconds = sf.info(str(tmp_path / "sub" / (name[:-4] + ".wav"))).duration
        assert abs(d["video"] - seconds) <= 1 / 25 and abs(d["audio"] - d["video"]) <= 1 / 25
    video = metrics["video"]  # the face generator's figures beside their baselines (values: a 3-step model)
    assert video["clips"] == 2
    for key in ("renderer", "ssim", "ssim_mouth", "psnr", "mouth_vs_energy", "mouth_vs_track", "identity_ssim",
                "cpbd", "sync", "real_time_factor", "real_time_factor_256"):
        assert key in video, key
    assert video["ssim"]["still"] > 0 and video["mouth_vs_track"]["real"] > 0.5  # the pixel measure reads real lips
    from merg_jax.eval.video_eval import pick_clips

    speakers = [r for r in pick_clips(str(mini_root), "test", 2) if r["emotion7"] >= 0]  # listeners carry no label
    assert ("emotion" in video) == bool(speakers)
    if speakers:
        assert video["emotion"]["clips"] == len(speakers)
        assert {"label_driven", "reference_driven", "real_motion", "real", "still"} <= set(video["emotion"])
        assert (out / "judges" / "emotion" / "config.json").exists()
    assert (out / "judges" / "sync" / "config.json").exists()
    assert metrics["dist1"] == pytest.approx(_distinct(responses, 1), abs=1e-9)
    assert metrics["dist2"] == pytest.approx(_distinct(responses, 2), abs=1e-9)
    # The ablation blanks the clips: the model then sees the placeholders only, so (with this model) other words.
    assert metrics["ablation_audio_video"]["ablate"] == ["audio", "video"]
    assert main(["eval", "--checkpoint", str(out), "--data", str(mini_root), "--out", str(tmp_path / "x.json"),
                 "--ablate", "smell"]) == 2


# ---------------------------------------------------------------------------------------------------------- respond


def test_respond_answers_a_hand_written_dialogue(trained_run, tmp_path, capsys):
    import merg_jax

    out, _ = trained_run
    path = tmp_path / "dialogue.json"
    path.write_text(json.dumps(HAND_WRITTEN))
    assert main(["respond", "--checkpoint", str(out), "--dialogue", str(path), "--out", str(tmp_path / "r")]) == 0
    reply = json.loads((tmp_path / "r" / "reply.json").read_text())
    assert set(reply["chain_of_empathy"]) == {"speaker_emotion", "event_scenario", "emotion_cause",
                                              "goal_to_response"}
    assert reply["emotion"] in EMOTIONS_32 + EMOTIONS_7 and reply["emotion7"] in EMOTIONS_7
    assert reply["listener_profile"] == {"age": "middle-aged", "gender": "male", "timbre": "low", "ID": 40}
    assert isinstance(reply["response"], str) and reply["text"]
    assert sorted(reply["missing_media"]) == sorted(str(tmp_path / f"diahand1utt1.{e}") for e in ("wav", "mp4"))
    assert "text only" in capsys.readouterr().out
    # reply.wav: spoken from (C^s, S^s), as long as reply.json says, 16 kHz PCM that soundfile decodes.
    wave, sr = sf.read(str(tmp_path / "r" / "reply.wav"))
    assert reply["speech"]["wav"] == "reply.wav" and reply["speech"]["from"] in ("content", "text")
    assert sr == 16000 and wave.size / sr == pytest.approx(reply["speech"]["seconds"], abs=1e-3) and wave.size
    again = merg_jax.respond(str(out), path, out=tmp_path / "t", speech_from="text")  # greedy: the same answer
    assert again["text"] == reply["text"] and again["emotion"] == reply["emotion"]
    assert again["speech"]["from"] == "text" and sf.read(str(tmp_path / "t" / "reply.wav"))[0].size
    # reply.mp4: the listener's avatar (ID 40, from the training data's avatars), driven by (C^v, S^v), stretched to
    # reply.wav's length and carrying it
    assert reply["video"]["mp4"] == "reply.mp4" and reply["video"]["portrait"].endswith("avatars/40.png")
    with av.open(str(tmp_path / "r" / "reply.mp4")) as c:
        d = {s.type: float(s.duration * s.time_base) for s in c.streams}
        frames = sum(1 for _ in c.decode(video=0))
    assert frames == reply["video"]["frames"] and abs(d["video"] - reply["speech"]["seconds"]) <= 1 / 25
    assert abs(d["audio"] - d["video"]) <= 1 / 25
    by_speech = merg_jax.respond(str(out), path, out=tmp_path / "s", face_from="speech")
    assert by_speech["video"]["from"] == "speech" and by_speech["video"]["frames"] == reply["video"]["frames"]
    # the emotion voice and face were rendered with: the Style Disentangler's (as its classifier reads it), the
    # reply's own label (style_from="label"), or one the user chose
    assert reply["speech"]["style"] == {"from": "S^s", "emotion7": reply["classifier"]["emotion7"]}
    assert reply["video"]["style"] == {"from": "S^v", "emotion7": reply["classifier"]["emotion7"]}
    by_label = merg_jax.respond(str(out), path, out=tmp_path / "l", style_from="label", speech_from="text")
    assert by_label["speech"]["style"] == by_label["video"]["style"] == {"from": "label",
                                                                         "emotion7": reply["emotion7"]}
    chosen = merg_jax.respond(str(out), path, out=tmp_path / "happy", emotion="happy", speech_from="text")
    assert chosen["chosen_emotion7"] == "happy" and chosen["text"] == reply["text"]
    assert chosen["speech"]["style"] == chosen["video"]["style"] == {"from": "label", "emotion7": "happy"}
    from merg_jax.infer.speech import Synthesizer  # the chosen style is the one spoken: the synthesiser by hand

    synth = Synthesizer(load_model(out).model.speech)
    expect = synth.speak(chosen["response"], synth.style_from_label("happy", "male", "middle-aged", "low"))
    spoken = sf.read(str(tmp_path / "happy" / "reply.wav"))[0]
    np.testing.assert_allclose(spoken, np.clip(expect, -1, 1), atol=2e-3)  # 16-bit PCM
    with pytest.raises(ValueError, match="--emotion 'bored'"):
        merg_jax.respond(str(out), path, emotion="bored")


@pytest.mark.parametrize("content, flags, message", [
    ("{not json", [], "not valid JSON"),
    (json.dumps({**HAND_WRITTEN, "conversation_id": None}), [], "conversation_id"),
    (json.dumps({**HAND_WRITTEN, "turns": [{"turn_id": "0", "dialogue_history": "hello"}]}), [],
     "dialogue_history"),
    (json.dumps(HAND_WRITTEN), ["--turn", "7"], "--turn 7"),
    (json.dumps([HAND_WRITTEN]), ["--conversation", "nope"], "--conversation nope"),
    (json.dumps({**HAND_WRITTEN, "turns": [{"turn_id": "0", "dialogue_history": []}]}), [], "dialogue_history"),
])
def test_respond_rejects_malformed_input_in_one_line(trained_run, tmp_path, capsys, content, flags, message):
    out, _ = trained_run
    path = tmp_path / "bad.json"
    path.write_text(content)
    rc = main(["respond", "--checkpoint", str(out), "--dialogue", str(path), "--out", str(tmp_path / "r"), *flags])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert message in err and str(path) in err
    assert not (tmp_path / "r" / "reply.json").exists()


def test_respond_rejects_an_unreadable_portrait_before_answering(trained_run, tmp_path, capsys):
    out, _ = trained_run
    path = tmp_path / "dialogue.json"
    path.write_text(json.dumps(HAND_WRITTEN))
    (tmp_path / "face.png").write_text("not an image")
    rc = main(["respond", "--checkpoint", str(out), "--dialogue", str(path), "--portrait", str(tmp_path / "face.png"),
               "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "not a readable image" in err and "face.png" in err
    assert not (tmp_path / "r" / "reply.json").exists()


# ---------------------------------------------------------------------------------------------------------- export


def test_export_bundles_hold_the_trained_parameters(trained_run, tmp_path):
    out, _ = trained_run
    trained = load_model(out)
    want = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(trained.model))}
    for dtype in ("float32", "bfloat16"):
        bundle = tmp_path / dtype
        assert main(["export", "--checkpoint", str(out), "--out", str(bundle), "--dtype", dtype]) == 0
        assert not (bundle / "opt").exists() and (bundle / "params.safetensors").exists()
        loaded = load_model(bundle)
        got = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(loaded.model))}
        assert got.keys() == want.keys()
        for k in want:
            if dtype == "float32":
                np.testing.assert_array_equal(got[k], want[k], err_msg=str(k))
            else:  # bfloat16 keeps 8 bits of mantissa
                np.testing.assert_allclose(got[k], want[k], rtol=2 ** -7, atol=1e-30, err_msg=str(k))
    assert main(["export", "--checkpoint", str(out), "--out", str(tmp_path / "float32")]) == 2  # exists
    assert main(["export", "--checkpoint", str(tmp_path / "nowhere"), "--out", str(tmp_path / "b")]) == 2
