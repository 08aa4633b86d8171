"""merg_jax.host_allocator: which allocator `merg-jax` re-executes under, and that it removes the page faults.

The choice is checked as a function of the environment; the effect with the kernel's own counters: a child
process runs a jitted program with a large temporary buffer and reads its minor page faults per call
(`getrusage`), under glibc as started and under the allocator `allocator_env` picks on this machine.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from merg_jax.host_allocator import allocator_env, describe, thp_mode
from tests.cli_probe import run_probe

REPO = pathlib.Path(__file__).resolve().parent.parent
BASE = {"PATH": "/usr/bin", "HOME": "/root"}


def test_auto_prefers_tcmalloc_then_huge_pages_then_nothing():
    env = allocator_env(BASE, tcmalloc="libtcmalloc_minimal.so.4", thp="madvise")
    assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4" and describe(env) == "tcmalloc"
    assert env["PATH"] == "/usr/bin"  # the rest of the environment is kept
    env = allocator_env(BASE, tcmalloc="", thp="madvise")
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1" and describe(env) == "glibc+hugepages"
    assert "LD_PRELOAD" not in env
    assert allocator_env(BASE, tcmalloc="", thp="never") is None
    assert allocator_env(BASE, tcmalloc="", thp=None) is None  # no THP at all (not Linux, or a kernel without it)


def test_existing_settings_are_kept():
    mine = dict(BASE, LD_PRELOAD="/opt/lib/libfoo.so")
    env = allocator_env(mine, tcmalloc="libtcmalloc.so.4", thp="always")
    assert env["LD_PRELOAD"] == "libtcmalloc.so.4:/opt/lib/libfoo.so"
    tunables = dict(BASE, GLIBC_TUNABLES="glibc.malloc.arena_max=2")
    assert allocator_env(tunables, tcmalloc="", thp="always")["GLIBC_TUNABLES"] == \
        "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    # A process already under tcmalloc, jemalloc or huge pages, or already re-executed, stays as it is.
    for already in ({"LD_PRELOAD": "libjemalloc.so.2"}, {"LD_PRELOAD": "/x/libtcmalloc.so"},
                    {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, {"MERG_JAX_ALLOCATOR_REEXECUTED": "1"}):
        assert allocator_env(dict(BASE, **already), tcmalloc="libtcmalloc.so.4", thp="always") is None


def test_the_user_chooses_with_an_environment_variable():
    assert allocator_env(dict(BASE, MERG_JAX_ALLOCATOR="system"), tcmalloc="libtcmalloc.so.4",
                         thp="always") is None
    env = allocator_env(dict(BASE, MERG_JAX_ALLOCATOR="hugepages"), tcmalloc="libtcmalloc.so.4", thp="madvise")
    assert describe(env) == "glibc+hugepages"
    with pytest.raises(ValueError, match="MERG_JAX_ALLOCATOR=tcmalloc.*libtcmalloc-minimal4"):
        allocator_env(dict(BASE, MERG_JAX_ALLOCATOR="tcmalloc"), tcmalloc="", thp="always")
    with pytest.raises(ValueError, match="MERG_JAX_ALLOCATOR=hugepages.*never"):
        allocator_env(dict(BASE, MERG_JAX_ALLOCATOR="hugepages"), tcmalloc="", thp="never")
    with pytest.raises(ValueError, match="MERG_JAX_ALLOCATOR='fast': expected one of auto, tcmalloc"):
        allocator_env(dict(BASE, MERG_JAX_ALLOCATOR="fast"))


def test_thp_mode_reads_the_kernels_choice(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert thp_mode(f) == "madvise"
    f.write_text("[always] madvise never\n")
    assert thp_mode(f) == "always"
    assert thp_mode(tmp_path / "missing") is None


FAULTS = """
import json, resource
import jax, jax.numpy as jnp

@jax.jit
def f(x):  # a [2048, 8192] float32 temporary (64 MiB) between two matmuls
    h = jnp.tanh(x @ jnp.ones((256, 8192), jnp.float32))
    return h @ jnp.ones((8192, 8), jnp.float32)

x = jnp.ones((2048, 256), jnp.float32)
for _ in range(5):  # warm-up: the allocator's heap grows to the program's working set once
    f(x).block_until_ready()
faults = []
for _ in range(11):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
# The median call: now and then an allocator still grows its heap by a fresh block.
print(json.dumps({"faults_per_call": sorted(faults)[len(faults) // 2]}))
"""


def _faults_per_call(env: dict) -> float:
    r = subprocess.run([sys.executable, "-c", FAULTS], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])["faults_per_call"]


def test_the_chosen_allocator_removes_the_page_faults_of_each_call():
    system = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "GLIBC_TUNABLES", "MERG_JAX_ALLOCATOR")}
    system.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    system.pop("XLA_FLAGS", None)
    chosen = allocator_env(system)
    if chosen is None:
        pytest.skip("this machine has neither tcmalloc nor transparent huge pages (make test installs tcmalloc)")
    glibc = _faults_per_call(system)
    # 64 MiB of fresh pages is 16,384 faults of 4 KiB under glibc; tcmalloc reuses its memory, 2 MiB pages are
    # 512x fewer faults.
    assert glibc > 10_000, glibc
    envs = [chosen]
    if describe(chosen) != "glibc+hugepages" and thp_mode() in ("always", "madvise"):
        envs.append(allocator_env(dict(system, MERG_JAX_ALLOCATOR="hugepages")))
    for env in envs:
        fast = _faults_per_call(env)
        assert fast < glibc / 20, (describe(env), fast, glibc)


def test_the_command_line_reexecutes_itself_under_the_chosen_allocator():
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "GLIBC_TUNABLES", "MERG_JAX_ALLOCATOR")}
    env.update(PYTHONPATH=str(REPO))
    expected = allocator_env(env)
    r = run_probe("host_allocator.describe()", env)
    assert r.returncode == 0, r.stderr
    assert f"PROBE {'glibc' if expected is None else describe(expected)}" in r.stdout, r.stdout
    r = run_probe("host_allocator.describe()", dict(env, MERG_JAX_ALLOCATOR="system"))
    assert "PROBE glibc" in r.stdout, r.stdout
    r = run_probe("host_allocator.describe()", dict(env, MERG_JAX_ALLOCATOR="fast"))
    assert r.returncode == 2 and "merg-jax: error: MERG_JAX_ALLOCATOR='fast'" in r.stderr, r.stderr
