"""mmengine metrics for the VM-UNet configs: pooled DSC / mIoU (ISIC, Synapse) and per-case DSC / HD95 (Synapse).

Both read mmseg's ``SegDataSample`` dicts (``pred_sem_seg``, ``gt_sem_seg``, ``img_path``), so they need mmengine
but not mmseg; they are registered in mmengine's root ``METRICS`` by :mod:`mmmv.registry`, which mmseg's registry
searches. Definitions: :mod:`mmmv.evaluation.functional`. Scores are in percent, HD95 in voxels (or in the units of
``spacing``).
"""
import os.path as osp
import re
import zlib
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger

from .functional import case_dice_hd95, confusion_matrix, pooled_scores

PERCENT = 100.0
DEFAULT_CASE_PATTERN = r'^(?P<case>.+)_slice(?P<slice>\d+)$'


def _labels(data_sample: dict, key: str) -> np.ndarray:
    if key not in data_sample:
        raise KeyError(f'the data sample has no {key!r}: evaluation needs LoadAnnotations in the test pipeline')
    return data_sample[key]['data'].squeeze().cpu().numpy()


def _class_names(metric: BaseMetric) -> List[str]:
    meta = metric.dataset_meta or {}
    if 'classes' not in meta:
        raise ValueError(f'{type(metric).__name__}: the dataset meta has no "classes"; evaluate through a runner '
                         'whose dataset declares them')
    return list(meta['classes'])


def _table(rows: Dict[str, Sequence[float]], names: Sequence[str]) -> str:
    """Per-class lines: one row per class, one column per score (two decimals)."""
    first = max(len(n) for n in names)
    widths = [max(8, len(key)) + 2 for key in rows]
    lines = [' ' * first + ''.join(f'{key:>{w}}' for key, w in zip(rows, widths))]
    for i, name in enumerate(names):
        lines.append(name.ljust(first) + ''.join(f'{values[i]:{w}.2f}' for values, w in zip(rows.values(), widths)))
    return '\n'.join(lines)


