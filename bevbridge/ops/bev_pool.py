"""LSS voxel pooling ("splat"): depth distribution x context features summed into BEV cells (Philion & Fidler 2020).

``out[b, z, y, x, :] = sum over (camera n, depth bin d, feature pixel (i, j)) whose frustum point falls in cell
(z, y, x) of depth[b, n, d, i, j] * feat[b, n, i, j, :]``.

The BEVPoolv2 idea (Huang & Huang 2022): the geometry does not depend on the features, so a ``BEVPoolPlan``
is built once from the frustum points: for every kept point, its index into ``depth`` and into ``feat`` and its
BEV cell, sorted by cell, with the start and length of each run of equal cells ("intervals"). Pooling is then a
sum over intervals of depth-weighted feature rows, which ``F.embedding_bag`` (per-sample weights) does without ever
materialising the ``[B, N, D, fH, fW, C]`` outer product. The backward is two more ``embedding_bag`` calls: the
feature gradient is the same sum taken over the transposed plan (points sorted by feature pixel), the depth gradient
is embedding_bag's per-sample-weight gradient (one dot product per point).

Shapes: ``depth [B, N, D, fH, fW]``, ``feat [B, N, fH, fW, C]`` (channel-last, as BEVPoolv2), frustum points
``[B, N, D, fH, fW, 3]`` (``bevbridge.ops.frustum.frustum_points``), output ``[B, Z*C, H, W]`` on a ``BEVGrid``
with the Z height bins stacked z-major along channels (BEVDet's ``cat(unbind(z))``); Z = 1 by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bevbridge.geometry import BEVGrid, z_to_index

__all__ = ["BEVPoolPlan", "bev_pool_plan", "bev_pool", "bev_pool_reference"]


@dataclass(frozen=True)
class BEVPoolPlan:
    """Precomputed pooling geometry (all int64 index tensors on the points' device).

    ``ranks_depth``, ``ranks_feat``, ``ranks_bev`` ``[M]``: for each kept point sorted by BEV cell, its flat index in
    ``depth``, ``feat`` rows (``B*N*fH*fW``) and the output cells (``B*Z*H*W``). ``offsets [I]``: where each interval
    (run of equal cells) starts; ``cells [I]``: its cell. ``t_*``: the same points sorted by feature row, for the
    backward (``t_offsets``/``t_rows``: the runs of equal feature rows).
    """

    grid: BEVGrid
    z_bins: int
    batch: int
    depth_shape: tuple[int, ...]  # (B, N, D, fH, fW)
    ranks_depth: torch.Tensor
    ranks_feat: torch.Tensor
    ranks_bev: torch.Tensor
    offsets: torch.Tensor
    cells: torch.Tensor
    t_ranks_depth: torch.Tensor
    t_ranks_bev: torch.Tensor
    t_offsets: torch.Tensor
    t_rows: torch.Tensor

    @property
    def num_points(self) -> int:
        return int(self.ranks_bev.numel())


def _runs(sorted_keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Starts and values of the runs of equal values in a sorted 1-D tensor."""
    values, counts = torch.unique_consecutive(sorted_keys, return_counts=True)
    starts = torch.zeros_like(counts)
    starts[1:] = counts.cumsum(0)[:-1]
    return starts, values


@torch.no_grad()
def bev_pool_plan(points: torch.Tensor, grid: BEVGrid, z_range: tuple[float, float] = (-5.0, 3.0), z_bins: int = 1
                  ) -> BEVPoolPlan:
    """Build the plan from frustum points ``[B, N, D, fH, fW, 3]`` (ego metres). Points outside the grid or the
    height range ``[zmin, zmax)`` are dropped (BEVDet: z in [-5, 3], one bin)."""
    if points.dim() != 6 or points.shape[-1] != 3:
        raise ValueError(f"frustum points must be [B, N, D, fH, fW, 3], got {tuple(points.shape)}")
    B, N, D, fH, fW, _ = points.shape
    ix, iy, inside = grid.xy_to_index(points)
    iz, inside_z = z_to_index(points[..., 2], z_range[0], z_range[1], z_bins)
    H, W = grid.shape
    dev = points.device
    b = torch.arange(B, device=dev).view(B, 1, 1, 1, 1)
    cell = ((b * z_bins + iz) * H + iy) * W + ix
    feat_row = (torch.arange(B * N, device=dev).view(B, N, 1, 1, 1) * (fH * fW)
                + torch.arange(fH * fW, device=dev).view(1, 1, 1, fH, fW)).expand(B, N, D, fH, fW)
    keep = (inside & inside_z).flatten()
    ranks_depth = torch.arange(B * N * D * fH * fW, device=dev)[keep]
    ranks_feat = feat_row.flatten()[keep]
    ranks_bev = cell.flatten()[keep]
    order = torch.argsort(ranks_bev, stable=True)
    ranks_depth, ranks_feat, ranks_bev = ranks_depth[order], ranks_feat[order], ranks_bev[order]
    offsets, cells = _runs(ranks_bev)
    t_order = torch.argsort(ranks_feat, stable=True)
    t_offsets, t_rows = _runs(ranks_feat[t_order])
    return BEVPoolPlan(grid, z_bins, B, (B, N, D, fH, fW), ranks_depth, ranks_feat, ranks_bev, offsets, cells,
                       ranks_depth[t_order], ranks_bev[t_order], t_offsets, t_rows)


class _BEVPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, depth_flat, feat_rows, plan: BEVPoolPlan):  # noqa: D102 - autograd protocol
        ctx.save_for_backward(depth_flat, feat_rows)
        ctx.plan = plan
        H, W = plan.grid.shape
        weights = depth_flat[plan.ranks_depth]
        sums = F.embedding_bag(plan.ranks_feat, feat_rows, plan.offsets, mode="sum", per_sample_weights=weights)
        out = feat_rows.new_zeros(plan.batch * plan.z_bins * H * W, feat_rows.shape[1])
        out[plan.cells] = sums
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        depth_flat, feat_rows = ctx.saved_tensors
        plan: BEVPoolPlan = ctx.plan
        grad_depth = grad_feat = None
        grad_out = grad_out.contiguous()
        if ctx.needs_input_grad[1]:
            w = depth_flat[plan.t_ranks_depth]
            sums = F.embedding_bag(plan.t_ranks_bev, grad_out, plan.t_offsets, mode="sum", per_sample_weights=w)
            grad_feat = torch.zeros_like(feat_rows)
            grad_feat[plan.t_rows] = sums
        if ctx.needs_input_grad[0]:
            with torch.enable_grad():
                w = depth_flat.detach()[plan.ranks_depth].requires_grad_()
                sums = F.embedding_bag(plan.ranks_feat, feat_rows.detach(), plan.offsets, mode="sum",
                                       per_sample_weights=w)
                (grad_w,) = torch.autograd.grad(sums, w, grad_out[plan.cells])
            grad_depth = torch.zeros_like(depth_flat)
            grad_depth[plan.ranks_depth] = grad_w
        return grad_depth, grad_feat, None


