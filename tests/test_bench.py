"""`merg-jax bench llm`: runs at tiny sizes and prints both sides' numbers and their ratio."""

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

from merg_jax import bench

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def parse_table(stdout: str) -> dict[str, tuple[float, float, float]]:
    rows = {}
    for line in stdout.splitlines():
        m = re.match(r"^(train tokens/s|train MFU|decode tokens/s \(B=\d+\))\s+([\d,.]+)%?\s+([\d,.]+)%?\s+([\d.]+)\s*$",
                     line)
        if m:
            rows[m.group(1)] = tuple(float(g.replace(",", "")) for g in m.groups()[1:])
    return rows


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="the peer side needs torch")
def test_bench_llm_prints_ours_peer_and_ratio(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    env.pop("XLA_FLAGS", None)
    r = subprocess.run(
        [sys.executable, "-m", "merg_jax.cli", "bench", "llm", "--batch", "2", "--seq-len", "16", "--steps", "2",
         "--repeats", "2", "--decode-tokens", "4", "--prompt-len", "4", "--decode-batches", "1,3",
         "--config.model.num_layers=1", "--json", str(tmp_path / "llm.json")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = parse_table(r.stdout)
    assert set(rows) == {"train tokens/s", "train MFU", "decode tokens/s (B=1)", "decode tokens/s (B=3)"}, r.stdout
    for name, (ours, peer, ratio) in rows.items():
        assert ours > 0 and peer > 0
        # MFU is printed with one decimal: its ratio is the exact one, the tokens/s ratio
        expected = rows["train tokens/s"][2] if name == "train MFU" else ours / peer
        assert ratio == pytest.approx(expected, rel=0.02, abs=0.006)
    # identical weights: the logits agree
    diff = float(re.search(r"max \|logits ours - peer\| = ([\d.e+-]+)", r.stdout).group(1))
    assert diff < 1e-3, r.stdout
    report = json.loads((tmp_path / "llm.json").read_text())
    # PaLM's count by hand for configs/tiny.py with one layer (hidden 128, MLP 344, 4 q / 2 kv heads of 32, vocab
    # 384, tied): the tied table is the output matmul, so every weight but nothing else counts.
    d, f, v, h, kv, hd, t = 128, 344, 384, 4, 2, 32, 16
    weights = d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * f + 2 * d + v * d + d
    assert report["train_flops_per_token"] == 6 * weights + 12 * 1 * h * hd * t
    peak = report["matmul_peak_flops"]
    assert peak["peak"] == max(peak["jax"], peak["torch"]) > 1e8
    for side in ("ours", "peer"):
        mfu = report["train_tokens_per_s"][side] * report["train_flops_per_token"] / peak["peak"]
        assert report["train_mfu"][side] == pytest.approx(mfu)
        assert 0 < mfu < 1.5  # a rate above the machine's own matmul peak would mean a wrong count
    assert set(report["decode_tokens_per_s"]) == {"1", "3"}
    assert report["decode_products"] == "panel_matmul"  # the CPU decode kernel (g++ is installed by make test)
    assert "products by panel_matmul" in r.stdout
    # The matmul floor: the step's products (every weight's three and the attention's six), each timed alone. Its
    # FLOPs are PaLM's count less the RMSNorm scales' (no product); both real steps of the run lie above it.
    floor = report["train_matmul_floor"]
    norms = 2 * d + d
    assert floor["flops"] == (report["train_flops_per_token"] - 6 * norms) * 2 * t
    assert sum(p["count"] for p in floor["products"]) == 3 * (7 + 1) + 6
    assert floor["seconds"] == pytest.approx(sum(p["seconds_each"] * p["count"] for p in floor["products"]))
    for side in ("ours", "peer"):
        step_s = 2 * t / report["train_tokens_per_s"][side]
        assert floor[f"{side}_step_over_floor"] == pytest.approx(step_s / floor["seconds"])
        assert floor[f"{side}_step_over_floor"] > 1, floor
    assert re.search(r"matmul floor: the step's \d+ distinct products", r.stdout), r.stdout


def test_bench_without_torch_says_so_and_exits_2(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    assert bench.main(["llm", "--batch", "2"]) == 2
    assert "needs PyTorch" in capsys.readouterr().err


def test_bench_rejects_bad_sizes(capsys):
    assert bench.main(["llm", "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err


def test_bench_attention_prints_ours_against_the_peers():
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    env.pop("XLA_FLAGS", None)
    r = subprocess.run(
        [sys.executable, "-m", "merg_jax.cli", "bench", "attention", "--lengths", "64,2048", "--heads", "1",
         "--head-dim", "16", "--repeats", "1", "--max-run-gib", "0.005"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [line.split() for line in r.stdout.splitlines() if re.match(r"^\s+\d+ (blockwise|xla|reference)\b", line)]
    assert [(row[0], row[1]) for row in rows] == [(length, impl) for length in ("64", "2048")
                                                  for impl in ("blockwise", "xla", "reference")]
    ours_fwd = None
    for row in rows:
        if row[1] == "blockwise":
            assert row[-2:] == ["(ours)", "(ours)"]
            ours_fwd = float(row[2].replace(",", ""))
        elif row[0] == "64":
            assert float(row[-2]) == pytest.approx(float(row[2].replace(",", "")) / ours_fwd, rel=0.05, abs=0.01)
    # at L=2048 the naive programs' score matrix (16 MiB) exceeds the 5 MiB budget: compiled and measured, not
    # run; the blockwise kernel's temporaries fit, so it runs
    assert rows[3][2] != "not" and rows[4][2:4] == ["not", "run"] and rows[5][2:4] == ["not", "run"], r.stdout
    needs = {m.group(1): int(m.group(2)) for m in re.finditer(r"(\w+) L=2048 fwd: needs (\d+) MiB", r.stdout)}
    # the reference holds the whole 2048² score matrix (16 MiB) and its probabilities; the dense core cuts causal
    # queries into 128-row blocks, each against the keys before its end: less, but still over the budget
    assert needs["reference"] >= 32 and 5 < needs["xla"] < needs["reference"], r.stdout


def test_bench_attention_rejects_bad_flags(capsys):
    assert bench.main(["attention", "--lengths", "12,x"]) == 2
    assert "--lengths" in capsys.readouterr().err


def test_interleaved_median_times_takes_the_sides_in_turn():
    from merg_jax.bench.timing import interleaved_median_times

    calls = []

    def side(name, seconds):
        def fn():
            calls.append(name)
            time.sleep(seconds)
        return fn

    t = interleaved_median_times({"ours": side("ours", 0.01), "peer": side("peer", 0.03)}, repeats=5)
    assert calls == ["ours", "peer"] * 5
    assert set(t) == {"ours", "peer"}
    # Medians of sleeps: at least the sleep, and well under the other side's (a loaded machine oversleeps a little).
    assert 0.01 <= t["ours"] < 0.025 and 0.03 <= t["peer"] < 0.06, t
