#!/usr/bin/env bash
# Test a checkpoint on a Slurm cluster: srun starts one task per GPU and mmengine's `slurm` launcher reads the
# Slurm variables.
#
#   bash tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py args...]
#   bash tools/slurm_test.sh gpu mv_t configs/x.py work_dirs/x/epoch_12.pth --out results.pkl
#
# Multi-node: ask for more GPUs than one node has, e.g. 2 nodes x 8 GPUs:
#   GPUS=16 GPUS_PER_NODE=8 bash tools/slurm_test.sh gpu mv_t configs/x.py x.pth
#
# Environment: GPUS (8, tasks in all), GPUS_PER_NODE (8), CPUS_PER_TASK (5),
#   SRUN_ARGS (extra srun options, split on spaces, e.g. "--quotatype=auto"), PYTHON (python3).
set -euo pipefail

if [ $# -lt 4 ]; then
  echo "usage: $0 PARTITION JOB_NAME CONFIG CHECKPOINT [test.py args...]" >&2
  exit 2
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
CHECKPOINT=$4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
read -r -a SRUN_ARGS <<< "${SRUN_ARGS:-}"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec srun -p "$PARTITION" \
  --job-name="$JOB_NAME" \
  --gres=gpu:"$GPUS_PER_NODE" \
  --ntasks="$GPUS" \
  --ntasks-per-node="$GPUS_PER_NODE" \
  --cpus-per-task="$CPUS_PER_TASK" \
  --kill-on-bad-exit=1 \
  ${SRUN_ARGS[@]+"${SRUN_ARGS[@]}"} \
  "${PYTHON:-python3}" -u "$ROOT/tools/test.py" "$CONFIG" "$CHECKPOINT" --launcher=slurm "${@:5}"
