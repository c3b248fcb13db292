"""Vectorised ray casting against oriented 3D boxes and the ground plane (shared by cameras, LiDAR and radar).

Rays are tested only against the boxes that can contain them: the caller names candidate (ray, box) pairs, usually
the pixels inside a box's projected bounding rectangle (cameras) or the azimuth bins a box spans (LiDAR). Every pair
is a slab test in the box's own frame; the nearest hit per ray wins (a z-buffer over all pairs at once).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bevbridge.geometry import rotation_z

__all__ = ["BoxHits", "cast_boxes", "pairs_from_rects"]


@dataclass
class BoxHits:
    """Nearest box hit per ray (``R`` rays): ``t [R]`` (inf = no hit), ``box [R]`` (-1 = none), ``face [R]`` (axis * 2
    + (1 if the outward normal is +axis else 0); -1 = none), ``local [R, 3]`` hit point in the box frame (centre at
    the origin); plus per box ``hit_rays [M]`` (rays that pierce it, occluded or not) and ``won_rays [M]``."""

    t: torch.Tensor
    box: torch.Tensor
    face: torch.Tensor
    local: torch.Tensor
    hit_rays: torch.Tensor
    won_rays: torch.Tensor


def pairs_from_rects(rects: torch.Tensor, width: int, wrap: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """All (flat ray index, box index) pairs of cells inside per-box rectangles ``rects [M, 4] = (r0, r1, c0, c1)``
    (half-open, int64) on a grid ``width`` columns wide; ``wrap`` takes columns modulo ``width`` (azimuth)."""
    rows = (rects[:, 1] - rects[:, 0]).clamp(min=0)
    cols = (rects[:, 3] - rects[:, 2]).clamp(min=0)
    counts = rows * cols
    box = torch.repeat_interleave(torch.arange(len(rects)), counts)
    if box.numel() == 0:
        return box, box
    starts = torch.cumsum(counts, 0) - counts
    off = torch.arange(int(counts.sum())) - starts[box]
    r = rects[box, 0] + torch.div(off, cols[box], rounding_mode="floor")
    c = rects[box, 2] + off % cols[box]
    if wrap:
        c = c % width
    return r * width + c, box


def cast_boxes(origins: torch.Tensor, dirs: torch.Tensor, boxes: torch.Tensor, ray_idx: torch.Tensor,
               box_idx: torch.Tensor) -> BoxHits:
    """Cast rays ``origins [R, 3] or [3]`` + t * ``dirs [R, 3]`` against ``boxes [M, >=7]`` (x, y, z, l, w, h, yaw)
    for the candidate pairs ``(ray_idx [P], box_idx [P])``. Only hits with t > 0 from outside a box count."""
    R, M = dirs.shape[0], boxes.shape[0]
    dev, dt = dirs.device, dirs.dtype
    t_best = torch.full((R,), float("inf"), device=dev, dtype=dt)
    out = BoxHits(t_best, torch.full((R,), -1, dtype=torch.long, device=dev),
                  torch.full((R,), -1, dtype=torch.long, device=dev), torch.zeros((R, 3), device=dev, dtype=dt),
                  torch.zeros(M, dtype=torch.long, device=dev), torch.zeros(M, dtype=torch.long, device=dev))
    if ray_idx.numel() == 0:
        return out
    b = boxes[box_idx].to(dt)
    o = origins[ray_idx] if origins.dim() == 2 else origins.expand(len(ray_idx), 3)
    d = dirs[ray_idx]
    # into the box frame: x' = R(yaw)^T (x - centre)
    Rt = rotation_z(b[:, 6]).transpose(1, 2)  # [P, 3, 3]
    ol = (Rt @ (o - b[:, :3])[:, :, None])[..., 0]
    dl = (Rt @ d[:, :, None])[..., 0]
    half = b[:, 3:6] / 2
    dl_safe = torch.where(dl.abs() < 1e-12, torch.full_like(dl, 1e-12), dl)
    t1, t2 = (-half - ol) / dl_safe, (half - ol) / dl_safe
    t_near, t_far = torch.minimum(t1, t2), torch.maximum(t1, t2)
    t_enter, axis = t_near.max(-1)
    t_exit = t_far.min(-1).values
    hit = (t_enter <= t_exit) & (t_enter > 0)
    ray_h, box_h, t_h, axis_h = ray_idx[hit], box_idx[hit], t_enter[hit], axis[hit]
    out.hit_rays = torch.bincount(box_h, minlength=M)
    if t_h.numel() == 0:
        return out
    t_best.scatter_reduce_(0, ray_h, t_h, reduce="amin", include_self=True)
    won = t_h == t_best[ray_h]
    # a tie (a ray grazing two boxes at the same t) goes to the higher box index, deterministically
    out.box.scatter_reduce_(0, ray_h[won], box_h[won], reduce="amax", include_self=True)
    won &= out.box[ray_h] == box_h
    ray_w = ray_h[won]
    sign = (dl[hit][won].gather(1, axis_h[won, None])[:, 0] < 0).long()  # entering through the face facing the ray
    out.face[ray_w] = axis_h[won] * 2 + sign
    out.local[ray_w] = ol[hit][won] + t_h[won, None] * dl[hit][won]
    out.won_rays = torch.bincount(out.box[out.box >= 0], minlength=M)
    return out
