"""Soft Dice loss for multi-label (sigmoid) BEV segmentation."""

from __future__ import annotations

import torch

__all__ = ["dice_loss"]


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 - (2 sum(p g) + s) / (sum(p) + sum(g) + s)`` per (sample, class), averaged.

    ``logits``, ``target`` [B, C, H, W]; p = sigmoid(logits). The smoothing term ``s`` keeps empty classes (no GT
    and no prediction) at zero loss. CTAB weights it by 20 next to the focal loss (Sec. III-E, following BEVCar).
    """
    p = logits.sigmoid().flatten(2)
    g = target.to(p.dtype).flatten(2)
    inter = (p * g).sum(-1)
    return (1 - (2 * inter + smooth) / (p.sum(-1) + g.sum(-1) + smooth)).mean()
