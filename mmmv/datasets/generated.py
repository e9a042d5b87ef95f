"""What the generated datasets share: argument checks, file names and the ``meta.json`` that marks a generation as
complete, so that an unchanged dataset is not written again and an interrupted one is."""
from __future__ import annotations

import json
import os
import os.path as osp
import re
from typing import Callable, Iterable, Sequence

import numpy as np

MIN_IMAGE_SIZE = 32
SPLITS = ('train', 'val')
FILE_NAME_PATTERN = re.compile(r'^\d{6}\.png$')


def generation_params(num_train: int, num_val: int, image_size: Sequence[int], seed: int, classes: Sequence[str],
                      version: int) -> dict:
    """The parameters recorded in ``meta.json``; ValueError for sizes or counts a generator cannot honour."""
    height, width = (int(s) for s in image_size)
    if min(height, width) < MIN_IMAGE_SIZE:
        raise ValueError(f'image_size must be at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}, got {image_size}')
    if num_train < 1 or num_val < 1:
        raise ValueError(f'num_train and num_val must be positive, got {num_train} and {num_val}')
    return dict(version=version, num_train=int(num_train), num_val=int(num_val), image_size=[height, width],
                seed=int(seed), classes=list(classes))


def file_name(index: int) -> str:
    """The file name of image ``index`` (0-based) of a split: 000001.png, ..."""
    return f'{index + 1:06d}.png'


def clear_generated_files(folder: str) -> None:
    """Create ``folder``, or remove the generated images of an earlier (larger) generation from it."""
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        if FILE_NAME_PATTERN.match(name):
            os.remove(osp.join(folder, name))


def write_json(path: str, obj: dict) -> None:
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(obj, f, separators=(',', ':'))


def is_complete(meta_path: str, params: dict, files: Iterable[str]) -> bool:
    """Whether ``meta_path`` records ``params`` and every one of ``files`` exists."""
    try:
        with open(meta_path, encoding='utf-8') as f:
            if json.load(f) != params:
                return False
    except (OSError, ValueError):
        return False
    return all(osp.isfile(path) for path in files)


def generate_splits(meta_path: str, params: dict, write_split: Callable[[str, int, np.random.Generator], None]
                    ) -> None:
    """Call ``write_split(split, num_images, rng)`` for each split, with ``rng`` seeded by ``(seed, split index)`` so
    that the validation split does not depend on ``num_train``; ``meta_path`` is removed first and written last."""
    if osp.exists(meta_path):
        os.remove(meta_path)  # an interrupted run must not look complete
    for split_id, split in enumerate(SPLITS):
        write_split(split, params[f'num_{split}'], np.random.default_rng([params['seed'], split_id]))
    write_json(meta_path, params)  # last: marks the data as complete
