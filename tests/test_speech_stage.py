"""The speech generator inside Empatheia's trainer: the `speech` stage's data, its style table, the generator
targets of `content` (C^s) and `style` (S^s) through the trainer, and `merg-jax speak` with its one-line errors."""

from __future__ import annotations

import json

import numpy as np
import soundfile as sf

from merg_jax.cli import main
from merg_jax.data.speech_corpus import make_speech_iterator, utterance_records
from merg_jax.data.speech_text import TextFrontEnd
from merg_jax.infer.bundle import load_model
from merg_jax.train.metrics_log import read_metrics
from merg_jax.train.stages import STAGES
from merg_jax.train.targets import GeneratorTargets, make_targets
from merg_jax.train.trainer import stage_data_config, stage_settings


def test_the_speech_corpus_reads_every_voiced_utterance_with_its_labels(mini_root, tmp_path):
    from tests.trainer_testing import trainer_config

    config = trainer_config(mini_root, tmp_path)
    records = utterance_records(mini_root, "train")
    data = json.loads((mini_root / "train.json").read_text())
    texts = {h["utterance"] for c in data for t in c["turns"] for h in t["dialogue_history"]}
    texts |= {t["response"] for c in data for t in c["turns"]}
    assert {r["text"] for r in records} == texts
    assert all((r["emotion7"] >= 0) == (r["role"] == "speaker") for r in records)
    with make_speech_iterator(config, "train", shuffle=False, num_epochs=1, drop_remainder=False) as it:
        batch = next(it)
    row = int(np.argmax(batch["sample_index"] == batch["sample_index"][0]))
    rec = records[int(batch["sample_index"][row])]
    ids = TextFrontEnd(config.empatheia.speech.symbols).encode(rec["text"])
    np.testing.assert_array_equal(batch["symbols"][row, :len(ids)], ids)
    wave, sr = sf.read(rec["audio"], dtype="float32")
    assert batch["mel_len"][row] == len(wave) // config.empatheia.speech.hop + 1
    voiced = batch["f0"][row][batch["f0"][row] > 0]
    assert voiced.size > 10 and 60 < np.median(voiced) < 400  # WORLD found a voice pitch


def test_content_and_style_train_against_the_speech_generator(trained_run):
    out, result = trained_run
    loaded = load_model(out)
    config, model = loaded.config, loaded.model
    assert config.targets.kind == "generators"
    targets = make_targets(config, model.cfg)
    assert isinstance(targets, GeneratorTargets)
    stage = STAGES["content"]
    from merg_jax.data.pipeline import make_iterator

    with make_iterator(stage_data_config(config, stage, stage_settings(config, stage)), "train",
                       tokenizer=loaded.tokenizer, shard_index=0, shard_count=1) as it:
        batch = next(it)
    c = targets.content(batch, model)
    want = model.speech.content(batch["reply_symbols"], batch["reply_symbols_len"])
    np.testing.assert_array_equal(np.asarray(c.speech), np.asarray(want))
    assert (np.asarray(c.speech_len) == batch["reply_symbols_len"]).all() and batch["reply_symbols_len"].min() > 0
    s = targets.style(batch, model)
    has = batch["reply_audio_mask"]
    assert has.any() and (np.asarray(s.speech_valid) == has).all()
    np.testing.assert_allclose(np.asarray(s.speech)[has], np.asarray(model.speech.style(
        batch["reply_mel"], batch["reply_mel_len"]))[has], atol=1e-6)
    rows = read_metrics(out)
    for name in ("content", "style"):
        losses = [r["loss"] for r in rows if r["stage"] == name and r.get("split") != "valid"]
        assert losses and all(np.isfinite(losses))
    speech = [r for r in rows if r["stage"] == "speech"]
    assert speech and {"mel_loss", "prior_loss", "vocoder_stft_loss"} <= set(speech[0])


def test_speak_writes_a_wav_and_refuses_bad_input_in_one_line(trained_run, tmp_path, capsys):
    out, _ = trained_run
    wav = tmp_path / "a.wav"
    assert main(["speak", "--checkpoint", str(out), "--text", "Hello there. How are you today?", "--emotion",
                 "happy", "--gender", "female", "--out", str(wav)]) == 0
    wave, sr = sf.read(str(wav))
    assert sr == 16000 and wave.size > 0 and np.all(np.isfinite(wave))
    ref = tmp_path / "b.wav"
    assert main(["speak", "--checkpoint", str(out), "--text", "Again.", "--reference", str(wav), "--out",
                 str(ref), "--griffin-lim"]) == 0
    assert sf.read(str(ref))[0].size
    capsys.readouterr()
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEjunk")
    for args, message in [(["--text", " ", "--emotion", "sad"], "--text is empty"),
                          (["--text", "hi", "--reference", str(bad)], "bad.wav"),
                          (["--text", "hi", "--emotion", "elated"], "--emotion 'elated'"),
                          (["--text", "hi", "--reference", str(tmp_path / "none.wav")], "none.wav")]:
        assert main(["speak", "--checkpoint", str(out), *args, "--out", str(tmp_path / "x.wav")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_bench_speech_times_the_trained_generator(trained_run, tmp_path, capsys):
    out, _ = trained_run
    assert main(["bench", "speech", "--rows", "synthesis", "--checkpoint", str(out), "--seconds", "1",
                 "--repeats", "1", "--json", str(tmp_path / "b.json")]) == 0
    row = json.loads((tmp_path / "b.json").read_text())["rows"]["synthesis"]
    assert row["ours_s"] > 0 and row["audio_s"] > 0 and row["peer_s"] is None
    assert main(["bench", "speech", "--rows", "synthesis"]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_a_bad_utterance_is_skipped_and_counted_not_fatal(mini_root, tmp_path):
    import shutil

    from tests.trainer_testing import trainer_config

    root = tmp_path / "data"
    shutil.copytree(mini_root, root)
    records = utterance_records(root, "train")
    bad = records[1]["audio"]
    with open(bad, "r+b") as f:  # no longer a RIFF file
        f.write(b"this is not a wav header")
    config = trainer_config(root, tmp_path / "run")
    sp = config.empatheia.speech
    kept = utterance_records(root, "train", max_seconds=(sp.max_frames - 1) * sp.hop / sp.sample_rate)
    with make_speech_iterator(config, "train", shuffle=False, num_epochs=1, drop_remainder=False) as it:
        seen = [int(i) for b in it for i in b["sample_index"] if i >= 0]
        assert it.skipped >= 1 and any(s.path == bad for s in it.skipped_samples)
    assert kept[1]["audio"] == bad and 1 not in seen and len(seen) == len(kept) - it.skipped


def test_the_speech_data_resumes_where_it_stopped(mini_root, tmp_path):
    """The iterator state a checkpoint stores brings back the same next batch, waveform segments included (their
    random windows come from grain's per-element RNG, not from a stream that would restart)."""
    from tests.trainer_testing import trainer_config

    config = trainer_config(mini_root, tmp_path)
    with make_speech_iterator(config, "train") as it:
        next(it), next(it)
        state = it.get_state()
        want = next(it)
    with make_speech_iterator(config, "train") as it:
        it.set_state(json.loads(json.dumps(state)))
        got = next(it)
    for key in ("sample_index", "symbols", "mel", "f0", "wave_segment"):
        np.testing.assert_array_equal(got[key], want[key])
