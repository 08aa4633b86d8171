"""AvaMERG-mini (`merg-jax make-data`): the dataset reads back, is deterministic, its media agree with each other,
its speech is real speech and its dialogues are varied. References are independent: the stdlib `wave` module
and imageio-ffmpeg for media, librosa for pitch and LPC formants, a naive Dist-n below."""

from __future__ import annotations

import json
import random
import re
import wave
from pathlib import Path

import imageio_ffmpeg
import librosa
import numpy as np
import pytest
import soundfile as sf
from scipy import signal
from scipy.stats import spearmanr

from merg_jax.data import avamerg, labels
from merg_jax.data.mini import cli, dialogues, neutral_templates, speech, templates
from merg_jax.data.mini.generate import SPLITS, Config, make_dataset, split_counts

ESPEAK = speech.espeak_path() is not None
needs_espeak = pytest.mark.skipif(not ESPEAK, reason="espeak-ng is not installed")
ARGS = ["--dialogues", "6", "--seed", "11", "--size", "64", "--splits", "0.5,0.25,0.25", "--quiet"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """6 conversations through the command line, one worker."""
    root = tmp_path_factory.mktemp("mini") / "data"
    assert cli.main(["--out", str(root), "--workers", "1", *ARGS]) == 0
    return root


def _wav(path: Path) -> tuple[np.ndarray, int]:
    """PCM16 mono via the stdlib, independent of soundfile."""
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2), path
        return np.frombuffer(w.readframes(w.getnframes()), "<i2"), w.getframerate()


def _frames(path: Path) -> np.ndarray:
    gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(gen)
    w, h = meta["size"]
    frames = np.stack([np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in gen])
    gen.close()
    return frames


def _conversations(root: Path) -> dict[str, list[dict]]:
    return {s: json.loads((root / f"{s}.json").read_text(encoding="utf-8")) for s in SPLITS}


def _clips(root: Path):
    """(split, conversation id, n, wav, mp4, side-car) of every utterance, from the JSON."""
    for split, convs in _conversations(root).items():
        for c in convs:
            for n in range(1, 2 * len(c["turns"]) + 1):
                stem = f"dia{c['conversation_id']}utt{n}"
                yield (split, c["conversation_id"], n, root / split / "audio" / f"{stem}.wav",
                       root / split / "video" / f"{stem}.mp4", root / split / "video" / f"{stem}.json")


# ---------------------------------------------------------------------------------------------------- the dataset
def test_reads_back_with_zero_problems(dataset):
    counts = split_counts(6, (0.5, 0.25, 0.25))
    for split, count in zip(SPLITS, counts):
        data = avamerg.read_split(dataset, split, check_media="decode")
        assert data.problems == (), data.problems
        assert len(data.conversations) == count
        for conv in data.conversations:
            for i, turn in enumerate(conv.turns):
                assert turn.turn_id == str(i)
                assert [u.role for u in turn.history] == ["speaker", "listener"] * i + ["speaker"]
                assert turn.response.role == "listener" and turn.response.number == 2 * i + 2
                assert turn.response.audio is not None and turn.response.video is not None
            assert 2 <= len(conv.turns) <= 4
    ids = [c["conversation_id"] for convs in _conversations(dataset).values() for c in convs]
    assert ids == [f"{i:05d}" for i in range(1, 7)]
    assert len(list((dataset / "avatars").glob("*.png"))) == labels.NUM_AVATARS


def test_labels_within_sets(dataset):
    for convs in _conversations(dataset).values():
        for c in convs:
            assert c["topic"] in labels.TOPICS
            for key in ("speaker_profile", "listener_profile"):
                p = c[key]
                assert p["age"] in labels.AGES and p["gender"] in labels.GENDERS and p["timbre"] in labels.TIMBRES
                assert 0 <= p["ID"] < labels.NUM_AVATARS
                assert (p["age"], p["gender"], p["timbre"]) == labels.avatar_profile(p["ID"])
            assert c["speaker_profile"]["ID"] != c["listener_profile"]["ID"]
            for t in c["turns"]:
                coe = t["chain_of_empathy"]
                assert coe["speaker_emotion"] in labels.EMOTIONS_32
                assert coe["speaker_emotion"] in labels.MULTIMODAL_TO_ED.values()
                assert all(isinstance(coe[k], str) and coe[k] for k in coe)
    for _, _, n, _, _, sidecar_path in _clips(dataset):
        sidecar = json.loads(sidecar_path.read_text())
        assert sidecar["emotion"] in labels.EMOTIONS_7
        assert sidecar["role"] == ("speaker" if n % 2 else "listener")


