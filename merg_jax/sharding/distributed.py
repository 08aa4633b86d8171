"""Multi-host start-up: `jax.distributed.initialize` exactly when the environment says this is one process
of several, and never twice.

Recognised environments: explicit `MERG_COORDINATOR_ADDRESS` / `MERG_NUM_PROCESSES` / `MERG_PROCESS_ID`
(any cluster, and the multi-process tests on one machine), and the ones JAX auto-detects (Cloud TPU pods,
SLURM, Open MPI, GKE) via `JAX_COORDINATOR_ADDRESS`, `SLURM_NTASKS>1`, `OMPI_COMM_WORLD_SIZE>1`,
`TPU_WORKER_HOSTNAMES` with several hosts.
"""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)
_initialized = False


def is_multiprocess_env(env: dict[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    if int(env.get("MERG_NUM_PROCESSES", "1")) > 1:
        return True
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return True
    hosts = env.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hosts.split(",") if h]) > 1


def initialize(env: dict[str, str] | None = None) -> bool:
    """Joins the multi-process run when there is one. Returns True if this process is part of one."""
    global _initialized
    env = os.environ if env is None else env
    if _initialized:
        return True
    if not is_multiprocess_env(env):
        return False
    if "MERG_COORDINATOR_ADDRESS" in env:
        jax.distributed.initialize(
            coordinator_address=env["MERG_COORDINATOR_ADDRESS"],
            num_processes=int(env["MERG_NUM_PROCESSES"]),
            process_id=int(env["MERG_PROCESS_ID"]),
        )
    else:
        jax.distributed.initialize()  # cluster auto-detection
    _initialized = True
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
    return True
