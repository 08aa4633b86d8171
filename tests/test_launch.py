"""The launch scripts: local_multihost.sh trains two processes × 4 CPU devices (data across them over the
"DCN" axis) exactly like one process with 8 devices; gpu_node.sh, slurm.sbatch, tpu_pod.sh and gpu_check.sh print,
in their dry runs, the exact commands and environment they would run, and the train commands load as configs."""

import os
import pathlib
import re
import shlex
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
    # each process is one DCN granule (as a GPU node under slurm.sbatch): data runs across the two
    r = subprocess.run(["bash", "launch/local_multihost.sh", "-n", "2", "-d", "4", "--", *TRAIN_ARGS,
                        "--config.mesh.dcn_data=2"],
                       cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    logs = [(tmp_path / "logs" / f"process_{i}.log").read_text() for i in range(2)]
    assert r.returncode == 0, r.stderr + "\n".join(logs)
    multi = [_losses(log) for log in logs]
    assert len(multi[0]) == 3 and multi[0] == multi[1], logs

    single_env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), XLA_FLAGS="--xla_force_host_platform_device_count=8",
                      JAX_PLATFORMS="cpu")
    s = subprocess.run([sys.executable, "-m", "merg_jax.cli", "train", *TRAIN_ARGS, "--config.mesh.data=2", "--no-save"],
                       cwd=REPO_ROOT,
                       env=single_env, capture_output=True, text=True, timeout=600)
    assert s.returncode == 0, s.stdout + s.stderr
    single = _losses(s.stdout + s.stderr)
    assert single == pytest.approx(multi[0], abs=2e-4), (single, multi[0])
    assert multi[0][-1] < multi[0][0]


# ------------------------------------------------------------------------------------ dry runs of the launch scripts