def test_wav_and_mp4_durations_match(dataset):
    clips = list(_clips(dataset))
    assert clips
    for _, _, _, wav_path, mp4_path, _ in clips:
        samples, sr = _wav(wav_path)
        assert sr == 16000 and samples.size > sr // 2
        frames = _frames(mp4_path)
        assert frames.shape[1:] == (64, 64, 3)
        assert abs(samples.size / sr - len(frames) / 25) <= 1 / 25, wav_path.name


def test_mouth_follows_speech_energy(dataset):
    """The side-car mouth opening against the RMS of each frame's own 40 ms of audio, computed here."""
    checked = 0
    for _, _, _, wav_path, _, sidecar_path in _clips(dataset):
        mouth = np.array(json.loads(sidecar_path.read_text())["mouth_open"])
        samples, sr = _wav(wav_path)
        x = samples.astype(np.float64) / 32768
        hop = sr // 25
        rms = np.array([np.sqrt(np.mean(x[k * hop:(k + 1) * hop] ** 2)) if k * hop < x.size else 0.0
                        for k in range(mouth.size)])
        if rms.max() < 1e-3:
            continue
        rho = spearmanr(mouth, rms)[0]
        assert rho >= 0.8, (wav_path.name, rho)
        checked += 1
    assert checked >= 10


def _naive_distinct(texts: list[str], n: int) -> float:
    grams = []
    for text in texts:
        tokens = re.findall(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]", text.lower())
        grams += [" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return 100.0 * len(set(grams)) / len(grams)


def test_dist_in_metadata_matches_json(dataset):
    meta = json.loads((dataset / "metadata.json").read_text())
    everything = []
    for split, convs in _conversations(dataset).items():
        replies = [t["response"] for c in convs for t in c["turns"]]
        everything += replies
        assert meta["splits"][split]["dist_1"] == pytest.approx(_naive_distinct(replies, 1), abs=1e-3)
        assert meta["splits"][split]["dist_2"] == pytest.approx(_naive_distinct(replies, 2), abs=1e-3)
    assert meta["total"]["dist_1"] == pytest.approx(_naive_distinct(everything, 1), abs=1e-3)
    assert meta["total"]["dist_2"] == pytest.approx(_naive_distinct(everything, 2), abs=1e-3)
    assert meta["seed"] == 11 and meta["failed"] == []
    assert meta["speech_engine"] == ("espeak" if ESPEAK else "formant")


@pytest.mark.slow
def test_same_seed_same_bytes_with_other_worker_count(dataset, tmp_path):
    again = tmp_path / "again"
    assert cli.main(["--out", str(again), "--workers", "2", *ARGS]) == 0
    for name in [f"{s}.json" for s in SPLITS] + ["metadata.json"]:
        assert (again / name).read_bytes() == (dataset / name).read_bytes(), name
    for (_, _, _, wav_a, mp4_a, side_a), (_, _, _, wav_b, mp4_b, side_b) in zip(_clips(dataset), _clips(again)):
        np.testing.assert_array_equal(_wav(wav_a)[0], _wav(wav_b)[0])
        np.testing.assert_array_equal(_frames(mp4_a), _frames(mp4_b))
        assert side_a.read_bytes() == side_b.read_bytes()


def test_different_seeds_differ():
    a = [dialogues.make_dialogue(1, i).to_json() for i in range(20)]
    b = [dialogues.make_dialogue(2, i).to_json() for i in range(20)]
    assert a == [dialogues.make_dialogue(1, i).to_json() for i in range(20)]
    assert sum(x != y for x, y in zip(a, b)) >= 19


def test_formant_engine_dataset_and_bad_output_folder(tmp_path):
    root = tmp_path / "formant"
    meta = make_dataset(Config(out=root, dialogues=1, seed=5, size=32, engine="formant", progress=False))
    assert meta["speech_engine"] == "formant" and meta["failed"] == []
    assert avamerg.read_split(root, "train", check_media="decode").problems == ()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="foreign"):
        make_dataset(Config(out=foreign, dialogues=1, progress=False))
    assert cli.main(["--out", str(tmp_path / "x"), "--dialogues", "0"]) == 2


