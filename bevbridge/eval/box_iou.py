"""Pairwise 3D box IoUs for evaluation (numpy; exact polygon clipping by shapely, not differentiable).

Boxes follow DESIGN.md: ``[..., >=7] = (x, y, z, l, w, h, yaw, ...)`` with a geometric centre; extra columns
(velocity) are ignored. Training code that needs a batched, differentiable rotated IoU uses ``bevbridge.ops``;
evaluation does not depend on ops, and this exact reference is fast enough for scoring (candidate pairs are
pre-filtered by their bounding circles and clipped in one vectorised shapely call).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely
import torch

from bevbridge.geometry import box_bev_corners

__all__ = ["scale_iou", "rotated_iou_3d", "box_iou"]


def _np(boxes: Any) -> np.ndarray:
    if isinstance(boxes, torch.Tensor):
        boxes = boxes.detach().cpu().numpy()
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return b.reshape(0, 7)
    if b.ndim != 2 or b.shape[1] < 7:
        raise ValueError(f"boxes must be [n, >=7] (x, y, z, l, w, h, yaw, ...), got shape {b.shape}")
    if not np.isfinite(b[:, :7]).all() or (b[:, 3:6] <= 0).any():
        raise ValueError("boxes must be finite with sizes (l, w, h) > 0")
    return b


def scale_iou(a: Any, b: Any) -> np.ndarray:
    """``[n, m]`` IoU of the boxes' sizes only, as if they shared centre and heading (the devkit's ``scale_iou``,
    used by TOD3Cap's released caption evaluation): ``prod(min(lwh)) / (V_a + V_b - prod(min(lwh)))``."""
    a, b = _np(a), _np(b)
    inter = np.prod(np.minimum(a[:, None, 3:6], b[None, :, 3:6]), axis=-1)
    va, vb = np.prod(a[:, 3:6], axis=-1), np.prod(b[:, 3:6], axis=-1)
    return inter / (va[:, None] + vb[None, :] - inter)


def rotated_iou_3d(a: Any, b: Any) -> np.ndarray:
    """``[n, m]`` exact 3D IoU of yaw-rotated boxes: BEV polygon intersection area x z-overlap / union volume."""
    a, b = _np(a), _np(b)
    out = np.zeros((len(a), len(b)))
    if len(a) == 0 or len(b) == 0:
        return out
    za = (a[:, 2] - a[:, 5] / 2, a[:, 2] + a[:, 5] / 2)
    zb = (b[:, 2] - b[:, 5] / 2, b[:, 2] + b[:, 5] / 2)
    dz = np.clip(np.minimum(za[1][:, None], zb[1][None]) - np.maximum(za[0][:, None], zb[0][None]), 0, None)
    ra, rb = np.hypot(a[:, 3], a[:, 4]) / 2, np.hypot(b[:, 3], b[:, 4]) / 2
    dist = np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])
    i, j = np.nonzero((dist < ra[:, None] + rb[None]) & (dz > 0))
    if len(i):
        pa = shapely.polygons(box_bev_corners(a[:, :7]))
        pb = shapely.polygons(box_bev_corners(b[:, :7]))
        area = shapely.area(shapely.intersection(pa[i], pb[j]))
        inter = area * dz[i, j]
        va, vb = np.prod(a[:, 3:6], axis=-1), np.prod(b[:, 3:6], axis=-1)
        out[i, j] = inter / (va[i] + vb[j] - inter)
    return out


def box_iou(a: Any, b: Any, mode: str = "3d") -> np.ndarray:
    """``[n, m]`` IoU between boxes ``a [n, >=7]`` and ``b [m, >=7]``: ``mode`` is ``"3d"`` or ``"scale"``."""
    if mode == "3d":
        return rotated_iou_3d(a, b)
    if mode == "scale":
        return scale_iou(a, b)
    raise ValueError(f"unknown IoU mode {mode!r}; expected '3d' or 'scale'")
