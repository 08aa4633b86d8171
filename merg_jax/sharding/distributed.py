"""Multi-host start-up: `jax.distributed.initialize` exactly when the environment says this is one process
of several, and never twice.

Recognised environments: explicit `MERG_COORDINATOR_ADDRESS` / `MERG_NUM_PROCESSES` / `MERG_PROCESS_ID`
(any cluster, and the multi-process tests on one machine), and the ones JAX auto-detects (Cloud TPU pods,
SLURM, Open MPI, GKE) via `JAX_COORDINATOR_ADDRESS`, `SLURM_NTASKS>1`, `OMPI_COMM_WORLD_SIZE>1`,
`TPU_WORKER_HOSTNAMES` with several hosts.

Under SLURM and Open MPI, JAX gives each process the one GPU its local rank names (one process per GPU).
`MERG_LOCAL_DEVICE_IDS=0,1,...` overrides that: launch/slurm.sbatch runs one process per node that drives all
the node's GPUs, so the mesh's DCN axes meet at node boundaries (`make_mesh` treats each process as a granule).
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


def local_device_ids(env: dict[str, str] | None = None) -> list[int] | None:
    """`MERG_LOCAL_DEVICE_IDS` ("0,1,2,3") as a list; None when unset (JAX's choice)."""
    env = os.environ if env is None else env
    text = env.get("MERG_LOCAL_DEVICE_IDS", "").strip()
    if not text:
        return None
    try:
        ids = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"MERG_LOCAL_DEVICE_IDS={text!r}: expected comma-separated device numbers, e.g. 0,1,2,3") \
            from None
    if len(set(ids)) != len(ids) or min(ids) < 0:
        raise ValueError(f"MERG_LOCAL_DEVICE_IDS={text!r}: device numbers must be distinct and >= 0")
    return ids


def initialize(env: dict[str, str] | None = None) -> bool:
    """Joins the multi-process run when there is one. Returns True if this process is part of one."""
    global _initialized
    env = os.environ if env is None else env
    if _initialized:
        return True
    if not is_multiprocess_env(env):
        return False
    local = local_device_ids(env)
    if "MERG_COORDINATOR_ADDRESS" in env:
        jax.distributed.initialize(
            coordinator_address=env["MERG_COORDINATOR_ADDRESS"],
            num_processes=int(env["MERG_NUM_PROCESSES"]),
            process_id=int(env["MERG_PROCESS_ID"]),
            local_device_ids=local,
        )
    else:
        jax.distributed.initialize(local_device_ids=local)  # cluster auto-detection
    _initialized = True
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
    return True
