#!/usr/bin/env bash
# Trains on one GPU node with all its GPUs: one process drives every GPU, and the config's mesh spreads the model
# over them (configs/empatheia_7b.py: fsdp over all devices; change it with --config.mesh.*).
#
#   launch/gpu_node.sh [--dry-run] [--gpus N] -- [merg-jax train args ...]
#   launch/gpu_node.sh -- --config configs/empatheia_7b.py --config.data.root=/data/avamerg \
#       --config.init.llm=/weights/vicuna-7b-v0 --config.init.imagebind=/weights/imagebind_huge.pth
#
# --gpus N     use GPUs 0..N-1 (default: every GPU `nvidia-smi -L` lists)
# --dry-run    start nothing: print the environment and the command, as a script that would run them
#
# The environment it sets, and why:
#   CUDA_VISIBLE_DEVICES           the GPUs this run owns
#   XLA_PYTHON_CLIENT_MEM_FRACTION 0.92 of each GPU for JAX's pool; the rest for NCCL and cuDNN workspaces
#   XLA_FLAGS                      + the latency-hiding scheduler, which overlaps fsdp's all-gathers with compute
#                                  (appended to any XLA_FLAGS already set)
#   NCCL_DEBUG=WARN                NCCL problems in the log, nothing more
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

gpus=""
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY_RUN=1; shift ;;
    --gpus) gpus=${2:?--gpus needs a number}; shift 2 ;;
    --gpus=*) gpus=${1#--gpus=}; shift ;;
    --) shift; break ;;
    *) die "unknown option $1 (usage: launch/gpu_node.sh [--dry-run] [--gpus N] -- [merg-jax train args])" ;;
  esac
done
if [ -z "$gpus" ]; then
  command -v nvidia-smi >/dev/null || die "nvidia-smi not found: is this a GPU node? (or give --gpus N)"
  gpus=$(nvidia-smi -L | grep -c '^GPU ')
fi
[[ $gpus =~ ^[1-9][0-9]*$ ]] || die "--gpus $gpus: expected a positive number"
[ $# -gt 0 ] || die "no train arguments after -- (e.g. -- --config configs/empatheia_7b.py ...)"

setenv CUDA_VISIBLE_DEVICES "$(seq -s, 0 $((gpus - 1)))"
setenv XLA_PYTHON_CLIENT_MEM_FRACTION 0.92
setenv XLA_FLAGS "${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_enable_latency_hiding_scheduler=true"
setenv NCCL_DEBUG WARN
run merg-jax train "$@"
