"""Soft Dice loss for multi-label (sigmoid) BEV segmentation."""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["dice_loss"]


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0,
              reduction: Literal["class", "sample_class"] = "class") -> torch.Tensor:
    """Soft Dice ``1 - (2 sum(p g) + s) / (sum(p) + sum(g) + s)``, p = sigmoid(logits); ``logits``, ``target``
    [B, C, H, W].

    ``reduction="class"`` (default): the sums run over the batch and the pixels, one Dice per class, averaged over
    the classes that have ground truth somewhere in the batch. A class absent from the whole batch is left out: its
    Dice term would sit near 1 with a vanishing gradient (``1 / (sum p + 1)^2``), a constant floor that homoscedastic
    weighting (Eq. 8) would read as noise; its false positives are still penalised by the focal term. If no class has
    ground truth the loss is 0 (still connected to the graph).
    ``reduction="sample_class"``: one Dice per (sample, class), all averaged (the earlier behaviour; empty pairs add
    that floor). CTAB weights Dice by 20 next to the focal loss (Sec. III-E, following BEVCar) and does not say how it
    is reduced; we choose "class".
    """
    p = logits.sigmoid()
    g = target.to(p.dtype)
    if reduction == "sample_class":
        p, g = p.flatten(2), g.flatten(2)
        inter = (p * g).sum(-1)
        return (1 - (2 * inter + smooth) / (p.sum(-1) + g.sum(-1) + smooth)).mean()
    if reduction != "class":
        raise ValueError(f"dice_loss: reduction must be 'class' or 'sample_class', got {reduction!r}")
    p, g = p.transpose(0, 1).flatten(1), g.transpose(0, 1).flatten(1)  # [C, B*H*W]
    inter, gs = (p * g).sum(-1), g.sum(-1)
    per_class = 1 - (2 * inter + smooth) / (p.sum(-1) + gs + smooth)
    present = (gs > 0).to(per_class.dtype)
    return (per_class * present).sum() / present.sum().clamp(min=1)
