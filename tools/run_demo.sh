#!/usr/bin/env bash
# The main job on the embedded demo data: generate it, train Mask R-CNN + MambaVision-T through tools/train.py with
# the headline config (demo overrides in configs/demo/), evaluate COCO bbox/segm mAP and save pictures of predictions.
#
#   bash tools/run_demo.sh [WORK_DIR]          (default work_dirs/demo; extra train options via TRAIN_ARGS="...")
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
WORK_DIR=${1:-work_dirs/demo}
CONFIG=configs/demo/mask_rcnn_mambavision_t_demo.py

start=$(date +%s)
"$PYTHON" tools/misc/make_demo_data.py --root data/demo_coco
# shellcheck disable=SC2086
"$PYTHON" tools/train.py "$CONFIG" --work-dir "$WORK_DIR" ${TRAIN_ARGS:-}
checkpoint=$(cat "$WORK_DIR/last_checkpoint")
"$PYTHON" tools/test.py "$CONFIG" "$checkpoint" --work-dir "$WORK_DIR" --show-dir predictions
pictures=$(ls -td "$WORK_DIR"/*/predictions 2>/dev/null | head -n 1)
pictures=${pictures:+$(cd "$pictures" && pwd)}  # absolute
echo "[mmmv demo] done in $(( $(date +%s) - start )) s"
echo "[mmmv demo] checkpoint: $checkpoint"
echo "[mmmv demo] pictures of predictions: $pictures"
