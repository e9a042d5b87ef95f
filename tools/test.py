"""Test (evaluate) a checkpoint with an OpenMMLab config (mmdet / mmseg / mmpretrain alike).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE] [--show] [--show-dir DIR]
                         [--wait-time S] [--tta] [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

``--show-dir`` saves pictures of the predictions (boxes and masks, segmentation maps or class labels) as
``WORK_DIR/TIMESTAMP/SHOW_DIR/NAME.png`` for every toolbox, and prints that folder's absolute path at the end. Before
anything is built, missing dataset files and a missing checkpoint stop it with one line naming the fix
(mmmv/engine/preflight.py). The checkpoint is read through mmmv's safe loader (no code in it runs) and loaded strictly.
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..')))

from mmmv.engine.cli import build_runner, parse_test_args  # noqa: E402
from mmmv.engine.toolbox import exit_tool  # noqa: E402


def main():
    args = parse_test_args()
    runner = build_runner(args, mode='test')
    runner.test()


if __name__ == '__main__':
    exit_tool(main)
