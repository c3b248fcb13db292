"""Focal losses: sigmoid focal (segmentation) and Gaussian focal (CenterNet/CenterPoint heatmaps)."""

from __future__ import annotations

import torch
from torchvision.ops import sigmoid_focal_loss as _tv_sigmoid_focal_loss

__all__ = ["sigmoid_focal_loss", "gaussian_focal_loss"]


def sigmoid_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 3.0,
                       reduction: str = "mean") -> torch.Tensor:
    """Binary focal loss (Lin et al.) over every element; ``logits``, ``target`` [...] with target in {0, 1} (soft
    targets allowed). ``reduction``: "mean" (default), "sum" or "none".

    CTAB's segmentation uses alpha 0.25, gamma 3 (Sec. III-E, following BEVCar); the DETR heads (BEVFormer) use
    alpha 0.25, gamma 2, summed and divided by the number of matched queries. torchvision's implementation.
    """
    return _tv_sigmoid_focal_loss(logits, target.to(logits.dtype), alpha=alpha, gamma=gamma, reduction=reduction)


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
