"""Segmentation scores as the medical-segmentation papers mmmv reproduces compute them (numpy; HD95 uses scipy).

Two protocols:

* Pooled (VM-UNet on ISIC2017/2018): one confusion matrix over every pixel of the evaluation set, not a mean of
  per-image scores. From it, per class c: ``DSC = 2 TP / (2 TP + FP + FN)`` and ``IoU = TP / (TP + FP + FN)``; for a
  binary task also ``accuracy = (TP + TN) / all``, ``sensitivity = TP / (TP + FN)``, ``specificity = TN / (TN + FP)``
  of the foreground class, which is what VM-UNet prints (its "miou" is the IoU of the lesion class).
* Per case (TransUNet / VM-UNet on Synapse): for each 3D case and each foreground class, the Dice and the 95th
  percentile Hausdorff distance of the two binary volumes (medpy's ``dc`` and ``hd95``), with TransUNet's rule for
  empty masks (`case_dice_hd95`); scores are averaged over cases, then over classes.
"""
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

HD_PERCENTILE = 95


# ----------------------------------------------------------------------------------------------------
# Pooled scores.
# ----------------------------------------------------------------------------------------------------
def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: Optional[int] = 255
                     ) -> np.ndarray:
    """(num_classes, num_classes) int64 counts, rows = ground truth, columns = prediction.

    Pixels whose ground truth is `ignore_index` are left out. Raises ValueError for mismatched shapes, or labels
    outside ``0 .. num_classes - 1`` (other than `ignore_index` in the ground truth).
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f'confusion_matrix: pred has shape {pred.shape} but gt has shape {gt.shape}')
    valid = gt != ignore_index if ignore_index is not None else np.ones(gt.shape, dtype=bool)
    pred, gt = pred[valid].astype(np.int64), gt[valid].astype(np.int64)
    for name, labels in (('pred', pred), ('gt', gt)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f'confusion_matrix: {name} holds labels outside 0..{num_classes - 1} '
                             f'(min {labels.min()}, max {labels.max()}); ignore_index is {ignore_index}')
    counts = np.bincount(gt * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator as float64, NaN where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.full(np.broadcast(numerator, denominator).shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def pooled_scores(confusion: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-class scores of a pooled confusion matrix (rows gt, columns pred).

    Returns:
        ``dice``, ``iou``, ``sensitivity`` (recall), ``specificity``: float arrays of shape (num_classes,), NaN for a
        class whose score is 0 / 0 (absent from ground truth and prediction); ``accuracy``: the pixel accuracy, a
        float array of shape ().
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f'pooled_scores: confusion must be square, got shape {confusion.shape}')
    tp = np.diag(confusion)
    fp = confusion.sum(0) - tp
    fn = confusion.sum(1) - tp
    tn = confusion.sum() - tp - fp - fn
    return dict(
        dice=_ratio(2 * tp, 2 * tp + fp + fn),
        iou=_ratio(tp, tp + fp + fn),
        sensitivity=_ratio(tp, tp + fn),
        specificity=_ratio(tn, tn + fp),
        accuracy=_ratio(tp.sum(), confusion.sum()),
    )


# ----------------------------------------------------------------------------------------------------
# Hausdorff distance and per-case scores.
# ----------------------------------------------------------------------------------------------------
def _ndimage():
    try:
        from scipy import ndimage
    except ImportError as error:  # scipy comes with mmsegmentation; plain installs may lack it
        raise ImportError('HD95 needs scipy (installed with mmsegmentation): pip install scipy') from error
    return ndimage


def _crop_to(*masks: np.ndarray) -> Tuple[np.ndarray, ...]:
    """The masks cropped to the bounding box of their union, grown by one voxel (kept inside the array), so that
    erosion and distance transforms inside the crop equal those of the whole array."""
    union = np.logical_or.reduce(masks)
    box = []
    for axis in range(union.ndim):
        other_axes = tuple(a for a in range(union.ndim) if a != axis)
        present = np.flatnonzero(union.any(axis=other_axes))
        box.append(slice(max(present[0] - 1, 0), present[-1] + 2))
    return tuple(mask[tuple(box)] for mask in masks)


def _surface_distances(result: np.ndarray, reference: np.ndarray, spacing, connectivity: int) -> np.ndarray:
    """Distances from each border voxel of `result` to the nearest border voxel of `reference` (medpy's
    ``__surface_distances``): a border voxel is a foreground voxel removed by one erosion."""
    ndimage = _ndimage()
    footprint = ndimage.generate_binary_structure(result.ndim, connectivity)
    result_border = result ^ ndimage.binary_erosion(result, structure=footprint, iterations=1)
    reference_border = reference ^ ndimage.binary_erosion(reference, structure=footprint, iterations=1)
    distance = ndimage.distance_transform_edt(~reference_border, sampling=spacing)
    return distance[result_border]


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Optional[Sequence[float]] = None, connectivity: int = 1
         ) -> float:
    """95th percentile of the symmetric surface distances between two binary masks (medpy's ``binary.hd95``).

    Args:
        pred, gt: boolean (or 0/1) arrays of one shape, 2D or 3D; both must hold foreground.
        spacing: voxel size per axis; None means 1 (distances in voxels, as TransUNet and VM-UNet report).
        connectivity: neighbourhood of the erosion that finds the borders (1: faces only).
    """
    pred, gt = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    if pred.shape != gt.shape:
        raise ValueError(f'hd95: pred has shape {pred.shape} but gt has shape {gt.shape}')
    if not pred.any() or not gt.any():
        raise ValueError('hd95: undefined for an empty mask (pred and gt must both hold foreground)')
    if spacing is not None and len(spacing) != pred.ndim:
        raise ValueError(f'hd95: spacing has {len(spacing)} values for {pred.ndim}-D masks')
    pred, gt = _crop_to(pred, gt)
    distances = np.hstack((_surface_distances(pred, gt, spacing, connectivity),
                           _surface_distances(gt, pred, spacing, connectivity)))
    return float(np.percentile(distances, HD_PERCENTILE))


def case_dice_hd95(pred: np.ndarray, gt: np.ndarray, spacing: Optional[Sequence[float]] = None
                   ) -> Tuple[float, float]:
    """(Dice, HD95) of one class in one case, with TransUNet's rule for empty masks (kept by VM-UNet):

    * both hold foreground: the Dice ``2 |P & G| / (|P| + |G|)`` and `hd95`;
    * prediction only (class absent from the case): (1, 0);
    * no prediction (whether or not the class is present): (0, 0).
    """
    pred, gt = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    if pred.shape != gt.shape:
        raise ValueError(f'case_dice_hd95: pred has shape {pred.shape} but gt has shape {gt.shape}')
    if pred.any() and gt.any():
        dice = 2.0 * np.logical_and(pred, gt).sum() / (pred.sum() + gt.sum())
        return float(dice), hd95(pred, gt, spacing)
    if pred.any():
        return 1.0, 0.0
    return 0.0, 0.0