class PooledSegMetric(BaseMetric):
    """DSC and IoU from one confusion matrix over every evaluated pixel, as VM-UNet reports on ISIC.

    Keys (percent):
        binary (two classes): ``DSC``, ``mIoU`` (both of the foreground class: VM-UNet's "f1_or_dsc" and "miou"),
        ``accuracy``, ``sensitivity``, ``specificity``.
        more classes: ``DSC`` and ``mIoU`` (means over the foreground classes, i.e. all but `background_index`),
        ``aAcc`` (pixel accuracy), and ``DSC.<class>``, ``IoU.<class>`` for every class.
    A class absent from both ground truth and prediction has an undefined score; it is reported as NaN and left out
    of the means.

    Args:
        ignore_index: ground-truth label left out of the counts.
        background_index: the class the means leave out; None keeps every class.
        collect_device, prefix: as mmengine's ``BaseMetric``.
    """

    def __init__(self,
                 ignore_index: int = 255,
                 background_index: Optional[int] = 0,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.ignore_index = ignore_index
        self.background_index = background_index

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        num_classes = len(_class_names(self))
        for data_sample in data_samples:
            pred, gt = _labels(data_sample, 'pred_sem_seg'), _labels(data_sample, 'gt_sem_seg')
            self.results.append(confusion_matrix(pred, gt, num_classes, self.ignore_index))

    def compute_metrics(self, results: List[np.ndarray]) -> Dict[str, float]:
        names = _class_names(self)
        confusion = np.sum(results, axis=0)
        scores = pooled_scores(confusion)
        MMLogger.get_current_instance().info(
            f'pooled over {int(confusion.sum())} pixels of {len(results)} images:\n' +
            _table({key: PERCENT * scores[key] for key in ('dice', 'iou', 'sensitivity', 'specificity')}, names))
        if len(names) == 2:
            foreground = 1 - (self.background_index or 0)
            return dict(DSC=PERCENT * scores['dice'][foreground], mIoU=PERCENT * scores['iou'][foreground],
                        accuracy=PERCENT * float(scores['accuracy']),
                        sensitivity=PERCENT * scores['sensitivity'][foreground],
                        specificity=PERCENT * scores['specificity'][foreground])
        kept = [i for i in range(len(names)) if i != self.background_index]
        out = dict(DSC=PERCENT * np.nanmean(scores['dice'][kept]), mIoU=PERCENT * np.nanmean(scores['iou'][kept]),
                   aAcc=PERCENT * float(scores['accuracy']))
        for i, name in enumerate(names):
            out[f'DSC.{name}'] = PERCENT * scores['dice'][i]
            out[f'IoU.{name}'] = PERCENT * scores['iou'][i]
        return {key: float(value) for key, value in out.items()}


class CaseDiceHD95Metric(BaseMetric):
    """Per-case 3D Dice and HD95 of each foreground class from 2D slice predictions (TransUNet / VM-UNet Synapse).

    Slices are grouped into cases by their file names: `case_pattern` is matched against the image file name without
    its extension and must define the groups ``case`` and ``slice`` (default: ``case0001_slice012``). Each case's
    slices must be numbered without gaps; they are stacked in slice order into volumes, and every foreground class is
    scored with :func:`~mmmv.evaluation.functional.case_dice_hd95`. Scores are averaged over cases per class, then over
    classes.

    Keys (under ``prefix``, default ``case``): ``DSC`` (percent) and ``HD95`` (the means over classes), and
    ``DSC.<class>``, ``HD95.<class>`` per foreground class.

    Args:
        case_pattern: regular expression with the named groups ``case`` and ``slice``.
        background_index: the class not scored.
        spacing: voxel size (slice, row, column) for HD95; None means voxel units, as the papers report.
        collect_device, prefix: as mmengine's ``BaseMetric``.
    """
    default_prefix = 'case'

    def __init__(self,
                 case_pattern: str = DEFAULT_CASE_PATTERN,
                 background_index: int = 0,
                 spacing: Optional[Sequence[float]] = None,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.case_pattern = re.compile(case_pattern)
        if not {'case', 'slice'} <= set(self.case_pattern.groupindex):
            raise ValueError(f'case_pattern {case_pattern!r} must define the named groups "case" and "slice"')
        self.background_index = background_index
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        for data_sample in data_samples:
            stem = osp.splitext(osp.basename(data_sample['img_path']))[0]
            match = self.case_pattern.match(stem)
            if match is None:
                raise ValueError(f'{type(self).__name__}: image name {stem!r} does not match case_pattern '
                                 f'{self.case_pattern.pattern!r}')
            pred = _labels(data_sample, 'pred_sem_seg').astype(np.uint8)
            gt = _labels(data_sample, 'gt_sem_seg').astype(np.uint8)
            if pred.shape != gt.shape:
                raise ValueError(f'{stem}: prediction {pred.shape} and ground truth {gt.shape} differ in shape')
            # masks compress 50-100x: a Synapse test set (1568 slices of 512 x 512) stays far below 100 MB
            self.results.append((match['case'], int(match['slice']), pred.shape, zlib.compress(pred.tobytes(), 1),
                                 zlib.compress(gt.tobytes(), 1)))

    def compute_metrics(self, results: list) -> Dict[str, float]:
        names = _class_names(self)
        classes = [i for i in range(len(names)) if i != self.background_index]
        cases = defaultdict(list)
        for case, index, shape, pred, gt in results:
            cases[case].append((index, shape, pred, gt))
        dice = np.zeros((len(cases), len(classes)))
        hd = np.zeros((len(cases), len(classes)))
        for row, (case, slices) in enumerate(sorted(cases.items())):
            pred, gt = self._volumes(case, slices)
            for column, label in enumerate(classes):
                dice[row, column], hd[row, column] = case_dice_hd95(pred == label, gt == label, self.spacing)
        dice_per_class, hd_per_class = PERCENT * dice.mean(0), hd.mean(0)
        class_names = [names[i] for i in classes]
        MMLogger.get_current_instance().info(
            f'per-case scores, mean over {len(cases)} cases:\n' +
            _table({'DSC': dice_per_class, 'HD95': hd_per_class}, class_names))
        out = dict(DSC=dice_per_class.mean(), HD95=hd_per_class.mean())
        for name, d, h in zip(class_names, dice_per_class, hd_per_class):
            out[f'DSC.{name}'], out[f'HD95.{name}'] = d, h
        return {key: float(value) for key, value in out.items()}

    @staticmethod
    def _volumes(case: str, slices: list):
        """The (depth, H, W) prediction and ground truth of one case, in slice order."""
        slices.sort(key=lambda s: s[0])
        indices = [s[0] for s in slices]
        expected = list(range(indices[0], indices[0] + len(indices)))
        if indices != expected:
            missing = sorted(set(expected) - set(indices))
            repeated = sorted({i for i in indices if indices.count(i) > 1})
            raise ValueError(f'case {case!r}: slices must be numbered without gaps or repeats; missing {missing[:10]}, '
                             f'repeated {repeated[:10]}')
        shapes = {s[1] for s in slices}
        if len(shapes) != 1:
            raise ValueError(f'case {case!r}: its slices have different shapes {sorted(shapes)}')
        shape = shapes.pop()

        def stack(position):
            return np.stack([np.frombuffer(zlib.decompress(s[position]), np.uint8).reshape(shape) for s in slices])

        return stack(2), stack(3)
