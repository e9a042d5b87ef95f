"""Test (evaluate) a checkpoint with an OpenMMLab config (mmdet / mmseg / mmpretrain alike).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE] [--show] [--show-dir DIR]
                         [--wait-time S] [--tta] [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

``--show-dir`` saves pictures of the predictions (boxes and masks, segmentation maps or class labels): mmdet under
``WORK_DIR/TIMESTAMP/SHOW_DIR``, mmseg under ``WORK_DIR/SHOW_DIR``, mmpretrain under ``SHOW_DIR``. The checkpoint is read through mmmv's safe loader: no code in it runs.
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..')))

from mmmv.engine.cli import build_runner, parse_test_args  # noqa: E402
from mmmv.engine.toolbox import run_tool  # noqa: E402


def main():
    args = parse_test_args()
    runner = build_runner(args, mode='test')
    runner.test()


if __name__ == '__main__':
    sys.exit(run_tool(main))
