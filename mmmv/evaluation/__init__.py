"""Segmentation evaluation as the papers report it: pooled DSC / IoU (VM-UNet on ISIC) and per-case Dice / HD95
(TransUNet and VM-UNet on Synapse).

The functions here need only numpy (and scipy for HD95); the mmengine metrics built on them
(``PooledSegMetric``, ``CaseDiceHD95Metric``) live in :mod:`mmmv.evaluation.metrics` and are registered by
:mod:`mmmv.registry` when mmengine is installed.
"""
from .functional import case_dice_hd95, confusion_matrix, hd95, pooled_scores

__all__ = ['confusion_matrix', 'pooled_scores', 'hd95', 'case_dice_hd95']
