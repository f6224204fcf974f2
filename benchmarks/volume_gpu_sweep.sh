#!/bin/bash
# Many fhcnn-alone runs of benchmarks/volume_sparse.py side by side on one GPU, each its own
# process (one CPU thread, train.device=cuda): network layouts compared on the sparse-slice benchmark
# in minutes. Their baselines come from CPU runs on the same labels (volume_sparse.py report).
#   bash benchmarks/volume_gpu_sweep.sh JOBS [WORKERS] [SECONDS]
# JOBS: one run a line, TAG VOLUME FRACTION AXES SEED [--set KEY=VALUE ...] ('#' lines skipped).
# Runs that have not started SECONDS after the sweep began are skipped. Each run writes
# results/volume_sparse_<VOLUME>_<TAG>@<FRACTION><AXES><SEED>.json. VOLUME_SIZE defaults to 48;
# BASELINES (default none: fhcnn alone) is the runs' --baselines, e.g. unet for the U-Net of the
# same run; the template (mni) reads MNI_MM and NILEARN_WHEEL from the environment.
set -u
JOBS=$1; WORKERS=${2:-8}; SECONDS_LEFT=${3:-480}
export END=$(( $(date +%s) + SECONDS_LEFT )) VOLUME_SIZE=${VOLUME_SIZE:-48} OMP_NUM_THREADS=1
export DEVICE=${DEVICE:-cuda}
run() {
  [ "$(date +%s)" -lt "$END" ] || { echo "skipped (time): $*"; return 0; }
  local tag=$1 vol=$2 frac=$3 axes=$4 seed=$5; shift 5
  "${PYTHON:-python3}" benchmarks/volume_sparse.py run "$vol" --fractions "$frac" --axes "$axes" --seeds "$seed" \
    --tag "$tag" --part "$frac$axes$seed" --baselines "${BASELINES:-none}" --set "train.device=$DEVICE" "$@"
}
export -f run
grep -v '^#' "$JOBS" | xargs -P "$WORKERS" -L 1 bash -c 'run "$@"' _
