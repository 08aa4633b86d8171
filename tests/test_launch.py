"""launch/local_multihost.sh: two processes × 4 CPU devices train exactly like one process with 8 devices."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
TRAIN_ARGS = ["--config", "configs/tiny.py", "--config.train.steps=3", "--config.train.log_every=1",
              "--config.mesh.tensor=2", "--config.model.num_layers=1", "--config.train.seq_len=192"]


def _losses(text: str) -> list[float]:
    return [float(m) for m in re.findall(r"^step \d+/\d+\s+loss ([\d.]+)", text, flags=re.M)]


@pytest.mark.slow
def test_two_local_processes_train_like_one(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), LOG_DIR=str(tmp_path / "logs"), PYTHON=sys.executable)
    r = subprocess.run(["bash", "launch/local_multihost.sh", "-n", "2", "-d", "4", "--", *TRAIN_ARGS],
                       cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    logs = [(tmp_path / "logs" / f"process_{i}.log").read_text() for i in range(2)]
    assert r.returncode == 0, r.stderr + "\n".join(logs)
    multi = [_losses(log) for log in logs]
    assert len(multi[0]) == 3 and multi[0] == multi[1], logs

    single_env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), XLA_FLAGS="--xla_force_host_platform_device_count=8",
                      JAX_PLATFORMS="cpu")
    s = subprocess.run([sys.executable, "-m", "merg_jax.cli", "train", *TRAIN_ARGS, "--no-save"], cwd=REPO_ROOT,
                       env=single_env, capture_output=True, text=True, timeout=600)
    assert s.returncode == 0, s.stdout + s.stderr
    single = _losses(s.stdout + s.stderr)
    assert single == pytest.approx(multi[0], abs=2e-4), (single, multi[0])
    assert multi[0][-1] < multi[0][0]
