"""Dice losses of VM-UNet's recipes, for mmseg decode heads.

mmseg 1.2.2's ``DiceLoss`` cannot stand in for them: with a one-channel head (``out_channels=1``, the binary setup
mmseg documents for sigmoid outputs) it one-hot encodes the labels into a single *background* channel and so rewards
the inverted mask; with several channels it pools all classes of an image into one Dice instead of averaging per-class
Dice. `VMUNetDiceLoss` computes what VM-UNet's ``BceDiceLoss`` and ``CeDiceLoss`` add to the cross-entropy.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

BINARY_SMOOTH = 1.0  # VM-UNet's DiceLoss (ISIC)
MULTICLASS_SMOOTH = 1e-5  # TransUNet's DiceLoss, used by VM-UNet's CeDiceLoss (Synapse)


class VMUNetDiceLoss(nn.Module):
    """Soft Dice loss on logits, as VM-UNet defines it for each task.

    * One output channel (binary, sigmoid): per image, ``1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)`` with
      p = sigmoid(logit) and t = (label == 1); averaged over the batch. Labels must be 0 or 1.
    * C > 1 channels (softmax): per class c over the whole batch,
      ``1 - (2 sum(p_c t_c) + 1e-5) / (sum(p_c^2) + sum(t_c^2) + 1e-5)``; averaged over the C classes (background
      included).

    Pixels labelled `ignore_index` count in neither p nor t.

    Args:
        loss_weight: factor of the loss.
        ignore_index: label of pixels to leave out (mmseg's decode heads pass theirs at call time, which wins).
        loss_name: key of the loss in the log; must start with ``loss_`` to be optimised.
    """

    def __init__(self, loss_weight: float = 1.0, ignore_index: int = 255, loss_name: str = 'loss_dice'):
        super().__init__()
        if not loss_name.startswith('loss_'):
            raise ValueError(f'VMUNetDiceLoss: loss_name must start with "loss_" to be optimised, got {loss_name!r}')
        self.loss_weight = float(loss_weight)
        self.ignore_index = ignore_index
        self._loss_name = loss_name

    @property
    def loss_name(self) -> str:
        return self._loss_name

    def forward(self, pred: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None,
                ignore_index: Optional[int] = None, **unused) -> torch.Tensor:
        """pred: (N, C, H, W) logits; target: (N, H, W) integer labels. `weight` must be None (mmseg passes None
        unless a sampler sets pixel weights, which this loss does not support)."""
        if weight is not None:
            raise ValueError('VMUNetDiceLoss does not support pixel weights (a decode head sampler)')
        if pred.dim() != 4 or target.shape != (pred.shape[0], *pred.shape[2:]):
            raise ValueError(f'VMUNetDiceLoss: pred must be (N, C, H, W) and target (N, H, W), got {tuple(pred.shape)} '
                             f'and {tuple(target.shape)}')
        ignore_index = self.ignore_index if ignore_index is None else ignore_index
        valid = target != ignore_index
        labels = torch.where(valid, target, torch.zeros_like(target))
        if pred.shape[1] == 1:
            loss = self._binary(pred[:, 0].float(), labels, valid)
        else:
            loss = self._multiclass(pred.float(), labels, valid)
        return self.loss_weight * loss

    @staticmethod
    def _binary(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if labels.numel() and labels.max() > 1:
            raise ValueError(f'VMUNetDiceLoss: a one-channel prediction needs labels 0 / 1, got {int(labels.max())}')
        prob = (logits.sigmoid() * valid).flatten(1)
        truth = (labels * valid).float().flatten(1)
        dice = (2 * (prob * truth).sum(1) + BINARY_SMOOTH) / (prob.sum(1) + truth.sum(1) + BINARY_SMOOTH)
        return 1 - dice.mean()

    @staticmethod
    def _multiclass(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        if labels.numel() and labels.max() >= num_classes:
            raise ValueError(f'VMUNetDiceLoss: label {int(labels.max())} is out of range for {num_classes} classes')
        mask = valid.unsqueeze(1)
        prob = logits.softmax(1) * mask
        truth = F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float() * mask
        dims = (0, 2, 3)
        intersection = (prob * truth).sum(dims)
        dice = (2 * intersection + MULTICLASS_SMOOTH) / (
            (prob * prob).sum(dims) + (truth * truth).sum(dims) + MULTICLASS_SMOOTH)
        return (1 - dice).mean()
