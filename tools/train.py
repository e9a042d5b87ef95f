"""Train a detector, segmentor or classifier from an OpenMMLab config (mmdet / mmseg / mmpretrain alike).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--auto-scale-lr]
                                 [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

The CLI is mmdetection 3.3's. The toolbox is taken from the config's ``default_scope``; mmmv is imported first so its
models are registered and checkpoint loading is safe on torch >= 2.6 (see docs/install.md).
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..')))

from mmmv.engine.cli import build_runner, parse_train_args  # noqa: E402
from mmmv.engine.toolbox import exit_tool  # noqa: E402


def main():
    args = parse_train_args()
    runner = build_runner(args, mode='train')
    runner.train()


if __name__ == '__main__':
    exit_tool(main)
