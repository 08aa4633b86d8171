"""merg_jax.compile_cache: where `merg-jax` keeps compiled programs, and that a second process loads them.

The effect is read from JAX's own monitoring: a process that finds a program in the persistent cache records
`/jax/compilation_cache/cache_hits`.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from merg_jax.compile_cache import JAX_DIR, JAX_MAX_SIZE, MAX_SIZE_BYTES, configure, default_dir
from tests.cli_probe import run_probe

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_the_default_folder_follows_xdg_and_a_users_folder_is_kept(tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    assert configure(env) == str(tmp_path / "xdg" / "merg_jax" / "xla") == env[JAX_DIR]
    assert env[JAX_MAX_SIZE] == str(MAX_SIZE_BYTES)
    assert default_dir({}) == pathlib.Path.home() / ".cache" / "merg_jax" / "xla"
    mine = {JAX_DIR: "/fast/disk/xla"}
    assert configure(mine) == "/fast/disk/xla" and JAX_MAX_SIZE not in mine  # the user's cache, the user's size
    off = {"MERG_JAX_COMPILATION_CACHE": "off"}
    assert configure(off) is None and JAX_DIR not in off
    with pytest.raises(ValueError, match="MERG_JAX_COMPILATION_CACHE='maybe': expected on or off"):
        configure({"MERG_JAX_COMPILATION_CACHE": "maybe"})


CHILD = """
import json, sys
from merg_jax import compile_cache
compile_cache.configure()
import jax, jax.numpy as jnp
hits = []
jax.monitoring.register_event_listener(lambda event, **kw: hits.append(event))
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
print(json.dumps({"value": float(f(jnp.ones((64, 64)))), "dir": jax.config.jax_compilation_cache_dir,
                  "hits": hits.count("/jax/compilation_cache/cache_hits")}))
"""


def _child(env: dict) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_what_the_first_compiled(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in (JAX_DIR, JAX_MAX_SIZE, "XLA_FLAGS")}
    env.update(XDG_CACHE_HOME=str(tmp_path), PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")  # store even this small program
    first = _child(env)
    folder = tmp_path / "merg_jax" / "xla"
    assert first["dir"] == str(folder) and first["hits"] == 0
    assert any(p.is_file() for p in folder.rglob("*"))
    second = _child(env)
    assert second["hits"] >= 1 and second["value"] == first["value"]
    off = _child(dict(env, MERG_JAX_COMPILATION_CACHE="off"))
    assert off["hits"] == 0 and not off["dir"]


def test_the_command_line_turns_the_cache_on(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in (JAX_DIR, JAX_MAX_SIZE)}
    env.update(XDG_CACHE_HOME=str(tmp_path), PYTHONPATH=str(REPO))
    r = run_probe("os.environ.get('JAX_COMPILATION_CACHE_DIR')", env)
    assert r.returncode == 0 and f"PROBE {tmp_path / 'merg_jax' / 'xla'}" in r.stdout, r.stdout + r.stderr
    r = run_probe("os.environ.get('JAX_COMPILATION_CACHE_DIR')", dict(env, MERG_JAX_COMPILATION_CACHE="off"))
    assert "PROBE None" in r.stdout, r.stdout + r.stderr
    r = run_probe("1", dict(env, MERG_JAX_COMPILATION_CACHE="maybe"))
    assert r.returncode == 2 and "MERG_JAX_COMPILATION_CACHE='maybe'" in r.stderr, r.stderr
