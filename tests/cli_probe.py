"""Run the real `merg-jax` entry point (`merg_jax.cli.main()` reading `sys.argv`) in a subprocess, with one extra
command `probe` that prints `PROBE <value of EXPRESSION>` from inside the command: what the process looks like
after the entry point set it up (allocator re-execution, compilation cache) and before any command ran."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import os, sys, types
from merg_jax import cli, host_allocator
module = types.ModuleType("probe_command")
module.main = lambda rest: print("PROBE", {expression}) or 0
sys.modules["probe_command"] = module
cli.COMMANDS["probe"] = ("probe_command", "")
sys.argv = ["merg-jax", "probe"]
sys.exit(cli.main())
"""


def run_probe(expression: str, env: dict) -> subprocess.CompletedProcess:
    """`expression` is evaluated in the command, with `os` and `host_allocator` imported."""
    return subprocess.run([sys.executable, "-c", SCRIPT.format(expression=expression)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
