"""CenterPoint box targets and decoding (Yin et al. 2021; mmdet3d's CenterHead + CenterPointBBoxCoder semantics).

Per object, on the head's BEV grid (RCBEVDet: out_size_factor 8 x voxel 0.1 m = 0.8 m cells,
``BEVGrid.square(51.2, 0.8)`` = 128 x 128): a Gaussian peak at the integer cell of its centre in its class's
heatmap channel (radius ``max(min_radius, int(gaussian_radius(w, l cells, gaussian_overlap)))``), and a
10-d regression target at that cell: ``reg (2)`` = centre - cell corner in cells, ``height (1)``, ``dim (3)`` =
log(l, w, h), ``rot (2)`` = (sin, cos) yaw, ``vel (2)`` = (vx, vy).

``height`` is the geometric centre z with ``z_origin="centre"`` (the default). This is also what mmdet3d's CenterHead
regresses: its targets are built from ``gravity_center`` (the box centre), and only its decoded boxes are shifted
to mmdet3d's bottom-face convention afterwards; so RCBEVDet's released heads regress the centre too and load with
the default. ``"bottom"`` encodes and decodes the bottom-face z instead, for heads trained that way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from bevbridge.geometry import BEVGrid
from bevbridge.ops.gaussian import draw_gaussians, gaussian_radius

__all__ = ["CenterPointCoder", "CenterPointTargets"]


@dataclass
class CenterPointTargets:
    """``heatmap [B, C, H, W]``, ``anno_box [B, max_objs, 10]``, ``inds [B, max_objs]`` (flat y*W + x), ``mask
    [B, max_objs]`` (bool: slot k holds object k of the sample)."""

    heatmap: torch.Tensor
    anno_box: torch.Tensor
    inds: torch.Tensor
    mask: torch.Tensor


@dataclass(frozen=True)
class CenterPointCoder:
    """RCBEVDet defaults: 0.8 m head grid, gaussian_overlap 0.1, min_radius 2, max_objs 500, decode top 500,
    score > 0.1, centres within the post-center range [-61.2, -61.2, -10, 61.2, 61.2, 10]."""

    grid: BEVGrid = BEVGrid(-51.2, 51.2, -51.2, 51.2, 0.8)
    num_classes: int = 10
    gaussian_overlap: float = 0.1
    min_radius: int = 2
    max_objs: int = 500
    max_num: int = 500
    score_threshold: float | None = 0.1
    post_center_range: tuple[float, ...] | None = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)
    z_origin: Literal["centre", "bottom"] = "centre"

    # ------------------------------------------------------------------------------------------------- encoding
    def encode(self, boxes: list[torch.Tensor], labels: list[torch.Tensor]) -> CenterPointTargets:
        """Targets for a batch: ``boxes[b] [n_b, 9]`` (x, y, z, l, w, h, yaw, vx, vy) and ``labels[b] [n_b]``."""
        if len(boxes) != len(labels):
            raise ValueError(f"encode: {len(boxes)} box tensors but {len(labels)} label tensors")
        parts = [self._encode_one(b, lab) for b, lab in zip(boxes, labels)]
        return CenterPointTargets(*(torch.stack(t) for t in zip(*parts)))

    def _encode_one(self, boxes: torch.Tensor, labels: torch.Tensor):
        if boxes.dim() != 2 or boxes.shape[-1] < 9 or labels.shape != boxes.shape[:1]:
            raise ValueError(f"encode needs boxes [n, 9] and labels [n], got {tuple(boxes.shape)}, {tuple(labels.shape)}")
        g, H, W = self.grid, self.grid.H, self.grid.W
        dev, dt = boxes.device, boxes.dtype
        boxes, labels = boxes[: self.max_objs], labels[: self.max_objs].long()
        n = boxes.shape[0]
        heatmap = torch.zeros(self.num_classes, H, W, dtype=dt, device=dev)
        anno = torch.zeros(self.max_objs, 10, dtype=dt, device=dev)
        inds = torch.zeros(self.max_objs, dtype=torch.long, device=dev)
        mask = torch.zeros(self.max_objs, dtype=torch.bool, device=dev)
        if n == 0:
            return heatmap, anno, inds, mask
        if int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
            raise ValueError(f"encode: labels must be in [0, {self.num_classes}), got {labels.tolist()}")
        centre = g.xy_to_cell(boxes[:, :2]) + 0.5  # continuous cells, whole numbers at cell corners
        cell = centre.floor().long()  # mmdet3d: int() of a non-negative coordinate
        size = boxes[:, 3:5] / g.res  # (l, w) in cells
        ok = (size > 0).all(-1) & (cell[:, 0] >= 0) & (cell[:, 0] < W) & (cell[:, 1] >= 0) & (cell[:, 1] < H)
        radius = gaussian_radius(size[:, 1], size[:, 0], self.gaussian_overlap).floor().long().clamp_min(self.min_radius)
        draw_gaussians(heatmap, cell[ok], radius[ok], labels[ok])
        z = boxes[:, 2] - boxes[:, 5] / 2 if self.z_origin == "bottom" else boxes[:, 2]
        target = torch.cat([centre - cell, z[:, None], boxes[:, 3:6].clamp_min(1e-6).log(),
                            boxes[:, 6:7].sin(), boxes[:, 6:7].cos(), boxes[:, 7:9]], 1)
        anno[:n] = torch.where(ok[:, None], target, torch.zeros_like(target))
        inds[:n] = torch.where(ok, cell[:, 1] * W + cell[:, 0], torch.zeros_like(cell[:, 0]))
        mask[:n] = ok
        return heatmap, anno, inds, mask

    # ------------------------------------------------------------------------------------------------- decoding
    def decode(self, heatmap: torch.Tensor, reg: torch.Tensor, height: torch.Tensor, dim: torch.Tensor,
               rot: torch.Tensor, vel: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Boxes from head outputs: ``heatmap [B, C, H, W]`` (probabilities, after sigmoid), ``reg [B, 2, H, W]``,
        ``height [B, 1, H, W]``, ``dim [B, 3, H, W]`` (log sizes, as regressed), ``rot [B, 2, H, W]`` (sin, cos),
        ``vel [B, 2, H, W]``. Returns per sample ``(boxes [k, 9], scores [k], labels [k])``, by decreasing score:
        the top ``max_num`` over (class, cell) (top-k per class, then overall, as mmdet3d), then the score
        threshold and the post-center range."""
        B, C, H, W = heatmap.shape
        if (H, W) != self.grid.shape:
            raise ValueError(f"heatmap is {H}x{W} but the coder's grid is {self.grid.shape}")
        K = min(self.max_num, H * W)
        per_class, per_class_idx = heatmap.view(B, C, H * W).topk(K, dim=-1)  # [B, C, K]
        scores, top = per_class.view(B, C * K).topk(min(K, C * K), dim=-1)  # [B, K]
        labels = torch.div(top, K, rounding_mode="floor")
        cell = torch.gather(per_class_idx.view(B, C * K), 1, top)  # flat y*W + x
        iy, ix = torch.div(cell, W, rounding_mode="floor"), cell % W

        def at(t: torch.Tensor) -> torch.Tensor:  # [B, c, H, W] -> [B, K, c]
            return torch.gather(t.flatten(2), 2, cell[:, None, :].expand(-1, t.shape[1], -1)).transpose(1, 2)

        off = at(reg)
        # cell (ix, iy) + offset is a corner-based coordinate; index_to_xy wants centre-based ones (hence -0.5)
        xy = self.grid.index_to_xy(ix.to(off.dtype) + off[..., 0] - 0.5, iy.to(off.dtype) + off[..., 1] - 0.5)
        dims = at(dim).exp()
        z = at(height)[..., 0]
        if self.z_origin == "bottom":
            z = z + dims[..., 2] / 2
        sc = at(rot)
        yaw = torch.atan2(sc[..., 0], sc[..., 1])
        boxes = torch.cat([xy, z[..., None], dims, yaw[..., None], at(vel)], -1)  # [B, K, 9]
        keep = torch.ones_like(scores, dtype=torch.bool)
        if self.post_center_range is not None:
            lo = boxes.new_tensor(self.post_center_range[:3])
            hi = boxes.new_tensor(self.post_center_range[3:])
            keep &= ((boxes[..., :3] >= lo) & (boxes[..., :3] <= hi)).all(-1)
        if self.score_threshold is not None:
            keep &= scores > self.score_threshold
        return [(boxes[b][keep[b]], scores[b][keep[b]], labels[b][keep[b]]) for b in range(B)]
