"""AvaMERG reader and `merg-jax inspect-data` on hand-written datasets in the published schema.

Every expected record and problem is spelled out from the JSON the test wrote (paths, kinds, numbers, texts);
path-safety tests put a decodable decoy file where an escaping path would land and check it is never used.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

import numpy as np
import pytest

from avamerg_fixtures import decode_frame_index, make_conversation, tone, write_dataset, write_mp4, write_wav
from merg_jax.data import media
from merg_jax.data.avamerg import (ChainOfEmpathy, DataError, Profile, Split, available_splits, read_split)
from merg_jax.data.inspect import main as inspect_main


# --------------------------------------------------------------------------------------- a tricky dataset


def _edge_case_dataset(root: pathlib.Path):
    """Two conversations in the published schema with the edge cases of real releases:

    "00001": string id with zero padding, CoE, unknown fields at every level; its utt3 mp4 is zero bytes, its
             utt4 wav is 44.1 kHz stereo PCM_24 (0.5 s) and its utt4 mp4 is 30 fps 320x240 (1.0 s).
    7:       numeric id, numeric turn ids, no CoE and no topic (like the test split); its utt2 wav is missing.
    """
    a = make_conversation("00001", extra={"release": "v1.1", "annotator": {"id": 3}})
    a["speaker_profile"]["voice_style"] = "calm"  # unknown profile field
    a["turns"][0]["emotion_intensity"] = 0.7  # unknown turn field
    a["turns"][1]["chain_of_empathy"]["confidence"] = 0.9  # unknown CoE field
    a["turns"][1]["dialogue_history"][2]["timestamp"] = "00:01"  # unknown history field
    b = make_conversation(7, coe=False, topic=None)
    for t, turn in enumerate(b["turns"]):
        turn["turn_id"] = t
    files = write_dataset(root, [a, b], split="train", missing=["train/audio/dia7utt2.wav"],
                          empty=["train/video/dia00001utt3.mp4"])
    write_wav(root / "train/audio/dia00001utt4.wav", 0.5, sr=44100, channels=2, subtype="PCM_24", freq=440.0)
    write_mp4(root / "train/video/dia00001utt4.mp4", 1.0, fps=30, size=(320, 240))
    return files


@pytest.fixture(scope="module")
def edge_root(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("edge")
    _edge_case_dataset(root)
    return root


def test_records_follow_the_json(edge_root):
    split = read_split(edge_root, "train")
    root = edge_root.resolve()
    assert isinstance(split, Split) and split.name == "train" and split.root == root
    assert split.json_path == root / "train.json"
    assert [c.conversation_id for c in split.conversations] == ["00001", "7"]
    a, b = split.conversations

    assert a.topic == "Work" and b.topic is None
    assert a.speaker_profile == Profile("young", "male", "high", 28)
    assert a.listener_profile == Profile("young", "female", "mid", 18)
    assert [t.turn_id for t in a.turns] == ["0", "1"] and [t.turn_id for t in b.turns] == ["0", "1"]
    assert len(split.turns) == 4 and split.turns[2] is b.turns[0]

    t1 = a.turns[1]  # history: utterances 1..3, response: utterance 4
    assert [u.number for u in t1.history] == [1, 2, 3]
    assert [u.role for u in t1.history] == ["speaker", "listener", "speaker"]
    assert [u.text for u in t1.history] == ["c00001 u1 speaker", "c00001 u2 listener", "c00001 u3 speaker"]
    assert (t1.response.number, t1.response.role, t1.response.text) == (4, "listener", "c00001 u4 listener")
    assert t1.context == "situation of 00001" and t1.topic == "Work"
    assert t1.speaker_profile == a.speaker_profile and t1.listener_profile == a.listener_profile
    assert t1.coe == ChainOfEmpathy("surprised", "event 00001/1", "cause 00001/1", "goal 00001/1")
    assert all(t.coe is None for t in b.turns)
    assert [u.number for u in a.utterances] == [1, 2, 3, 4]

    # Media: resolved from the default templates; None exactly where the file is missing or empty.
    audio = {u.number: u.audio for u in a.utterances}
    video = {u.number: u.video for u in a.utterances}
    assert audio == {n: root / f"train/audio/dia00001utt{n}.wav" for n in (1, 2, 3, 4)}
    assert video == {1: root / "train/video/dia00001utt1.mp4", 2: root / "train/video/dia00001utt2.mp4",
                     3: None, 4: root / "train/video/dia00001utt4.mp4"}
    assert [u.audio for u in b.utterances] == [root / "train/audio/dia7utt1.wav", None,
                                               root / "train/audio/dia7utt3.wav", root / "train/audio/dia7utt4.wav"]
    assert all(u.video is not None for u in b.utterances)

    # Each bad file reported once (utterances recur across turns), with its exact path and kind.
    assert sorted((p.path, p.kind) for p in split.problems) == sorted([
        (str(root / "train/audio/dia7utt2.wav"), "missing"),
        (str(root / "train/video/dia00001utt3.mp4"), "empty")])


def test_decode_mode_accepts_odd_but_valid_media(edge_root):
    """44.1 kHz stereo PCM_24 and 30 fps 320x240 decode; the same two files are the only problems."""
    split = read_split(edge_root, "train", check_media="decode")
    root = edge_root.resolve()
    assert sorted((p.path, p.kind) for p in split.problems) == sorted([
        (str(root / "train/audio/dia7utt2.wav"), "missing"),
        (str(root / "train/video/dia00001utt3.mp4"), "empty")])
    u4 = split.conversations[0].turns[1].response
    wave, sr = media.read_wav(u4.audio)
    assert sr == 44100 and wave.shape == (22050,) and wave.dtype == np.float32
    np.testing.assert_allclose(wave, tone(0.5, 44100, 440.0), atol=1e-4)  # both channels held the tone
    frames, fps = media.read_video(u4.video)
    assert fps == 30 and frames.shape == (30, 240, 320, 3)
    assert [decode_frame_index(f) for f in frames] == list(range(30))


def test_check_media_none_resolves_paths_without_checking(edge_root):
    split = read_split(edge_root, "train", check_media="none")
    assert split.problems == ()
    assert split.conversations[1].utterances[1].audio == edge_root.resolve() / "train/audio/dia7utt2.wav"


def test_strict_raises_naming_the_file(edge_root):
    with pytest.raises(DataError) as e:
        read_split(edge_root, "train", strict=True)
    # The first problem in dialogue order: conversation 00001's empty utt3 mp4.
    assert str(edge_root.resolve() / "train/video/dia00001utt3.mp4") in str(e.value)
    assert "empty" in str(e.value)


def test_strict_raises_on_a_missing_wav(tmp_path):
    write_dataset(tmp_path, [make_conversation("5", num_turns=1)], missing=["train/audio/dia5utt2.wav"])
    with pytest.raises(DataError, match=str(tmp_path.resolve() / "train/audio/dia5utt2.wav")):
        read_split(tmp_path, "train", strict=True)
    assert read_split(tmp_path, "train", strict=False).conversations[0].turns[0].response.audio is None


def test_numeric_ids_with_a_padding_template(tmp_path):
    """Ids written as numbers lose their zero padding in JSON; a format spec in the template restores it."""
    conv = make_conversation(1118, num_turns=1)
    write_dataset(tmp_path, [conv], media=False)
    for n in (1, 2):
        write_wav(tmp_path / f"train/audio/dia01118utt{n}.wav", 0.1)
    split = read_split(tmp_path, "train", audio_template="{split}/audio/dia{conversation_id:0>5}utt{n}.wav",
                       video_template="{split}/video/dia{conversation_id:0>5}utt{n}.mp4")
    turn = split.turns[0]
    assert turn.conversation_id == "1118"
    assert turn.response.audio == tmp_path.resolve() / "train/audio/dia01118utt2.wav"
    assert sorted(p.path for p in split.problems) == sorted(
        str(tmp_path.resolve() / f"train/video/dia01118utt{n}.mp4") for n in (1, 2))


def test_turn_id_template_and_unknown_template_field(tmp_path):
    write_dataset(tmp_path, [make_conversation("3", num_turns=1)], media=False)
    write_wav(tmp_path / "wav/3_0_2.wav", 0.1)
    split = read_split(tmp_path, "train", audio_template="wav/{conversation_id}_{turn_id}_{n}.wav",
                       check_media="exists")
    assert split.turns[0].response.audio == tmp_path.resolve() / "wav/3_0_2.wav"
    with pytest.raises(DataError, match=r"\{speaker\}.*unknown field"):
        read_split(tmp_path, "train", audio_template="{split}/{speaker}/{n}.wav")


# --------------------------------------------------------------------------------------- malformed JSON


def test_bad_fields_are_reported_with_conversation_and_field(tmp_path):
    good = make_conversation("good", num_turns=1)
    no_turns = make_conversation("noturns")
    no_turns["turns"] = []
    missing_turns = make_conversation("missingturns")
    del missing_turns["turns"]
    bad_id = make_conversation("x")
    bad_id["conversation_id"] = ["x"]
    bad_response = make_conversation("badresp", num_turns=2)
    bad_response["turns"][1]["response"] = 42  # turn 1 dropped, turn 0 kept
    bad_utt = make_conversation("badutt", num_turns=1)
    bad_utt["turns"][0]["dialogue_history"][0]["utterance"] = None
    bad_profile = make_conversation("badprof", num_turns=1)
    bad_profile["listener_profile"] = "female"
    bad_profile["speaker_profile"]["ID"] = "twenty"
    bad_index = make_conversation("badindex", num_turns=2)
    bad_index["turns"][1]["dialogue_history"][1]["index"] = 5
    dup = make_conversation("good", num_turns=1)
    data = [good, no_turns, missing_turns, bad_id, "not a conversation", bad_response, bad_utt, bad_profile,
            bad_index, dup]
    write_dataset(tmp_path, data, media=False)

    split = read_split(tmp_path, "train", check_media="none")
    json_path = str(tmp_path.resolve() / "train.json")
    assert all(p.kind == "field" and p.path == json_path for p in split.problems)
    messages = [p.message for p in split.problems]
    expected = [  # (conversation, field) named in each message, in file order
        ("'noturns' (#1)", "'turns'"), ("'missingturns' (#2)", "'turns'"),
        ("#3", "'conversation_id'"), ("#4", "expected an object, got str"),
        ("'badresp' (#5)", "'turns[1].response'"), ("'badutt' (#6)", "'turns[0].dialogue_history[0].utterance'"),
        ("'badprof' (#7)", "'speaker_profile.ID'"), ("'badprof' (#7)", "'listener_profile'"),
        ("'badindex' (#8)", "'turns[1].dialogue_history[1].index'"), ("'good' (#9)", "duplicate"),
    ]
    assert len(messages) == len(expected), messages
    for message, (conv, field) in zip(messages, expected):
        assert conv in message and field in message, (message, conv, field)

    by_id = {c.conversation_id: c for c in split.conversations}
    assert list(by_id) == ["good", "badresp", "badprof", "badindex"]
    assert [t.turn_id for t in by_id["badresp"].turns] == ["0"]
    assert by_id["badprof"].listener_profile == Profile() and by_id["badprof"].speaker_profile.avatar_id is None
    assert [u.number for u in by_id["badindex"].turns[1].history] == [1, 2, 3]  # numbering by position

    with pytest.raises(DataError, match=r"train\.json.*'noturns' \(#1\).*'turns'"):
        read_split(tmp_path, "train", strict=True, check_media="none")


def test_top_level_not_a_list(tmp_path):
    (tmp_path / "valid.json").write_text(json.dumps({"conversations": []}))
    split = read_split(tmp_path, "valid")
    assert split.conversations == ()
    assert [(p.kind, p.path) for p in split.problems] == [("field", str(tmp_path.resolve() / "valid.json"))]
    assert "expected a list of conversations, got dict" in split.problems[0].message


def test_unreadable_or_absent_json_raises(tmp_path):
    with pytest.raises(DataError, match=r"test\.json: split JSON not found"):
        read_split(tmp_path, "test")
    (tmp_path / "test.json").write_text('[{"conversation_id": "1",')
    with pytest.raises(DataError, match=r"test\.json: not valid JSON"):
        read_split(tmp_path, "test")
    with pytest.raises(DataError, match="not a directory"):
        read_split(tmp_path / "nope", "test")
    assert available_splits(tmp_path) == ["test"]


def test_lenient_history_forms(tmp_path):
    """Bare-string history entries and absent roles/turn ids fall back to AvaMERG's alternation and order."""
    conv = {"conversation_id": "9", "turns": [{"dialogue_history": ["hi", {"utterance": "hello"}, "how are you"],
                                               "response": {"role": "listener", "utterance": "fine"}}]}
    write_dataset(tmp_path, [conv], media=False)
    split = read_split(tmp_path, "train", check_media="none")
    assert split.problems == ()
    turn = split.turns[0]
    assert turn.turn_id == "0" and turn.coe is None and turn.context is None
    assert turn.speaker_profile == Profile() and turn.listener_profile == Profile()
    assert [(u.number, u.role, u.text) for u in turn.history] == [
        (1, "speaker", "hi"), (2, "listener", "hello"), (3, "speaker", "how are you")]
    assert (turn.response.number, turn.response.text) == (4, "fine")


