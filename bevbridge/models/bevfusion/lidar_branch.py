"""The LiDAR BEV branch of the fusion model: pillars (PointPillars) + SECOND + SECOND-FPN, in pure PyTorch.

    points [B, P, 5] (x, y, z, intensity, dt; Batch.lidar) --voxelize (pillars of ``pillar_size``)-->
    PillarFeatureNet: per point [f..., x - x̄, y - ȳ, z - z̄, x - x_p, y - y_p] -> Linear -> BN -> ReLU -> max
    --scatter--> [B, C_pfn, H_p, W_p] --SECOND (strided stages)--> SECOND-FPN onto the feature grid
    --> F_lidar [B, sum(fpn_channels), H, W]

Deviation from BEVFusion, documented: its LiDAR encoder is a sparse 3D ``SparseEncoder`` over 0.1 x 0.1 x 0.2 m
voxels (spconv, a compiled op bevbridge does not depend on); this dense pillar branch replaces it and ends on the same
feature grid (0.8 m, 128x128 at paper scale), so the ConvFuser and everything after it are BEVFusion's.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from bevbridge.geometry import BEVGrid
from bevbridge.models.bev.second import SECOND, SECONDFPN
from bevbridge.ops.voxelize import Voxels, scatter_to_bev, voxelize

__all__ = ["PillarFeatureNet", "LidarPillarBranch"]


class PillarFeatureNet(nn.Module):
    """PointPillars' PFN with one layer: ``forward(vox, grid) -> [V, out_channels]``.

    Each real point gets its features, its offset from the pillar's point mean (x, y, z) and from the pillar's
    centre (x, y): F + 5 values; Linear (no bias), BatchNorm1d over the real points only (padding slots neither enter
    the statistics nor the max), ReLU, max over the pillar's points.
    """

    def __init__(self, in_features: int, out_channels: int, bn_momentum: float = 0.01):
        super().__init__()
        self.linear = nn.Linear(in_features + 5, out_channels, bias=False)
        self.norm = nn.BatchNorm1d(out_channels, eps=1e-3, momentum=bn_momentum)
        self.out_channels = out_channels

    def forward(self, vox: Voxels, grid: BEVGrid) -> torch.Tensor:
        f = vox.features  # [V, P, F]
        V, P, _ = f.shape
        real = torch.arange(P, device=f.device)[None] < vox.num_points[:, None]  # [V, P]
        n = vox.num_points.clamp(min=1).to(f.dtype)[:, None]
        mean = (f[..., :3] * real[..., None]).sum(1) / n  # [V, 3]
        centre = vox.centres(grid).to(f.dtype)  # [V, 2]
        x = torch.cat([f, f[..., :3] - mean[:, None], f[..., :2] - centre[:, None]], -1)[real]  # [n_real, F + 5]
        x = torch.relu(self.norm(self.linear(x)))
        out = x.new_zeros(V, P, self.out_channels)
        out[real] = x
        return out.amax(1)  # ReLU outputs are >= 0, so the zero padding never wins the max


class LidarPillarBranch(nn.Module):
    """``forward(points [B, P, 5], mask [B, P]) -> F_lidar [B, sum(fpn_channels), H, W]`` on ``grid``.

    Args:
        grid: the BEV feature grid the branch ends on.
        feature_columns: indices of the Batch.lidar columns to encode (x, y, z first).
        pillar_size: pillar side in metres (the pillar grid has ``grid``'s extent).
        z_range: points outside are dropped (one height bin).
        max_points_per_pillar, max_pillars: voxelization limits (mmcv's hard voxelization semantics).
        pfn_channels: PillarFeatureNet output.
        backbone_channels, backbone_layers, backbone_strides: SECOND's stages.
        fpn_channels: SECOND-FPN's output per stage; each stage is brought onto ``grid``.
        bn_momentum: of every BatchNorm of the branch (mmdet3d's 0.01 by default).
    """

    def __init__(self, grid: BEVGrid, *, feature_columns: tuple[int, ...], pillar_size: float = 0.2,
                 z_range: tuple[float, float] = (-5.0, 3.0), max_points_per_pillar: int = 20,
                 max_pillars: int | None = None, pfn_channels: int = 64,
                 backbone_channels: tuple[int, ...] = (64, 128, 256), backbone_layers: tuple[int, ...] = (3, 5, 5),
                 backbone_strides: tuple[int, ...] = (2, 2, 2), fpn_channels: tuple[int, ...] = (128, 128, 128),
                 bn_momentum: float = 0.01):
        super().__init__()
        self.grid = grid
        self.pillar_grid = dataclasses.replace(grid, res=pillar_size)
        self.columns = tuple(feature_columns)
        self.z_range, self.max_points, self.max_pillars = tuple(z_range), max_points_per_pillar, max_pillars
        self.pfn = PillarFeatureNet(len(self.columns), pfn_channels, bn_momentum)
        self.backbone = SECOND(pfn_channels, backbone_channels, backbone_layers, backbone_strides, bn_momentum)
        # stage i has cells pillar_size * prod(strides[:i+1]); SECOND-FPN's stride brings it to grid.res
        up, stride = [], 1
        for s in backbone_strides:
            stride *= s
            r = pillar_size * stride / grid.res  # > 1: coarser than the grid, upsample; < 1: strided conv
            ok = abs(r - round(r)) < 1e-6 if r >= 1 else abs(1 / r - round(1 / r)) < 1e-6
            if not ok:
                raise ValueError(f"LiDAR stage with {pillar_size * stride:g} m cells cannot be brought onto the "
                                 f"{grid.res:g} m feature grid by a whole stride")
            up.append(round(r) if r >= 1 else 1 / round(1 / r))
        self.neck = SECONDFPN(backbone_channels, fpn_channels, tuple(up), bn_momentum)
        self.out_channels = sum(fpn_channels)

    def forward(self, points: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B = points.shape[0]
        pts = points[..., list(self.columns)].float()
        vox = voxelize(pts, self.pillar_grid, self.z_range, 1, self.max_points, self.max_pillars, mask=mask)
        canvas = scatter_to_bev(self.pfn(vox, self.pillar_grid), vox.coors, B, self.pillar_grid)
        return self.neck(self.backbone(canvas))
