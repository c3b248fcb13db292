"""Pillar / voxel voxelization of point clouds and the scatter of pillar features back to a BEV canvas.

Semantics are mmcv's hard voxelization, per sample: points outside the grid or the height range are dropped; each
voxel keeps its first ``max_points`` points in input order; voxels are numbered in order of first appearance and at
most ``max_voxels`` are kept per sample. Everything is sorting and indexing (no Python loop over points or voxels):
points are stably sorted by voxel key, their rank inside the voxel is their distance from the voxel's first point,
and voxels are renumbered by their first point's position.

RCBEVDet radar: ``BEVGrid.square(51.2, 0.2)`` (512 x 512), z in [-5, 3] as one 8 m bin, max 10 points per pillar.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bevbridge.geometry import BEVGrid, z_to_index

__all__ = ["Voxels", "voxelize", "scatter_to_bev"]


@dataclass
class Voxels:
    """``features [V, max_points, F]`` (zero-padded points), ``num_points [V]``, ``coors [V, 4] = (b, iz, iy, ix)``
    int64 (mmdet3d's order), ``point_voxel [B, M]`` the voxel of each input point (-1 if dropped)."""

    features: torch.Tensor
    num_points: torch.Tensor
    coors: torch.Tensor
    point_voxel: torch.Tensor

    def centres(self, grid: BEVGrid) -> torch.Tensor:
        """``[V, 2]`` (x, y) metres of each pillar's cell centre (for PointPillars' centre offsets)."""
        return grid.index_to_xy(self.coors[:, 3].to(self.features.dtype), self.coors[:, 2].to(self.features.dtype))


def voxelize(points: torch.Tensor, grid: BEVGrid, z_range: tuple[float, float] = (-5.0, 3.0), z_bins: int = 1,
             max_points: int = 10, max_voxels: int | None = None, mask: torch.Tensor | None = None) -> Voxels:
    """Voxelize padded point clouds ``points [B, M, F]`` (columns 0-2 = x, y, z in metres; ``mask [B, M]`` marks the
    real points, as ``Batch.radar_mask``/``Batch.lidar_mask``) into pillars (``z_bins=1``) or voxels."""
    if points.dim() != 3 or points.shape[-1] < 3:
        raise ValueError(f"points must be [B, M, F>=3] (x, y, z first), got {tuple(points.shape)}")
    if max_points < 1 or (max_voxels is not None and max_voxels < 1):
        raise ValueError(f"max_points and max_voxels must be >= 1, got {max_points}, {max_voxels}")
    B, M, F = points.shape
    H, W = grid.shape
    dev = points.device
    ix, iy, inside = grid.xy_to_index(points)
    iz, inside_z = z_to_index(points[..., 2], z_range[0], z_range[1], z_bins)
    valid = inside & inside_z & ~points[..., :3].isnan().any(-1)
    if mask is not None:
        if mask.shape != (B, M):
            raise ValueError(f"mask must be [B, M] = {(B, M)}, got {tuple(mask.shape)}")
        valid = valid & mask
    b = torch.arange(B, device=dev).view(B, 1).expand(B, M)
    key = ((b * z_bins + iz) * H + iy) * W + ix
    src = torch.nonzero(valid.flatten()).squeeze(1)  # flat point index, in input order
    order = torch.argsort(key.flatten()[src], stable=True)
    src = src[order]
    skey = key.flatten()[src]
    uniq, counts = torch.unique_consecutive(skey, return_counts=True)
    starts = torch.zeros_like(counts)
    starts[1:] = counts.cumsum(0)[:-1]
    group = torch.repeat_interleave(torch.arange(uniq.numel(), device=dev), counts)  # voxel group of each point
    rank = torch.arange(src.numel(), device=dev) - starts[group]  # position of the point inside its voxel
    # Renumber voxels by first appearance (stable sort: a group's first point is its earliest). The batch index is
    # the key's leading digit and points are flattened batch-major, so this is per sample first appearance too.
    first = src[starts]
    vorder = torch.argsort(first)
    vid_of_group = torch.empty_like(vorder)
    vid_of_group[vorder] = torch.arange(vorder.numel(), device=dev)
    gb = uniq // (z_bins * H * W)  # sample of each group
    if max_voxels is not None:
        per_sample = torch.bincount(gb, minlength=B)
        sample_start = torch.zeros(B, dtype=torch.long, device=dev)
        sample_start[1:] = per_sample.cumsum(0)[:-1]
        keep_group = vid_of_group - sample_start[gb] < max_voxels
        new_id = torch.cumsum(keep_group[vorder].long(), 0) - 1  # compact ids, in voxel order
        vid_of_group = torch.where(keep_group, new_id[vid_of_group], -1)
    V = int((vid_of_group >= 0).sum())
    vid = vid_of_group[group]
    keep = (rank < max_points) & (vid >= 0)
    features = points.new_zeros(V, max_points, F)
    features[vid[keep], rank[keep]] = points.reshape(B * M, F)[src[keep]]
    num_points = torch.zeros(V, dtype=torch.long, device=dev).index_add_(0, vid[keep], torch.ones_like(vid[keep]))
    coors = torch.empty(V, 4, dtype=torch.long, device=dev)
    gk = vid_of_group >= 0
    rest = uniq[gk] % (z_bins * H * W)
    coors[vid_of_group[gk]] = torch.stack([gb[gk], rest // (H * W), (rest // W) % H, rest % W], -1)
    point_voxel = torch.full((B * M,), -1, dtype=torch.long, device=dev)
    point_voxel[src[keep]] = vid[keep]
    return Voxels(features, num_points, coors, point_voxel.view(B, M))


def scatter_to_bev(pillar_features: torch.Tensor, coors: torch.Tensor, batch_size: int, grid: BEVGrid
                   ) -> torch.Tensor:
    """PointPillars' scatter: ``pillar_features [V, C]`` at ``coors [V, 4] = (b, iz=0, iy, ix)`` -> ``[B, C, H, W]``
    (zeros where there is no pillar). Differentiable w.r.t. the features."""
    if pillar_features.dim() != 2 or coors.shape != (pillar_features.shape[0], 4):
        raise ValueError(f"need pillar_features [V, C] and coors [V, 4], got {tuple(pillar_features.shape)} and "
                         f"{tuple(coors.shape)}")
    if coors.numel() and int(coors[:, 1].max()) > 0:
        raise ValueError("scatter_to_bev takes pillars (one height bin); coors[:, 1] must be 0")
    H, W = grid.shape
    C = pillar_features.shape[1]
    canvas = pillar_features.new_zeros(batch_size * H * W, C)
    flat = (coors[:, 0] * H + coors[:, 2]) * W + coors[:, 3]
    canvas = canvas.index_put((flat,), pillar_features)
    return canvas.view(batch_size, H, W, C).permute(0, 3, 1, 2).contiguous()