# ------------------------------------------------------------------------------------------------------ dialogues
def test_dialogue_diversity_and_shape():
    corpus = [dialogues.make_dialogue(0, i) for i in range(200)]
    replies = [r for d in corpus for r in d.replies]
    assert dialogues.distinct_n(replies, 2) == pytest.approx(_naive_distinct(replies, 2))
    assert _naive_distinct(replies, 1) > 5
    assert _naive_distinct(replies, 2) > 20
    assert len(set(replies)) >= 0.97 * len(replies)
    assert {d.emotion for d in corpus} == set(labels.EMOTIONS_7)
    assert {d.topic for d in corpus} == set(labels.TOPICS)
    for d in corpus:
        assert [role for role, _ in d.utterances] == ["speaker", "listener"] * d.num_turns
        for text in [t for _, t in d.utterances] + [d.context, d.event_scenario, d.emotion_cause, *d.goals]:
            assert text[:1].isupper() and text[-1] in ".!?" and "{" not in text and "  " not in text, text
        bank = neutral_templates.SITUATIONS[d.topic] if d.neutral_text else templates.SITUATIONS[(d.topic, d.emotion)]
        assert any(d.speaker.age in s.ages for s in bank)
    assert 0 < sum(d.neutral_text for d in corpus) < len(corpus)  # the default share mixes both kinds


def test_every_template_renders_in_every_person():
    agreeing = re.compile(r"\{(am|was|have|do|don't|haven't|v:[a-z']+)\}")
    for key, situations in templates.SITUATIONS.items():
        assert key[0] in labels.TOPICS and key[1] in labels.EMOTIONS_7 and situations
        for s in situations:
            for field in (s.event, s.cause, s.need):
                # agreement tokens agree with {I}: they must follow it directly
                for m in agreeing.finditer(field):
                    assert field[:m.start()].rstrip().endswith(("{I}", "never", "always", "now", "finally")), (
                        key, field)
            for age in s.ages:
                for gender in labels.GENDERS:
                    slots = dialogues.Slots(random.Random(0), age)
                    for person in (1, 2, 3):
                        for template in (s.event, s.cause, s.subject, s.need, *s.details, *s.advice):
                            text = dialogues.render(template, random.Random(1), slots,
                                                    person=person, gender=gender)
                            assert "{" not in text and "}" not in text, (key, template)


# --------------------------------------------------------------------------------------------------------- speech
def _pitch(x: np.ndarray, sr: int = 16000) -> tuple[float, float]:
    f0, voiced, _ = librosa.pyin(x, fmin=50, fmax=500, sr=sr, frame_length=1024)
    return float(np.nanmedian(f0)), float(np.mean(voiced))


def _syllabic(x: np.ndarray, sr: int = 16000) -> tuple[float, float]:
    """(depth, share) of the energy envelope's modulation: depth = std / mean of the 100 Hz RMS envelope, share =
    its modulation power at syllable rates (1.5-10 Hz) over 0.5-50 Hz. Speech: deep, mostly syllabic."""
    env = np.sqrt(np.convolve(x.astype(np.float64) ** 2, np.ones(160) / 160, mode="same"))[::160]
    f, p = signal.welch(env - env.mean(), fs=100, nperseg=min(256, env.size))
    return float(env.std() / env.mean()), float(p[(f >= 1.5) & (f <= 10)].sum() / p[(f >= 0.5) & (f <= 50)].sum())


def _is_syllabic(x: np.ndarray) -> bool:
    depth, share = _syllabic(x)
    return depth > 0.5 and share > 0.4