# --------------------------------------------------------------------------------------- path safety


class _OpenAudit:
    """Records every file Python opens and every subprocess command line while active (sys.addaudithook can
    not be removed, so one hook is installed per process and switched on/off)."""

    active: list | None = None
    installed = False

    def __enter__(self):
        if not _OpenAudit.installed:
            sys.addaudithook(_OpenAudit._hook)
            _OpenAudit.installed = True
        _OpenAudit.active = self.seen = []
        return self

    def __exit__(self, *exc):
        _OpenAudit.active = None

    @staticmethod
    def _hook(event, args):
        seen = _OpenAudit.active
        if seen is None:
            return
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            seen.append(os.fsdecode(args[0]))
        elif event == "subprocess.Popen":
            seen.extend(os.fsdecode(a) for a in (args[1] or ()) if isinstance(a, (str, bytes, os.PathLike)))


def _assert_untouched(split_or_none, audit: _OpenAudit, outside: pathlib.Path):
    outside = str(outside.resolve())
    assert not [p for p in audit.seen if os.path.abspath(p).startswith(outside)], audit.seen
    if split_or_none is not None:
        for turn in split_or_none.turns:
            for u in (*turn.history, turn.response):
                for path in (u.audio, u.video):
                    assert path is None or not str(path.resolve()).startswith(outside)


