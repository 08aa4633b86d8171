#!/usr/bin/env bash
# Runs `merg-jax train` as several processes on this one machine, each with its own CPU devices, joined into one
# global mesh over gloo: the multi-host code path (jax.distributed, per-device batch placement, collectives
# across processes) without a cluster. The same environment variables start a real multi-host run (README.md).
#
#   launch/local_multihost.sh [-n PROCESSES] [-d DEVICES_PER_PROCESS] [-p PORT] -- [merg-jax train args ...]
#   launch/local_multihost.sh -n 2 -d 4 -- --config configs/tiny.py --config.train.steps=20 --config.mesh.tensor=2
#
# Logs: one file per process under ${LOG_DIR:-runs/multihost}/process_<i>.log; exits non-zero if any process fails.
set -euo pipefail
procs=2 devices=4 port=$((20000 + RANDOM % 20000))
while getopts "n:d:p:" opt; do
  case $opt in
    n) procs=$OPTARG ;; d) devices=$OPTARG ;; p) port=$OPTARG ;;
    *) echo "usage: $0 [-n PROCESSES] [-d DEVICES_PER_PROCESS] [-p PORT] -- [train args]" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ "${1:-}" = "--" ] && shift
log_dir=${LOG_DIR:-runs/multihost}
mkdir -p "$log_dir"
pids=()
for ((i = 0; i < procs; i++)); do
  MERG_COORDINATOR_ADDRESS="127.0.0.1:$port" MERG_NUM_PROCESSES=$procs MERG_PROCESS_ID=$i \
  JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=$devices JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo XLA_FLAGS= \
    "${PYTHON:-python3}" -m merg_jax.cli train "$@" >"$log_dir/process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for ((i = 0; i < procs; i++)); do
  if ! wait "${pids[$i]}"; then echo "process $i failed: see $log_dir/process_$i.log" >&2; status=1; fi
done
exit $status