def _dry(script: str, *args: str, env: dict | None = None, path: str | None = None) -> list[str]:
    full = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | (env or {})
    if path:
        full["PATH"] = f"{path}{os.pathsep}{full['PATH']}"
    r = subprocess.run(["bash", f"launch/{script}", *args], cwd=REPO_ROOT, env=full, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def _train_config(words: list[str]):
    """The config a `merg-jax train ...` command line would train: its overrides must name real keys."""
    from merg_jax.config import load_config, split_overrides

    at = words.index("merg-jax")
    assert words[at + 1] == "train"
    rest = words[at + 2:]
    assert rest[0] == "--config"
    return load_config(rest[1], split_overrides(rest[2:]))


def _exports(lines: list[str]) -> dict[str, str]:
    return dict(shlex.split(line)[1].split("=", 1) for line in lines if line.startswith("export "))


PAPER = ["--config", "configs/empatheia_7b.py", "--config.data.root=/data/ava merg",
         "--config.init.llm=/w/vicuna-7b-v0", "--config.init.imagebind=/w/imagebind_huge.pth"]


def test_gpu_node_dry_run():
    lines = _dry("gpu_node.sh", "--dry-run", "--gpus", "8", "--", *PAPER)
    assert _exports(lines) == {"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.92",
                               "XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=true", "NCCL_DEBUG": "WARN"}
    assert shlex.split(lines[-1]) == ["merg-jax", "train", *PAPER] and len(lines) == 5
    config = _train_config(shlex.split(lines[-1]))
    assert config.init.llm == "/w/vicuna-7b-v0" and config.data.root == "/data/ava merg"
    # a user's own XLA_FLAGS are kept; XLA itself accepts the result (it refuses unknown flags at start-up)
    lines = _dry("gpu_node.sh", "--dry-run", "--gpus=2", "--", *PAPER[:2],
                 env={"XLA_FLAGS": "--xla_dump_to=/tmp/x"})
    flags = _exports(lines)["XLA_FLAGS"]
    assert flags == "--xla_dump_to=/tmp/x --xla_gpu_enable_latency_hiding_scheduler=true"
    probe = subprocess.run([sys.executable, "-c", "import jax.numpy as jnp; print(float(jnp.ones(3).sum()))"],
                           env=dict(os.environ, XLA_FLAGS=flags.split(" ", 1)[1], JAX_PLATFORMS="cpu"),
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0 and probe.stdout.strip() == "3.0", probe.stderr[-2000:]
    r = subprocess.run(["bash", "launch/gpu_node.sh", "--dry-run", "--gpus", "0", "--", *PAPER], cwd=REPO_ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--gpus 0: expected a positive number" in r.stderr


def test_slurm_dry_run():
    sbatch = (REPO_ROOT / "launch" / "slurm.sbatch").read_text()
    directives = dict((line.split()[1].lstrip("-").split("=", 1) + [""])[:2] for line in sbatch.splitlines()
                      if line.startswith("#SBATCH"))
    assert directives["ntasks-per-node"] == "1" and directives["gpus-per-node"] == "8"
    slurm = {"SLURM_JOB_NUM_NODES": "4", "SLURM_GPUS_ON_NODE": "8"}
    lines = _dry("slurm.sbatch", "--dry-run", *PAPER, env=slurm)
    env = _exports(lines)
    assert env["MERG_LOCAL_DEVICE_IDS"] == "0,1,2,3,4,5,6,7" and env["NCCL_DEBUG"] == "WARN"
    words = shlex.split(lines[-1])
    assert words[:5] == ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "--cpu-bind=none", "merg-jax"]
    assert words[5:] == ["train", *PAPER, "--config.mesh.dcn_data=4"]  # data across the 4 nodes
    assert _train_config(words).mesh.dcn_data == 4
    own = _dry("slurm.sbatch", *PAPER, "--config.mesh.dcn_fsdp=4", env={**slurm, "DRY_RUN": "1"})
    assert shlex.split(own[-1])[-1] == "--config.mesh.dcn_fsdp=4" and "dcn_data" not in own[-1]
    one = _dry("slurm.sbatch", "--dry-run", *PAPER, env={"SLURM_JOB_NUM_NODES": "1", "SLURM_GPUS_ON_NODE": "4"})
    assert "dcn" not in one[-1] and _exports(one)["MERG_LOCAL_DEVICE_IDS"] == "0,1,2,3"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    r = subprocess.run(["bash", "launch/slurm.sbatch", "--dry-run", *PAPER], cwd=REPO_ROOT, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "SLURM_JOB_NUM_NODES is not set" in r.stderr


def _remote(line: str) -> tuple[list[str], list[str]]:
    """(the gcloud words before --command, the remote command's words)."""
    words = shlex.split(line)
    command = [w for w in words if w.startswith("--command=")]
    assert len(command) == 1
    return [w for w in words if not w.startswith("--command=")], shlex.split(command[0].removeprefix("--command="))


def test_tpu_pod_dry_run(tmp_path):
    (line,) = _dry("tpu_pod.sh", "--dry-run", "--tpu", "merg-v5p-128", "--zone", "us-east5-a", "--project", "p1",
                   "--", *PAPER)
    gcloud, remote = _remote(line)
    assert gcloud == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "merg-v5p-128", "--zone=us-east5-a",
                      "--project=p1", "--worker=all"]
    assert remote == ["cd", "merg_jax", "&&", "merg-jax", "train", *PAPER]
    assert _train_config(remote).mesh.dcn_data == 1

    # two slices: the coordinator's address from gcloud (a stand-in that answers `describe` and logs its call)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/gcloud.log\n'
                                    '[ "$4" = describe ] && echo 10.1.2.3\n')
    (bin_dir / "gcloud").chmod(0o755)
    lines = _dry("tpu_pod.sh", "--dry-run", "--tpu", "slice-a,slice-b", "--zone", "z1", "--dir", "code/merg jax",
                 "--env", "LIBTPU_INIT_ARGS=--xla_tpu_a=1 --xla_tpu_b=2", "--", *PAPER, path=str(bin_dir))
    assert (tmp_path / "gcloud.log").read_text().split() == [
        "compute", "tpus", "tpu-vm", "describe", "slice-a", "--zone=z1", "--format=value(networkEndpoints[0].ipAddress)"]
    assert len(lines) == 2
    for slice_id, line in enumerate(lines):
        gcloud, remote = _remote(line)
        assert gcloud[5] == ("slice-a", "slice-b")[slice_id] and gcloud[-1] == "--worker=all"
        assert remote[:3] == ["cd", "code/merg jax", "&&"]
        at = remote.index("merg-jax")
        assert dict(w.split("=", 1) for w in remote[3:at]) == {
            "LIBTPU_INIT_ARGS": "--xla_tpu_a=1 --xla_tpu_b=2", "MEGASCALE_COORDINATOR_ADDRESS": "10.1.2.3",
            "MEGASCALE_PORT": "8081", "MEGASCALE_NUM_SLICES": "2", "MEGASCALE_SLICE_ID": str(slice_id)}
        assert remote[at:] == ["merg-jax", "train", *PAPER, "--config.mesh.dcn_data=2"]
    lines = _dry("tpu_pod.sh", "--dry-run", "--tpu", "a,b,c", "--zone", "z", "--coordinator", "10.0.0.9", "--",
                 *PAPER, "--config.mesh.dcn_fsdp=3")
    assert all(_remote(x)[1][-1] == "--config.mesh.dcn_fsdp=3" and "dcn_data" not in x for x in lines)
    r = subprocess.run(["bash", "launch/tpu_pod.sh", "--tpu", "a", "--", *PAPER], cwd=REPO_ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--zone is required" in r.stderr


def test_gpu_check_dry_run():
    lines = _dry("gpu_check.sh", "--dry-run", "--out", "runs/check 1", "--steps", "7")
    commands = [shlex.split(x) for x in lines if not x.startswith("export ")]
    assert [c[:3] for c in commands] == [
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
        ["python3", "-c", "import jax; print(jax.__version__, jax.devices())"],
        ["merg-jax", "bench", "kernels"], ["merg-jax", "bench", "attention"], ["merg-jax", "make-data", "--out"],
        ["merg-jax", "train", "--config"], ["merg-jax", "bench", "respond"],
        ["python3", "-m", "merg_jax.bench.device_report"]]
    assert commands[0][-2:] == [">", "runs/check 1/device.txt"] and commands[-1][-2:] == [">", "runs/check 1/report.md"]
    config = _train_config(commands[5])
    assert config.train.steps == 7 and config.data.root == "runs/check 1/data"
    assert config.stages == "coe,speech,face_renderer"
    assert commands[6][3:5] == ["--checkpoint", "runs/check 1/run"]


# ------------------------------------------------------------------------ the mesh across processes (GPU nodes)

def test_local_device_ids_and_one_process_dcn_error():
    from merg_jax.sharding import make_mesh
    from merg_jax.sharding.distributed import local_device_ids

    assert local_device_ids({}) is None and local_device_ids({"MERG_LOCAL_DEVICE_IDS": "0,1,2,3"}) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="MERG_LOCAL_DEVICE_IDS='0,x'"):
        local_device_ids({"MERG_LOCAL_DEVICE_IDS": "0,x"})
    with pytest.raises(ValueError, match="distinct"):
        local_device_ids({"MERG_LOCAL_DEVICE_IDS": "1,1"})
    import jax

    if jax.device_count() >= 2:
        with pytest.raises(ValueError, match=r"dcn sizes \(2, 1, 1\) need 2 processes, but the devices come from 1"):
            make_mesh({"data": 1, "fsdp": -1, "tensor": 1, "dcn_data": 2})


# ------------------------------------------------------------------ gpu_check.sh's pieces, run here on the CPU

def test_bench_kernels_on_cpu(tmp_path):
    """`bench kernels` with the GPU kernel in the Pallas interpreter: every case within tolerance of the reference."""
    import json

    from merg_jax.bench import main as bench

    assert bench(["kernels", "--small", "--markdown", str(tmp_path / "kernels.md"), "--json",
                  str(tmp_path / "kernels.json")]) == 0
    rows = json.loads((tmp_path / "kernels.json").read_text())
    assert len(rows) == 5 and all(r["passed"] and r["mode"] == "interpreted" for r in rows)
    for r in rows:  # bfloat16 inputs differ from the float32 reference by rounding, float32 ones barely
        assert (2e-4 < r["ours_error"] < 2e-2) if r["dtype"] == "bfloat16" else (r["ours_error"] < 1e-5)
    assert "| causal self-attention |" in (tmp_path / "kernels.md").read_text()


@pytest.mark.slow
def test_bench_respond_and_the_gpu_check_report(trained_run, mini_root, tmp_path):
    """`bench respond` on the session's trained run, and launch/gpu_check.sh's report from its pieces."""
    import json

    import soundfile

    from merg_jax.bench import main as bench
    from merg_jax.bench.device_report import report

    run, _ = trained_run
    folder = tmp_path / "check"
    # the reply as `merg-jax respond --face-from speech` makes it: the avatar driven by reply.wav
    assert bench(["respond", "--checkpoint", str(run), "--dialogue", str(mini_root / "test.json"), "--repeats", "1",
                  "--face-from", "speech", "--out", str(tmp_path / "reply"), "--markdown", str(folder / "respond.md"),
                  "--json", str(folder / "respond.json")]) == 0
    figures = json.loads((folder / "respond.json").read_text())
    reply = json.loads((tmp_path / "reply" / "reply.json").read_text())
    assert figures["face_from"] == reply["video"]["from"] == "speech"
    assert figures["speech_from"] == reply["speech"]["from"] == "content"
    assert "speech from content, face from speech" in (folder / "respond.md").read_text()
    first, warm = figures["first"], figures["warm"]
    assert first["total"] > 2 * warm["total"]  # the first call compiles, the second reuses the programs
    assert sum(warm[s] for s in ("read", "reply", "speech", "video")) == pytest.approx(warm["total"], rel=0.05)
    wave, sr = soundfile.read(tmp_path / "reply" / "reply.wav")
    assert figures["reply_seconds"] == pytest.approx(len(wave) / sr, abs=1e-3)
    assert figures["rtf"] == pytest.approx(warm["total"] / figures["reply_seconds"])

    (folder / "device.txt").write_text("cpu (a CPU run of the GPU check's pieces)\n")
    (folder / "kernels.md").write_text("| case | ... |\n")
    (folder / "run").mkdir()
    (folder / "run" / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text())
    text = report(folder)
    assert text.startswith("## GPU check: cpu") and "| case | ... |" in text
    assert "(attention.txt missing)" in text and "| first call (compiles), s |" in text
    steps = [line.split("|")[1:5] for line in text.splitlines() if line.startswith("| coe |")]
    assert len(steps) == 1 and float(steps[0][2]) > float(steps[0][3]) > 0  # compiling step slower than the rest