def test_conversation_id_traversal_is_rejected(tmp_path):
    root, evil = tmp_path / "root", tmp_path / "evil"
    for n in (1, 2):  # decodable decoys exactly where "../evil" would lead
        write_wav(evil / f"utt{n}.wav", 0.1)
        write_mp4(evil / f"utt{n}.mp4", 0.2)
    good = make_conversation("ok", num_turns=1)
    write_dataset(root, [make_conversation("../evil", num_turns=1), good], media=False)
    for n in (1, 2):
        write_wav(root / f"ok/utt{n}.wav", 0.1)
        write_mp4(root / f"ok/utt{n}.mp4", 0.2)
    kw = dict(audio_template="{conversation_id}/utt{n}.wav", video_template="{conversation_id}/utt{n}.mp4")

    for check in ("exists", "decode"):
        with _OpenAudit() as audit:
            split = read_split(root, "train", check_media=check, **kw)
        _assert_untouched(split, audit, evil)
        assert [c.conversation_id for c in split.conversations] == ["ok"]
        assert [(p.kind, p.path) for p in split.problems] == [("unsafe_path", str(root.resolve() / "train.json"))]
        assert "'../evil'" in split.problems[0].message
    with _OpenAudit() as audit, pytest.raises(DataError, match=r"\.\./evil"):
        read_split(root, "train", strict=True, **kw)
    _assert_untouched(None, audit, evil)


