"""Rotated BEV IoU and 3D IoU of boxes ``[..., >=7] = (x, y, z, l, w, h, yaw, ...)`` (geometric centre, DESIGN.md).

The intersection of two rotated rectangles is a convex polygon whose vertices are among: the corners of each box
inside the other, and the crossings of their edges (at most 4 + 4 + 16 candidates). All candidates are computed for
all pairs at once; the valid ones are ordered by angle around their mean (valid because the polygon is convex) and
the shoelace formula gives the area. Invalid candidates are replaced by the first valid vertex, which adds
zero-length edges. Only pairs whose circumscribed circles overlap are evaluated; every other pair has IoU 0.
Coordinates are taken relative to the first box's centre, so float32 precision does not depend on the distance
from the ego vehicle.
"""

from __future__ import annotations

import torch

from bevbridge.geometry import box_bev_corners

__all__ = ["box_iou_bev", "box_iou_3d", "bev_intersection_area"]

_CHUNK = 1 << 16  # pairs evaluated at once (bounds memory at ~30 MB in float32)


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _inside(points: torch.Tensor, poly: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``points [P, k, 2]`` inside (or on, within ``eps [P, 1]``) the CCW convex ``poly [P, 4, 2]`` -> ``[P, k]``."""
    edges = torch.roll(poly, -1, dims=1) - poly  # [P, 4, 2]
    rel = points[:, :, None, :] - poly[:, None, :, :]  # [P, k, 4, 2]
    return (_cross(edges[:, None], rel) >= -eps[..., None]).all(-1)


def bev_intersection_area(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Area of the BEV intersection of aligned pairs ``boxes1 [P, >=7]`` and ``boxes2 [P, >=7]`` -> ``[P]``."""
    origin = boxes1[:, None, :2]
    a = box_bev_corners(boxes1) - origin  # [P, 4, 2], counter-clockwise
    b = box_bev_corners(boxes2) - origin
    scale = torch.maximum(boxes1[:, 3:5].amax(-1), boxes2[:, 3:5].amax(-1)).clamp_min(1e-6)
    eps = (scale * scale * 1e-6)[:, None]  # [P, 1]: a tolerance on cross products (area units)
    ra = torch.roll(a, -1, dims=1) - a  # edges of a: [P, 4, 2]
    rb = torch.roll(b, -1, dims=1) - b
    qp = b[:, None, :, :] - a[:, :, None, :]  # [P, 4 (edge of a), 4 (edge of b), 2]
    denom = _cross(ra[:, :, None], rb[:, None, :])
    ok = denom.abs() > eps[..., None]
    safe = torch.where(ok, denom, torch.ones_like(denom))
    t = _cross(qp, rb[:, None]) / safe
    u = _cross(qp, ra[:, :, None]) / safe
    tol = 1e-6
    cross_ok = ok & (t >= -tol) & (t <= 1 + tol) & (u >= -tol) & (u <= 1 + tol)
    crossings = a[:, :, None, :] + t[..., None] * ra[:, :, None, :]  # [P, 4, 4, 2]
    cand = torch.cat([a, b, crossings.flatten(1, 2)], 1)  # [P, 24, 2]
    valid = torch.cat([_inside(a, b, eps), _inside(b, a, eps), cross_ok.flatten(1)], 1)  # [P, 24]
    cand = torch.where(valid[..., None], cand, torch.zeros_like(cand))
    n = valid.sum(1)
    centre = cand.sum(1) / n.clamp_min(1)[:, None]
    rel = cand - centre[:, None]
    angle = torch.where(valid, torch.atan2(rel[..., 1], rel[..., 0]), torch.full_like(rel[..., 0], 10.0))
    order = angle.argsort(1)
    poly = torch.gather(rel, 1, order[..., None].expand(-1, -1, 2))
    poly = torch.where(torch.gather(valid, 1, order)[..., None], poly, poly[:, :1])
    area = 0.5 * _cross(poly, torch.roll(poly, -1, dims=1)).sum(1).abs()
    return torch.where(n >= 3, area, torch.zeros_like(area))


def _candidate_pairs(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs whose circumscribed circles overlap (all others cannot intersect)."""
    r1 = 0.5 * boxes1[:, 3:5].norm(dim=-1)
    r2 = 0.5 * boxes2[:, 3:5].norm(dim=-1)
    dist = torch.cdist(boxes1[:, :2], boxes2[:, :2])
    return torch.nonzero(dist < r1[:, None] + r2[None, :], as_tuple=True)


def _pairwise(boxes1: torch.Tensor, boxes2: torch.Tensor, aligned: bool, fn) -> torch.Tensor:
    """Evaluate ``fn(b1 [P], b2 [P]) -> [P]`` on overlapping candidates; zeros elsewhere."""
    if aligned:
        if boxes1.shape[0] != boxes2.shape[0]:
            raise ValueError(f"aligned IoU needs as many boxes in both sets, got {boxes1.shape[0]} and {boxes2.shape[0]}")
        out = boxes1.new_zeros(boxes1.shape[0])
        i = j = torch.arange(boxes1.shape[0], device=boxes1.device)
    else:
        out = boxes1.new_zeros(boxes1.shape[0], boxes2.shape[0])
        i, j = _candidate_pairs(boxes1, boxes2)
    vals = [fn(boxes1[i[s:s + _CHUNK]], boxes2[j[s:s + _CHUNK]]) for s in range(0, i.numel(), _CHUNK)]
    if vals:
        v = torch.cat(vals)
        if aligned:
            out = v
        else:
            out[i, j] = v
    return out


def _check(boxes: torch.Tensor, name: str) -> torch.Tensor:
    if boxes.dim() != 2 or boxes.shape[-1] < 7:
        raise ValueError(f"{name} must be [N, >=7] boxes (x, y, z, l, w, h, yaw, ...), got {tuple(boxes.shape)}")
    return boxes


def box_iou_bev(boxes1: torch.Tensor, boxes2: torch.Tensor, aligned: bool = False) -> torch.Tensor:
    """Rotated BEV IoU: ``[N, M]`` (or ``[N]`` with ``aligned=True``) for ``boxes1 [N, >=7]``, ``boxes2 [M, >=7]``."""
    boxes1, boxes2 = _check(boxes1, "boxes1"), _check(boxes2, "boxes2")

    def iou(b1, b2):
        a1, a2 = b1[:, 3] * b1[:, 4], b2[:, 3] * b2[:, 4]
        inter = torch.minimum(bev_intersection_area(b1, b2), torch.minimum(a1, a2))  # the tolerance can overshoot
        union = a1 + a2 - inter
        return inter / union.clamp_min(1e-12)

    return _pairwise(boxes1, boxes2, aligned, iou)


def box_iou_3d(boxes1: torch.Tensor, boxes2: torch.Tensor, aligned: bool = False) -> torch.Tensor:
    """3D IoU of yaw-rotated boxes (BEV intersection x height overlap), same shapes as ``box_iou_bev``."""
    boxes1, boxes2 = _check(boxes1, "boxes1"), _check(boxes2, "boxes2")

    def iou(b1, b2):
        top = torch.minimum(b1[:, 2] + b1[:, 5] / 2, b2[:, 2] + b2[:, 5] / 2)
        bottom = torch.maximum(b1[:, 2] - b1[:, 5] / 2, b2[:, 2] - b2[:, 5] / 2)
        bev = torch.minimum(bev_intersection_area(b1, b2), torch.minimum(b1[:, 3] * b1[:, 4], b2[:, 3] * b2[:, 4]))
        inter = bev * (top - bottom).clamp_min(0)
        union = b1[:, 3:6].prod(-1) + b2[:, 3:6].prod(-1) - inter
        return inter / union.clamp_min(1e-12)

    return _pairwise(boxes1, boxes2, aligned, iou)
