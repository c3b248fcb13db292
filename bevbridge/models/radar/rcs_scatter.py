"""RCS-aware scatter of radar pillar features onto the BEV (RadarBEVNet, RCBEVDet Sec. 3.2.2).

Pillar features are scattered to their cells as in PointPillars; in addition each pillar spreads a Gaussian of
radius ``r = int(relu(rcs * (x^2 + y^2))) + 1`` cells (CenterNet's kernel: diameter 2r+1, sigma = diameter / 6),
where rcs is the pillar's mean RCS and (x, y) its mean position normalised to [0, 1] over the point-cloud range,
exactly as the public code computes it (so radii grow toward +x/+y; reproduced for checkpoint compatibility).
Overlapping Gaussians merge by max. A second map holds the RCS value over each pillar's (2r+1)^2 window; the
public code overwrites in pillar order, which is order-dependent, so we keep the LARGEST RCS where windows overlap.
The two maps go through a 1x1 conv (2 -> C) and are fused with the scattered features by a 3x3 conv (2C -> C).

Vectorised: one scatter per distinct radius value (a handful), never a loop over pillars. ``max_radius`` (None =
no cap, as published) bounds memory for pathological inputs.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["RCSAwareScatter", "rcs_gaussian_maps"]


def _offsets(r: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    d = torch.arange(-r, r + 1, device=device)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    dy, dx = dy.reshape(-1), dx.reshape(-1)
    sigma = (2 * r + 1) / 6
    g = torch.exp(-(dx * dx + dy * dy).double() / (2 * sigma * sigma))
    g[g < torch.finfo(torch.float64).eps * g.max()] = 0
    return dx, dy, g


def rcs_gaussian_maps(coors: torch.Tensor, radius: torch.Tensor, rcs: torch.Tensor, batch_size: int, H: int,
                      W: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``coors [P, 3] = (b, iy, ix)``, ``radius [P]`` int, ``rcs [P]`` -> (heatmap, rcs_map), each ``[B, 1, H, W]``."""
    dtype = rcs.dtype
    heat = torch.zeros(batch_size * H * W, dtype=dtype, device=rcs.device)
    rmap = torch.full((batch_size * H * W,), float("-inf"), dtype=dtype, device=rcs.device)
    for r in torch.unique(radius).tolist():
        sel = radius == r
        b, iy, ix = (coors[sel, k].long() for k in range(3))
        dx, dy, g = _offsets(int(r), rcs.device)
        y = iy[:, None] + dy[None]
        x = ix[:, None] + dx[None]
        inside = (y >= 0) & (y < H) & (x >= 0) & (x < W)
        flat = (b[:, None] * H + y) * W + x
        flat = flat[inside]
        heat.scatter_reduce_(0, flat, g.to(dtype)[None].expand_as(inside)[inside], reduce="amax")
        rmap.scatter_reduce_(0, flat, rcs[sel][:, None].expand_as(inside)[inside], reduce="amax")
    rmap = torch.where(torch.isinf(rmap), torch.zeros_like(rmap), rmap)
    return heat.view(batch_size, 1, H, W), rmap.view(batch_size, 1, H, W)


class RCSAwareScatter(nn.Module):
    """``forward(pillar_feat [P, C], pillar_mean [P, 7], coors [P, 3], batch_size) -> [B, C, H, W]``.

    ``pillar_mean`` columns are the normalised (x, y, z, vx_comp, vy_comp, rcs, dt) means from RadarBEVNet; the
    RCS column is ``rcs_index`` (-2). Parameter names follow the public code (compress, rcs_att).
    """

    def __init__(self, channels: int = 64, grid_hw: tuple[int, int] = (512, 512), rcs_index: int = -2,
                 max_radius: int | None = None):
        super().__init__()
        self.H, self.W = grid_hw
        self.channels = channels
        self.rcs_index = rcs_index
        self.max_radius = max_radius
        self.compress = nn.Conv2d(channels * 2, channels, 3, padding=1)
        self.rcs_att = nn.Conv2d(2, channels, 1)

    def forward(self, pillar_feat: torch.Tensor, pillar_mean: torch.Tensor, coors: torch.Tensor,
                batch_size: int) -> torch.Tensor:
        B, C, H, W = batch_size, self.channels, self.H, self.W
        canvas = pillar_feat.new_zeros(B * H * W, C)
        flat = (coors[:, 0].long() * H + coors[:, 1].long()) * W + coors[:, 2].long()
        canvas[flat] = pillar_feat
        canvas = canvas.view(B, H, W, C).permute(0, 3, 1, 2)
        with torch.no_grad():
            rcs = pillar_mean[:, self.rcs_index]
            radius = (torch.relu(rcs * (pillar_mean[:, 0] ** 2 + pillar_mean[:, 1] ** 2)) + 1).long()
            if self.max_radius is not None:
                radius = radius.clamp(max=self.max_radius)
        heat, rmap = rcs_gaussian_maps(coors, radius, rcs.detach(), B, H, W)
        att = self.rcs_att(torch.cat([heat, rmap], 1).to(canvas.dtype))
        return self.compress(torch.cat([canvas, att], 1))