@pytest.mark.parametrize("template", ["/etc/{n}", "../{split}/audio/dia{conversation_id}utt{n}.wav",
                                      "{split}/../../{split}/audio/dia{conversation_id}utt{n}.wav"])
def test_template_traversal_is_rejected(tmp_path, template):
    root = tmp_path / "root"
    write_dataset(root, [make_conversation("00001", num_turns=1)], media=True)
    for n in (1, 2):  # decoys where "../{split}/..." lands: tmp_path/train/audio
        write_wav(tmp_path / f"train/audio/dia00001utt{n}.wav", 0.1)
    for check in ("exists", "decode"):
        with _OpenAudit() as audit:
            split = read_split(root, "train", audio_template=template, check_media=check)
        _assert_untouched(split, audit, tmp_path / "train")
        _assert_untouched(split, audit, pathlib.Path("/etc"))
        assert all(u.audio is None for t in split.turns for u in (*t.history, t.response))
        assert all(u.video is not None for t in split.turns for u in (*t.history, t.response))  # default: fine
        assert [p.kind for p in split.problems] == ["unsafe_path", "unsafe_path"]
        expected_paths = [os.path.normpath(os.path.join(root.resolve(), template.format(
            split="train", conversation_id="00001", n=n))) for n in (1, 2)]
        assert [p.path for p in split.problems] == expected_paths
        assert all(template in p.message for p in split.problems)
    with pytest.raises(DataError, match=template.replace("{", r"\{").replace("}", r"\}").replace(".", r"\.")):
        read_split(root, "train", audio_template=template, strict=True)


