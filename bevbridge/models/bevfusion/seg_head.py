"""BEVFusion's ``BEVSegmentationHead``: BEVGridTransform onto the target grid, then the classifier; its focal loss.

    decoded [B, C, 128, 128] on +-51.2 m at 0.8 m
      --BEVGrid.resample (bilinear, each target cell takes the value at its centre)--> [B, C, 200, 200]
        on +-50 m at 0.5 m
      --conv3x3-BN-ReLU x2 (no bias) + conv1x1 (bias)--> logits [B, N_c, 200, 200]

BEVFusion resamples BEFORE the classifier, so its two 3x3 convolutions run at 200x200 (most of the head's FLOPs).
The same head applied to another model's decoded features is BridgeTA's cross-head path (LLD, Fig. 4).
"""

from __future__ import annotations

import torch
from torch import nn

from bevbridge.geometry import BEVGrid
from bevbridge.losses.focal import sigmoid_focal_loss_per_class

__all__ = ["BEVSegHead"]


class BEVSegHead(nn.Module):
    """``forward(decoded [B, C, H, W] on feature_grid) -> logits [B, N_c, H_t, W_t] on target_grid``.

    Args:
        in_channels: decoded channels.
        classes: the map class names (one output channel each, multi-label sigmoid).
        feature_grid, target_grid: the decoded features' grid and the prediction/target grid.
        focal_alpha, focal_gamma: the per-class sigmoid focal loss (BEVFusion: -1 = no alpha weighting, 2).
    """

    def __init__(self, in_channels: int, classes: tuple[str, ...], feature_grid: BEVGrid, target_grid: BEVGrid, *,
                 focal_alpha: float = -1.0, focal_gamma: float = 2.0):
        super().__init__()
        self.classes = tuple(classes)
        self.feature_grid, self.target_grid = feature_grid, target_grid
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        C = in_channels
        self.classifier = nn.Sequential(
            nn.Conv2d(C, C, 3, padding=1, bias=False), nn.BatchNorm2d(C), nn.ReLU(inplace=True),
            nn.Conv2d(C, C, 3, padding=1, bias=False), nn.BatchNorm2d(C), nn.ReLU(inplace=True),
            nn.Conv2d(C, len(self.classes), 1))

    def forward(self, decoded: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.feature_grid.resample(decoded, self.target_grid))

    def loss(self, logits: torch.Tensor, gt_masks: torch.Tensor | None, prefix: str = "seg") -> dict[str, torch.Tensor]:
        """``{"<prefix>": sum over classes of each class's mean focal loss, "<prefix>/<class>": detached terms}``."""
        if gt_masks is None:
            raise ValueError("the segmentation head needs batch.gt_masks (map targets are off in the data config?)")
        if gt_masks.shape != logits.shape:
            raise ValueError(f"segmentation target {tuple(gt_masks.shape)} != prediction {tuple(logits.shape)} "
                             f"(classes {', '.join(self.classes)} on {self.target_grid.H}x{self.target_grid.W})")
        per_class = sigmoid_focal_loss_per_class(logits.float(), gt_masks.float(), self.focal_alpha, self.focal_gamma)
        out = {prefix: per_class.sum()}
        out.update({f"{prefix}/{c}": v.detach() for c, v in zip(self.classes, per_class)})
        return out
