"""Non-maximum suppression for BEV boxes: rotated NMS, circle NMS (CenterPoint) and scale-NMS (BEVDet).

Greedy NMS keeps a box iff no kept box of higher score suppresses it. It is computed without a loop over boxes:
with the boxes sorted by score and ``S[j, i]`` = "j (higher score) suppresses i", iterate
``keep_i = not any_j (keep_j and S[j, i])`` from "keep everything". Entry i depends only on entries j < i, so after
t rounds the first t entries are final; it stops at the fixed point, which is exactly the greedy answer, after
(longest chain of suppressions + 1) rounds of O(n^2) tensor work.

Boxes are ``[n, >=7] = (x, y, z, l, w, h, yaw, ...)`` (DESIGN.md). All functions return the indices of the kept
boxes into the input, ordered by decreasing score.
"""

from __future__ import annotations

from typing import Sequence

import torch

from bevbridge.ops.iou3d import box_iou_bev

__all__ = ["greedy_keep", "nms_rotated", "circle_nms", "scale_nms", "RCBEVDET_NMS_SCALE"]

# BEVDet/RCBEVDet scale-NMS factors per nuScenes detection class (devkit order).
RCBEVDET_NMS_SCALE: tuple[float, ...] = (1.0, 0.7, 0.7, 0.4, 0.55, 1.1, 1.0, 1.0, 1.5, 3.5)


def greedy_keep(suppress: torch.Tensor) -> torch.Tensor:
    """``suppress [n, n]`` bool for boxes sorted by decreasing score (only ``j < i`` entries are used) -> keep ``[n]``."""
    n = suppress.shape[0]
    s = torch.triu(suppress, diagonal=1)
    keep = torch.ones(n, dtype=torch.bool, device=suppress.device)
    for _ in range(n):  # rounds, not boxes: stops at the fixed point (see module docstring)
        new = ~(s & keep[:, None]).any(0)
        if torch.equal(new, keep):
            break
        keep = new
    return keep


def _sorted(scores: torch.Tensor, pre_max: int | None) -> torch.Tensor:
    order = torch.argsort(scores, descending=True, stable=True)
    return order[:pre_max] if pre_max is not None else order


def _same_class(labels: torch.Tensor | None, order: torch.Tensor) -> torch.Tensor | bool:
    if labels is None:
        return True
    lab = labels[order]
    return lab[:, None] == lab[None, :]


def nms_rotated(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, labels: torch.Tensor | None = None,
                pre_max: int | None = None, post_max: int | None = None) -> torch.Tensor:
    """Greedy NMS on rotated BEV IoU (mmdet3d's ``nms_bev``): a box is dropped when its BEV IoU with a kept,
    higher-scoring box exceeds ``iou_threshold``. With ``labels [n]``, only boxes of the same label compete.
    ``pre_max`` boxes of highest score enter, at most ``post_max`` leave."""
    if boxes.dim() != 2 or boxes.shape[-1] < 7 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"nms_rotated needs boxes [n, >=7] and scores [n], got {tuple(boxes.shape)} and "
                         f"{tuple(scores.shape)}")
    order = _sorted(scores, pre_max)
    b = boxes[order]
    keep = greedy_keep((box_iou_bev(b, b) > iou_threshold) & _same_class(labels, order))
    return order[keep][:post_max]


def circle_nms(centres: torch.Tensor, scores: torch.Tensor, threshold: float, labels: torch.Tensor | None = None,
               post_max: int | None = None) -> torch.Tensor:
    """CenterPoint's circle NMS on ``centres [n, 2]``: a box is dropped when its SQUARED centre distance to a kept,
    higher-scoring box is ``<= threshold``. (CenterPoint passes its per-task ``min_radius`` straight in as this
    threshold, e.g. 4 for cars, so it is a squared distance in m^2, not a radius; kept as published.)"""
    if centres.dim() != 2 or centres.shape[-1] < 2 or scores.shape != centres.shape[:1]:
        raise ValueError(f"circle_nms needs centres [n, 2] and scores [n], got {tuple(centres.shape)} and "
                         f"{tuple(scores.shape)}")
    order = _sorted(scores, None)
    c = centres[order, :2]
    d2 = (c[:, None, :] - c[None, :, :]).square().sum(-1)
    keep = greedy_keep((d2 <= threshold) & _same_class(labels, order))
    return order[keep][:post_max]


def scale_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float,
              factors: Sequence[float] | torch.Tensor = RCBEVDET_NMS_SCALE, class_aware: bool = False,
              pre_max: int | None = None, post_max: int | None = None) -> torch.Tensor:
    """BEVDet's scale-NMS: box sizes (l, w, h) are multiplied by their class's factor before rotated NMS, so small
    objects (pedestrians x1.5, cones x3.5) can overlap at all and large ones (bus x0.4) overlap less. The returned
    indices refer to the unscaled input boxes. BEVDet/RCBEVDet run one NMS over all classes of a task
    (``class_aware=False``; RCBEVDet has one task of 10 classes, threshold 0.2, pre 1000, post 500)."""
    f = torch.as_tensor(factors, dtype=boxes.dtype, device=boxes.device)
    if labels.shape != scores.shape or (labels.numel() and int(labels.max()) >= f.numel()):
        raise ValueError(f"scale_nms needs labels [n] (< {f.numel()} factors), got {tuple(labels.shape)}")
    scaled = boxes.clone()
    scaled[:, 3:6] = boxes[:, 3:6] * f[labels][:, None]
    return nms_rotated(scaled, scores, iou_threshold, labels if class_aware else None, pre_max, post_max)