def test_symlink_escaping_the_root_is_rejected(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_dataset(root, [make_conversation("00001", num_turns=1)], media=True)
    for n in (1, 2):
        write_wav(outside / f"dia00001utt{n}.wav", 0.1)
    import shutil

    shutil.rmtree(root / "train/audio")
    (root / "train/audio").symlink_to(outside, target_is_directory=True)  # a link inside the root, leading out
    (root / "shared").mkdir()
    shutil.move(str(root / "train/video"), root / "shared/video")
    (root / "train/video").symlink_to(root / "shared/video", target_is_directory=True)  # stays inside: fine

    with _OpenAudit() as audit:
        split = read_split(root, "train", check_media="decode")
    _assert_untouched(split, audit, outside)
    r = root.resolve()
    assert [(p.kind, p.path) for p in split.problems] == [
        ("unsafe_path", str(r / "train/audio/dia00001utt1.wav")),
        ("unsafe_path", str(r / "train/audio/dia00001utt2.wav"))]
    turn = split.turns[0]
    assert turn.response.audio is None and turn.response.video == r / "train/video/dia00001utt2.mp4"
    with pytest.raises(DataError, match="dia00001utt1.wav.*outside the dataset root"):
        read_split(root, "train", strict=True)


def test_json_name_outside_root_is_rejected(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "train.json").write_text(json.dumps([make_conversation("1")]))
    with _OpenAudit() as audit, pytest.raises(DataError, match=r"\.\./\{split\}\.json.*outside the dataset root"):
        read_split(root, "train", json_name="../{split}.json")
    assert str(tmp_path / "train.json") not in audit.seen


# --------------------------------------------------------------------------------------- inspect-data


def test_inspect_data_report(edge_root, capsys):
    assert inspect_main([str(edge_root), "--max-problems", "1"]) == 0
    out = capsys.readouterr().out
    root = edge_root.resolve()
    assert "== train" in out
    assert "conversations 2   turns 4   utterances 8   turns with chain_of_empathy 2/4" in out
    assert "topic                   Work 1, (absent) 1" in out
    assert "speaker emotion         surprised 2" in out
    assert "gender                  male 2, female 2" in out
    assert "avatar ids              2 distinct (18..28)" in out
    # 7 wavs: six 0.2 s, one 0.5 s; 7 mp4s: six 0.2 s, one 1.0 s (30 fps).
    assert "wav durations           7 files, mean 0.24 s, min 0.20 s, max 0.50 s" in out
    assert "mp4 durations           7 files, mean 0.31 s, min 0.20 s, max 1.00 s" in out
    assert "problems                2 (empty 1, missing 1)" in out
    assert f"empty       {root / 'train/video/dia00001utt3.mp4'}: video: file is empty (0 bytes)" in out
    assert "... and 1 more" in out and str(root / "train/audio/dia7utt2.wav") not in out

    assert inspect_main([str(edge_root), "--strict"]) == 1
    out = capsys.readouterr().out
    assert str(root / "train/audio/dia7utt2.wav") in out


def test_inspect_data_json_and_corrupt_media(tmp_path, capsys):
    write_dataset(tmp_path, [make_conversation("1", num_turns=1, speaker={"age": "teen", "gender": "male",
                                                                          "timbre": "low", "ID": 70})],
                  split="valid")
    (tmp_path / "valid/audio/dia1utt2.wav").write_bytes(b"RIFF not really a wav")
    assert inspect_main([str(tmp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["split"] == "valid" and summary["utterances"] == 2
    assert summary["labels"]["age"] == {"teen": 1, "young": 1}
    assert summary["unknown_labels"] == {"age": ["teen"]}
    assert summary["avatar_ids"] == {"distinct": 2, "min": 18, "max": 70, "outside_range": [70]}
    assert summary["durations"]["audio"]["files"] == 1 and summary["durations"]["video"]["files"] == 2
    assert [(p["kind"], p["path"]) for p in summary["problems"]["items"]] == [
        ("unreadable", str(tmp_path.resolve() / "valid/audio/dia1utt2.wav"))]
    assert inspect_main([str(tmp_path), "--strict"]) == 1
    capsys.readouterr()


def test_inspect_data_usage_errors(tmp_path, capsys):
    assert inspect_main([str(tmp_path / "nope")]) == 2
    assert inspect_main([str(tmp_path)]) == 2  # no split JSON at all
    write_dataset(tmp_path, [make_conversation("1", num_turns=1)], media=False)
    assert inspect_main([str(tmp_path), "--split", "test"]) == 2
    assert inspect_main([str(tmp_path), "--bogus"]) == 2
    assert inspect_main([str(tmp_path), "--audio-template", "{nope}.wav"]) == 2
    err = capsys.readouterr().err
    assert "not a directory" in err and "no split JSON" in err and "test.json" in err and "{nope}" in err
    assert inspect_main([str(tmp_path), "--no-durations"]) == 0
    assert inspect_main([str(tmp_path), "--no-durations", "--strict"]) == 1  # 4 missing media


def test_ffmpeg_starts_without_python_in_the_forked_child(tmp_path, monkeypatch):
    """`read_video` starts ffmpeg with no `preexec_fn`, so Python starts it by vfork + exec and runs no Python in
    the child — which, forked from a process whose other threads hold locks (a training step, grain's read
    threads), could block on one of them for ever (merg_jax.data.ffmpeg). The real Popen runs; a spy records how."""
    import subprocess

    clip = write_mp4(tmp_path / "clip.mp4", 0.4)
    preexec = []

    class Spy(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            preexec.append(kwargs.get("preexec_fn"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", Spy)
    frames, fps = media.read_video(clip)
    assert frames.shape == (10, 96, 96, 3) and fps == 25
    assert [decode_frame_index(f) for f in frames] == list(range(10))
    assert preexec and all(fn is None for fn in preexec), preexec
