#!/usr/bin/env bash
# What a GPU machine runs once to check merg_jax there and measure it (meant to take under 5 minutes; not yet
# timed on a GPU: no session with one has run it). It writes
# DIR/report.md (default runs/gpu_check) for docs/benchmarks.md:
#   1. the card (nvidia-smi) and JAX's view of it;
#   2. the attention kernels compiled for the GPU (Pallas/Triton) against the naive float32 reference and cuDNN:
#      forward and gradients (`merg-jax bench kernels`; fails the script when a case is out of tolerance);
#   3. their speed against cuDNN and XLA at 1k/4k/16k tokens (`merg-jax bench attention`);
#   4. a short run of configs/empatheia_tiny.py's LLM, speech and face stages on a small AvaMERG-mini (step times;
#      the stages left out only cost compile time here);
#   5. one reply's latency by stage, first call and warm (`merg-jax bench respond`);
#   6. the report (python -m merg_jax.bench.device_report).
#
#   launch/gpu_check.sh [--dry-run] [--out DIR] [--steps N]
#
# Needs: pip install -e . 'jax[cuda12]' and Debian's espeak-ng (the data maker speaks with it).
# --steps N    training steps per stage in step 4 (default 20)
# --dry-run    start nothing: print the commands
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

out=runs/gpu_check steps=20
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY_RUN=1; shift ;;
    --out) out=${2:?--out needs a folder}; shift 2 ;;
    --steps) steps=${2:?--steps needs a number}; shift 2 ;;
    *) die "unknown option $1 (usage: launch/gpu_check.sh [--dry-run] [--out DIR] [--steps N])" ;;
  esac
done
[[ $steps =~ ^[1-9][0-9]*$ ]] || die "--steps $steps: expected a positive number"
if [ "$DRY_RUN" != 1 ]; then
  command -v nvidia-smi >/dev/null || die "nvidia-smi not found: this check is for a GPU machine"
  mkdir -p "$out"
fi

# to_file FILE CMD...: CMD's stdout into FILE (printed as `CMD > FILE` in a dry run); a failing step stops the check.
to_file() {
  local file=$1
  shift
  if [ "$DRY_RUN" = 1 ]; then printf '%s > %s\n' "$(quote "$@")" "$(quote1 "$file")"; else "$@" >"$file"; fi
}

setenv XLA_PYTHON_CLIENT_MEM_FRACTION 0.92
to_file "$out/device.txt" nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
run python3 -c "import jax; print(jax.__version__, jax.devices())"
run merg-jax bench kernels --markdown "$out/kernels.md" --json "$out/kernels.json"
to_file "$out/attention.txt" merg-jax bench attention --lengths 1024,4096,16384 --repeats 3
run merg-jax make-data --out "$out/data" --dialogues 16 --workers 8 --quiet
run merg-jax train --config configs/empatheia_tiny.py "--config.data.root=$out/data" \
  "--config.train.output_dir=$out/run" "--config.data.tokenizer=$out/run/tokenizer" \
  --config.stages=coe,speech,face_renderer "--config.train.steps=$steps" --config.data.feature_cache_dir=
run merg-jax bench respond --checkpoint "$out/run" --dialogue "$out/data/test.json" \
  --markdown "$out/respond.md" --json "$out/respond.json"
to_file "$out/report.md" python3 -m merg_jax.bench.device_report "$out"
[ "$DRY_RUN" = 1 ] || echo "wrote $out/report.md: add it to docs/benchmarks.md"