def test_syllable_check_rejects_steady_sound_and_noise():
    assert not _is_syllabic(speech.formant_vowel("a", 120.0, 3.0))
    assert not _is_syllabic(np.random.default_rng(0).normal(0, 0.1, 48000))


SENTENCE = "I finally got the keys to my very first apartment yesterday, and I can't stop smiling."


@needs_espeak
def test_espeak_speech_is_real_speech():
    child = speech.voice_for("child", "female", "high", "happy", avatar_id=5)
    elder = speech.voice_for("elderly", "male", "low", "sad", avatar_id=42)
    x_child = speech.synthesize(SENTENCE, child, engine="espeak")
    x_elder = speech.synthesize(SENTENCE, elder, engine="espeak")
    for x in (x_child, x_elder):
        assert x.dtype == np.float32 and 1.5 < x.size / 16000 < 10 and 0.05 < np.abs(x).max() <= 1
        assert _is_syllabic(x)
    (f_child, v_child), (f_elder, v_elder) = _pitch(x_child), _pitch(x_elder)
    assert 60 <= f_elder < f_child <= 400
    assert f_child > 2 * f_elder
    assert v_child > 0.3 and v_elder > 0.3
    # sad speech is slower than happy speech from the same person
    sad = speech.synthesize(SENTENCE, speech.voice_for("young", "female", "mid", "sad", avatar_id=9), engine="espeak")
    happy = speech.synthesize(SENTENCE, speech.voice_for("young", "female", "mid", "happy", avatar_id=9),
                              engine="espeak")
    assert sad.size > 1.15 * happy.size
    np.testing.assert_array_equal(x_child, speech.synthesize(SENTENCE, child, engine="espeak"))


def test_written_wav_is_16k_mono_pcm16(tmp_path):
    x = speech.synthesize("Hello there.", speech.voice_for("young", "male", "mid", "happy"), engine="formant")
    speech.write_wav(tmp_path / "a.wav", x)
    info = sf.info(str(tmp_path / "a.wav"))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    np.testing.assert_allclose(_wav(tmp_path / "a.wav")[0] / 32767, x, atol=1 / 32767)


def _lpc_formants(x: np.ndarray, sr: int = 16000, order: int = 12) -> list[float]:
    x = signal.lfilter([1, -0.97], [1], x.astype(np.float64))
    x = x[x.size // 4: 3 * x.size // 4] * np.hamming(x.size // 2)
    roots = [r for r in np.roots(librosa.lpc(x, order=order)) if r.imag > 0]
    found = [(np.angle(r) * sr / (2 * np.pi), -sr / np.pi * np.log(abs(r))) for r in roots]
    return sorted(f for f, bw in found if f > 150 and bw < 400)


@pytest.mark.parametrize("vowel", ["i", "a", "u", "e"])
def test_formant_fallback_vowel_formants(vowel):
    x = speech.formant_vowel(vowel, 110.0, 0.5)
    f0, voiced = _pitch(x)
    assert abs(f0 - 110) < 5 and voiced > 0.8
    found = _lpc_formants(x)
    for target in speech.VOWEL_FORMANTS[vowel][:2]:
        nearest = min(found, key=lambda f: abs(f - target))
        assert abs(nearest - target) < 0.1 * target, (vowel, target, found)


def test_formant_fallback_speaks_text():
    x_child = speech.synthesize(SENTENCE, speech.voice_for("child", "female", "high", "happy"), engine="formant")
    x_elder = speech.synthesize(SENTENCE, speech.voice_for("elderly", "male", "low", "sad"), engine="formant")
    (f_child, v_child), (f_elder, v_elder) = _pitch(x_child), _pitch(x_elder)
    assert 60 <= f_elder < f_child <= 400 and v_child > 0.3 and v_elder > 0.3
    assert _is_syllabic(x_child) and _is_syllabic(x_elder)
    np.testing.assert_array_equal(x_elder, speech.synthesize(
        SENTENCE, speech.voice_for("elderly", "male", "low", "sad"), engine="formant"))
