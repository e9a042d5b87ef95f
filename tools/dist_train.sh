#!/usr/bin/env bash
# Train with one process per device through torchrun (torch.distributed.run) and mmengine's `pytorch` launcher.
#
#   bash tools/dist_train.sh CONFIG GPUS [train.py args...]
#   bash tools/dist_train.sh configs/x.py 8 --work-dir work_dirs/x --amp
#
# Multi-node (2 nodes x 8 GPUs), run on each node with its own NODE_RANK:
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 PORT=29500 bash tools/dist_train.sh configs/x.py 8
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 PORT=29500 bash tools/dist_train.sh configs/x.py 8
#
# GPUS is the number of processes on this node; without CUDA they run on CPU (mmengine then uses gloo).
# Environment: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500), PYTHON (python3).
set -euo pipefail

if [ $# -lt 2 ] || ! [[ $2 =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 CONFIG GPUS [train.py args...]   (GPUS: processes per node, a positive integer)" >&2
  exit 2
fi
CONFIG=$1
GPUS=$2
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m torch.distributed.run \
  --nnodes="${NNODES:-1}" \
  --node_rank="${NODE_RANK:-0}" \
  --master_addr="${MASTER_ADDR:-127.0.0.1}" \
  --master_port="${PORT:-29500}" \
  --nproc_per_node="$GPUS" \
  "$ROOT/tools/train.py" "$CONFIG" --launcher pytorch "${@:3}"
