#!/usr/bin/env bash
# Trains on Cloud TPU VM slices: every worker of every slice runs the same `merg-jax train` (over
# `gcloud compute tpus tpu-vm ssh --worker=all`); JAX finds the pod's workers itself. Several slices (comma-
# separated names) are joined over the data-centre network: each worker also gets the MEGASCALE variables (the
# first worker of the first slice coordinates, port 8081; its address from `gcloud ... describe` unless
# --coordinator gives it), and --config.mesh.dcn_data=SLICES is added unless the arguments set a dcn_* size.
#
#   launch/tpu_pod.sh [--dry-run] --tpu NAME[,NAME...] --zone ZONE [--project ID] [--dir DIR]
#                     [--coordinator IP] [--env NAME=VALUE ...] -- [merg-jax train args ...]
#   launch/tpu_pod.sh --tpu merg-v5p-128 --zone us-east5-a -- --config configs/empatheia_7b.py \
#       --config.data.root=/mnt/avamerg --config.init.llm=/mnt/weights/vicuna-7b-v0 \
#       --config.init.imagebind=/mnt/weights/imagebind_huge.pth
#
# --dir DIR    the repository on every worker, relative to the home directory (default merg_jax). Set it up once:
#              gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all \
#                --command="git clone REPO merg_jax && pip install -e 'merg_jax' 'jax[tpu]'"
# --env K=V    more environment for the workers (LIBTPU_INIT_ARGS=..., ...); repeatable
# --dry-run    start nothing: print the commands (the coordinator lookup is a read-only query and still runs)
# Each slice's output goes to stdout with a [NAME] prefix; the script fails if any slice fails.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

tpus="" zone="" project="" dir="merg_jax" coordinator="" extra_env=()
usage="usage: launch/tpu_pod.sh [--dry-run] --tpu NAME[,NAME...] --zone ZONE [--project ID] [--dir DIR] [--coordinator IP] [--env K=V ...] -- [train args]"
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY_RUN=1; shift ;;
    --tpu) tpus=${2:?--tpu needs a name}; shift 2 ;;
    --zone) zone=${2:?--zone needs a zone}; shift 2 ;;
    --project) project=${2:?--project needs an id}; shift 2 ;;
    --dir) dir=${2:?--dir needs a path}; shift 2 ;;
    --coordinator) coordinator=${2:?--coordinator needs an address}; shift 2 ;;
    --env) [[ ${2:-} == [A-Za-z_]*=* ]] || die "--env ${2:-}: expected NAME=VALUE"; extra_env+=("$2"); shift 2 ;;
    --) shift; break ;;
    *) die "unknown option $1 ($usage)" ;;
  esac
done
[ -n "$tpus" ] || die "--tpu is required ($usage)"
[ -n "$zone" ] || die "--zone is required ($usage)"
[ $# -gt 0 ] || die "no train arguments after -- (e.g. -- --config configs/empatheia_7b.py ...)"
IFS=, read -r -a slices <<<"$tpus"
gcloud_flags=("--zone=$zone")
[ -z "$project" ] || gcloud_flags+=("--project=$project")

args=("$@")
if [ ${#slices[@]} -gt 1 ]; then
  has_override --config.mesh.dcn_ "$@" || args+=("--config.mesh.dcn_data=${#slices[@]}")
  if [ -z "$coordinator" ]; then
    coordinator=$(gcloud compute tpus tpu-vm describe "${slices[0]}" "${gcloud_flags[@]}" \
      --format='value(networkEndpoints[0].ipAddress)') || die "cannot read the address of ${slices[0]}'s worker 0"
    [ -n "$coordinator" ] || die "gcloud gave no address for ${slices[0]}'s worker 0 (use --coordinator IP)"
  fi
fi

pids=()
for i in "${!slices[@]}"; do
  env=("${extra_env[@]}")
  if [ ${#slices[@]} -gt 1 ]; then
    env+=("MEGASCALE_COORDINATOR_ADDRESS=$coordinator" "MEGASCALE_PORT=8081"
          "MEGASCALE_NUM_SLICES=${#slices[@]}" "MEGASCALE_SLICE_ID=$i")
  fi
  assignments=""
  for kv in "${env[@]}"; do assignments+="${kv%%=*}=$(quote1 "${kv#*=}") "; done
  remote="cd $(quote1 "$dir") && $assignments$(quote merg-jax train "${args[@]}")"
  cmd=(gcloud compute tpus tpu-vm ssh "${slices[$i]}" "${gcloud_flags[@]}" --worker=all "--command=$remote")
  if [ "$DRY_RUN" = 1 ]; then
    quote "${cmd[@]}"
  else
    ( "${cmd[@]}" 2>&1 | sed -u "s/^/[${slices[$i]}] /"; exit "${PIPESTATUS[0]}" ) &
    pids+=($!)
  fi
done
status=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { echo "slice ${slices[$i]} failed" >&2; status=1; }
done
exit $status
