"""Focal losses: sigmoid focal (segmentation) and Gaussian focal (CenterNet/CenterPoint heatmaps)."""

from __future__ import annotations

import torch
from torchvision.ops import sigmoid_focal_loss as _tv_sigmoid_focal_loss

__all__ = ["sigmoid_focal_loss", "sigmoid_focal_loss_per_class", "gaussian_focal_loss"]


def sigmoid_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 3.0,
                       reduction: str = "mean") -> torch.Tensor:
    """Binary focal loss (Lin et al.) over every element; ``logits``, ``target`` [...] with target in {0, 1} (soft
    targets allowed). ``reduction``: "mean" (default), "sum" or "none".

    CTAB's segmentation uses alpha 0.25, gamma 3 (Sec. III-E, following BEVCar); the DETR heads (BEVFormer) use
    alpha 0.25, gamma 2, summed and divided by the number of matched queries. torchvision's implementation.
    """
    return _tv_sigmoid_focal_loss(logits, target.to(logits.dtype), alpha=alpha, gamma=gamma, reduction=reduction)


def sigmoid_focal_loss_per_class(logits: torch.Tensor, target: torch.Tensor, alpha: float = -1.0,
                                 gamma: float = 2.0) -> torch.Tensor:
    """``[C]``: the binary focal loss of each class (dim 1 of ``logits``/``target`` [B, C, ...]), averaged over the
    class's elements. BEVFusion's segmentation head computes one such term per class (alpha -1 = no class-balance
    weighting, gamma 2) and its total is their sum."""
    loss = _tv_sigmoid_focal_loss(logits, target.to(logits.dtype), alpha=alpha, gamma=gamma, reduction="none")
    return loss.transpose(0, 1).flatten(1).mean(1)


def gaussian_focal_loss(pred: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, gamma: float = 4.0,
                        avg_factor: float | torch.Tensor | None = None, eps: float = 1e-12) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss on a Gaussian heatmap.

    ``pred`` [...] are probabilities (sigmoid, clamped away from 0 and 1 by the caller), ``target`` [...] the
    Gaussian heatmap with exact 1.0 at object centres. Positives: ``-log(p) (1-p)^alpha`` where target == 1;
    negatives: ``-log(1-p) p^alpha (1-target)^gamma``. Summed and divided by ``avg_factor`` (the number of
    positives, at least 1, as CenterPoint's head does), or averaged over elements when it is None.
    """
    pos = target.eq(1).to(pred.dtype)
    neg_w = (1 - target).pow(gamma)
    pos_loss = -(pred + eps).log() * (1 - pred).pow(alpha) * pos
    neg_loss = -(1 - pred + eps).log() * pred.pow(alpha) * neg_w
    total = pos_loss + neg_loss
    if avg_factor is None:
        return total.mean()
    return total.sum() / avg_factor