def _check(depth: torch.Tensor, feat: torch.Tensor, plan: BEVPoolPlan) -> None:
    if tuple(depth.shape) != plan.depth_shape:
        raise ValueError(f"depth must be [B, N, D, fH, fW] = {plan.depth_shape} (the plan's), got {tuple(depth.shape)}")
    B, N, _, fH, fW = plan.depth_shape
    if feat.dim() != 5 or tuple(feat.shape[:4]) != (B, N, fH, fW):
        raise ValueError(f"feat must be [B, N, fH, fW, C] with (B, N, fH, fW) = {(B, N, fH, fW)}, "
                         f"got {tuple(feat.shape)}")


def _to_bev(out_rows: torch.Tensor, plan: BEVPoolPlan) -> torch.Tensor:
    """``[B*Z*H*W, C]`` -> ``[B, Z*C, H, W]`` (z-major channel blocks)."""
    H, W = plan.grid.shape
    C = out_rows.shape[1]
    out = out_rows.view(plan.batch, plan.z_bins, H, W, C).permute(0, 1, 4, 2, 3)
    return out.reshape(plan.batch, plan.z_bins * C, H, W)


def bev_pool(depth: torch.Tensor, feat: torch.Tensor, plan: BEVPoolPlan) -> torch.Tensor:
    """Pool ``depth [B, N, D, fH, fW]`` x ``feat [B, N, fH, fW, C]`` into ``[B, Z*C, H, W]`` (module doc)."""
    _check(depth, feat, plan)
    rows = _BEVPool.apply(depth.reshape(-1), feat.reshape(-1, feat.shape[-1]), plan)
    return _to_bev(rows, plan)


def bev_pool_reference(depth: torch.Tensor, feat: torch.Tensor, points: torch.Tensor, grid: BEVGrid,
                       z_range: tuple[float, float] = (-5.0, 3.0), z_bins: int = 1) -> torch.Tensor:
    """The obvious dense version, independent of the plan: materialise every point's ``depth * feat``
    ``[B, N, D, fH, fW, C]``, find its cell, ``index_add`` it in. Same inputs and output as ``bev_pool``."""
    B, C = depth.shape[0], feat.shape[-1]
    H, W = grid.shape
    contrib = (depth.unsqueeze(-1) * feat.unsqueeze(2)).reshape(-1, C)
    ix, iy, inside = grid.xy_to_index(points)
    iz, inside_z = z_to_index(points[..., 2], z_range[0], z_range[1], z_bins)
    b = torch.arange(B, device=depth.device).view(B, 1, 1, 1, 1)
    cell = (((b * z_bins + iz) * H + iy) * W + ix).flatten()
    keep = (inside & inside_z).flatten()
    out = contrib.new_zeros(B * z_bins * H * W, C).index_add(0, cell[keep], contrib[keep])
    return out.view(B, z_bins, H, W, C).permute(0, 1, 4, 2, 3).reshape(B, z_bins * C, H, W)
