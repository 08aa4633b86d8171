"""The `merg-jax` command end to end, as a user runs it (a fresh process, one CPU device)."""

import json
import os
import pathlib
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

# The tiny config, smaller and shorter: the whole command runs in seconds.
TINY = ["--config", "configs/tiny.py", "--config.model.hidden_size=64", "--config.model.intermediate_size=128",
        "--config.model.num_layers=2", "--config.model.num_heads=2", "--config.model.num_kv_heads=1",
        "--config.model.head_dim=32", "--config.train.steps=3", "--config.train.log_every=1",
        "--config.generate.max_new_tokens=16"]


def run_cli(*args, timeout=300):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # a user's machine: no fake devices
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "-m", "merg_jax.cli", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_help_lists_the_commands():
    r = run_cli("--help")
    assert r.returncode == 0, r.stderr
    for name in ("train", "generate", "convert-hf", "bench"):
        assert name in r.stdout
    r = run_cli("train", "--help")
    assert r.returncode == 0 and "--config" in r.stdout, r.stderr


def test_train_runs_end_to_end_prints_a_reply_and_saves_a_hf_model(tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", *TINY, f"--config.train.output_dir={out}")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    steps = [x for x in lines if x.startswith("step ")]
    assert [x.split()[1] for x in steps] == ["1/3", "2/3", "3/3"], r.stdout
    assert all("loss" in x and "ETA" in x for x in steps) and "tokens/s" in steps[-1]
    prompt = next(x for x in lines if x.startswith("prompt:"))
    assert "I failed my driving test today." in prompt
    reply = next(x for x in lines if x.startswith("reply:"))
    assert len(reply) > len("reply:")

    # the saved directory: HF LLaMA weights + config with our token ids, and the tokenizer
    for name in ("config.json", "model.safetensors", "merg_tokenizer.json", "tokenizer.json", "merg_config.json"):
        assert (out / name).is_file(), name
    hf_cfg = json.loads((out / "config.json").read_text())
    assert (hf_cfg["bos_token_id"], hf_cfg["eos_token_id"], hf_cfg["pad_token_id"]) == (1, 2, 0)
    assert hf_cfg["num_hidden_layers"] == 2 and hf_cfg["hidden_size"] == 64
    check = (
        "import numpy as np, sys\n"
        "from merg_jax.convert import load_hf_llama\n"
        "from merg_jax.data import ByteTokenizer\n"
        "from merg_jax.infer import generate\n"
        f"model, cfg = load_hf_llama({str(out)!r})\n"
        f"tok = ByteTokenizer.load({str(out)!r})\n"
        "ids = np.array([tok.encode('Human: I failed my driving test today. ### Assistant:', add_bos=True)])\n"
        "print('reloaded:', tok.decode(np.asarray(generate(model, ids, 16, stop_tokens=(tok.eos_id,)))[0]).strip())\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    env.pop("XLA_FLAGS", None)
    r2 = subprocess.run([sys.executable, "-c", check], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                        timeout=300)
    assert r2.returncode == 0, r2.stderr
    # the reloaded model writes the same greedy reply
    assert r2.stdout.strip().removeprefix("reloaded:").strip() == reply.removeprefix("reply:").strip()


def test_train_rejects_an_unknown_config_key_by_name():
    r = run_cli("train", "--config", "configs/tiny.py", "--config.train.stepz=3")
    assert r.returncode == 2
    assert "train.stepz" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("train", "--config", "configs/nope.py")
    assert r.returncode == 2 and "nope" in r.stderr


def test_unknown_command_fails_with_usage():
    r = run_cli("trian")
    assert r.returncode == 2 and "unknown command 'trian'" in r.stderr
