"""`merg-jax bench speech`: runs the vocoder row at a tiny size, prints ours, the peer, both real-time factors and
the ratio, writes the same numbers with --json, and checks both sides compute the same waveform; bad flags are
named."""

import importlib.util
import json
import re

import pytest

from merg_jax import bench

NUM = r"([\d.]+(?:e[+-]\d+)?)"
ROW = re.compile(rf"^vocoder\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM}\s+([\d.]+)\s*$")


@pytest.mark.skipif(importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None,
                    reason="the peer side needs torch and transformers")
def test_bench_speech_prints_times_rtf_ratio_and_writes_json(tmp_path, capsys):
    out = tmp_path / "speech.json"
    # 0.1 s at 16 kHz, hop 16: 100 frames of 8 mels, 16 channels
    assert bench.main(["speech", "--seconds", "0.1", "--mels", "8", "--channels", "16", "--upsample-rates", "4,4",
                       "--steps", "1", "--repeats", "2", "--json", str(out)]) == 0
    stdout = capsys.readouterr().out
    rows = [ROW.match(line) for line in stdout.splitlines()]
    rows = [m for m in rows if m]
    assert len(rows) == 1, stdout
    ours_s, peer_s, ours_rtf, peer_rtf, ratio = (float(g) for g in rows[0].groups())
    assert ours_s > 0 and peer_s > 0
    assert ours_rtf == pytest.approx(ours_s / 0.1, rel=2e-3)  # 0.1 s of audio per call; 4 significant digits
    assert peer_rtf == pytest.approx(peer_s / 0.1, rel=2e-3)
    assert ratio == pytest.approx(ours_s / peer_s, rel=0.02, abs=0.006)
    assert "batch 1 x 100 frames x 8 mels -> 1,600 samples" in stdout

    report = json.loads(out.read_text())
    row = report["rows"]["vocoder"]
    assert set(row) >= {"ours_s", "peer_s", "audio_s", "ours_rtf", "peer_rtf", "ratio", "checks"}
    assert row["audio_s"] == pytest.approx(0.1)
    assert row["ours_rtf"] == pytest.approx(row["ours_s"] / 0.1)
    assert row["ratio"] == pytest.approx(row["ours_s"] / row["peer_s"])
    assert row["checks"]["max_abs_diff"] < 1e-5 < row["checks"]["peer_wave_std"]
    assert report["versions"]["threads"] == report["versions"]["cpus"]


@pytest.mark.parametrize("argv, flag", [
    (["--seconds", "0"], "--seconds"),
    (["--rows", "vocoder,acoustic"], "--rows: unknown row 'acoustic'"),
    (["--upsample-rates", "8,x"], "--upsample-rates"),
    (["--channels", "12", "--upsample-rates", "2,2,2"], "--channels 12 must be divisible by 2^3"),
])
def test_bench_speech_rejects_bad_flags(argv, flag, capsys):
    assert bench.main(["speech", *argv]) == 2
    assert flag in capsys.readouterr().err
