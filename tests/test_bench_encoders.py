"""`merg-jax bench encoders`: runs both towers at tiny sizes, prints ours, the peer and their ratio, and checks that
both sides compute the same function; bad flags are named."""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

from merg_jax import bench

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
ROW = re.compile(r"^(vision|audio) (infer|train) (images|clips)/s\s+([\d,.]+)\s+([\d,.]+)\s+([\d.]+)\s*$")


def parse_table(stdout: str) -> dict[tuple[str, str], tuple[float, float, float]]:
    rows = {}
    for line in stdout.splitlines():
        m = ROW.match(line)
        if m:
            rows[(m.group(1), m.group(2))] = tuple(float(g.replace(",", "")) for g in m.groups()[3:])
    return rows


@pytest.mark.skipif(importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None,
                    reason="the peer side needs torch and transformers")
def test_bench_encoders_prints_ours_peer_ratio_and_agreement():
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    env.pop("XLA_FLAGS", None)  # one CPU device, as a user's run
    r = subprocess.run(
        [sys.executable, "-m", "merg_jax.cli", "bench", "encoders", "--batch", "2", "--layers", "1", "--hidden", "32",
         "--heads", "2", "--image-size", "16", "--patch", "8", "--mel-bins", "16", "--frames", "24",
         "--audio-patch", "8", "--audio-stride", "8", "--optimizer", "sgd", "--steps", "1", "--repeats", "2"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = parse_table(r.stdout)
    assert set(rows) == {(t, p) for t in ("vision", "audio") for p in ("infer", "train")}, r.stdout
    for ours, peer, ratio in rows.values():
        assert ours > 0 and peer > 0
        assert ratio == pytest.approx(ours / peer, rel=0.02, abs=0.006)
    # identical weights: the pooled embeddings and the first training losses agree
    diffs = re.findall(r"^(vision|audio) same weights: max \|pooled ours - peer\| = ([\d.e+-]+), first train loss "
                       r"ours ([\d.e+-]+) / peer ([\d.e+-]+)$", r.stdout, re.MULTILINE)
    assert [d[0] for d in diffs] == ["vision", "audio"], r.stdout
    for _, diff, loss_ours, loss_peer in diffs:
        assert float(diff) < 1e-4
        assert float(loss_ours) == pytest.approx(float(loss_peer), rel=1e-4)
    # the shapes in the header are the ones asked for: 2x2 patches + class; 2 (mel) x 3 (time) patches + class +
    # distillation
    assert re.search(r"^vision = CLIPVisionModel, batch 2 x 16x16 px, patch 8: [\d,]+ parameters, 5 tokens$",
                     r.stdout, re.MULTILINE), r.stdout
    assert re.search(r"^audio = ASTModel, batch 2 x 24 frames x 16 mel bins, patch 8 stride 8: [\d,]+ parameters, "
                     r"8 tokens$", r.stdout, re.MULTILINE), r.stdout
    assert "Writing model shards" not in r.stdout + r.stderr


@pytest.mark.parametrize("argv, flag", [
    (["--batch", "0"], "--batch"),
    (["--towers", "vision,video"], "--towers"),
    (["--image-size", "30", "--patch", "8"], "--image-size 30 must be a multiple of --patch 8"),
    (["--hidden", "30", "--heads", "4"], "--hidden 30 must be a multiple of --heads 4"),
    (["--frames", "8"], "--frames 8 must be >= --audio-patch 16"),
])
def test_bench_encoders_rejects_bad_flags(argv, flag, capsys):
    assert bench.main(["encoders", *argv]) == 2
    assert flag in capsys.readouterr().err


def test_bench_encoders_without_torch_says_so_and_exits_2(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    assert bench.main(["encoders", "--batch", "2"]) == 2
    assert "needs PyTorch" in capsys.readouterr().err
