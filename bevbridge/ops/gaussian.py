"""CenterNet/CenterPoint heatmap targets: the Gaussian radius for a box size and vectorised Gaussian drawing.

``gaussian_radius`` is CenterNet's (Zhou et al. 2019) smallest of three radii that keep a corner-shifted box above
``min_overlap`` IoU, including its published arithmetic (``r = (b + sqrt(b^2 - 4ac)) / 2`` without the ``/ a``),
which CenterPoint/mmdet3d and thus RCBEVDet's targets use. ``draw_gaussians`` splats one Gaussian per object,
``exp(-(dx^2 + dy^2) / (2 sigma^2))`` with ``sigma = (2r + 1) / 6`` on the (2r+1)^2 window, into the heatmap with
an element-wise max (overlapping objects keep the larger value), all objects at once.
"""

from __future__ import annotations

import torch

__all__ = ["gaussian_radius", "draw_gaussians"]


def gaussian_radius(height: torch.Tensor, width: torch.Tensor, min_overlap: float = 0.5) -> torch.Tensor:
    """CenterNet's radius for boxes of ``height x width`` cells (any shape, elementwise; float)."""
    h, w = torch.as_tensor(height, dtype=torch.float64), torch.as_tensor(width, dtype=torch.float64)
    b1 = h + w
    c1 = w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt(b1 * b1 - 4 * c1)) / 2
    b2 = 2 * (h + w)
    c2 = (1 - min_overlap) * w * h
    r2 = (b2 + torch.sqrt(b2 * b2 - 16 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (h + w)
    c3 = (min_overlap - 1) * w * h
    r3 = (b3 + torch.sqrt(b3 * b3 - 4 * a3 * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def draw_gaussians(heatmap: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, classes: torch.Tensor,
                   k: float = 1.0) -> torch.Tensor:
    """Max-splat Gaussians into ``heatmap [C, H, W]`` (in place, also returned).

    ``centres [n, 2]`` integer cell (ix, iy), ``radii [n]`` integer radii (>= 0), ``classes [n]`` channel of each
    object. Window cells outside the map are clipped, as CenterNet's ``draw_heatmap_gaussian``.
    """
    C, H, W = heatmap.shape
    n = centres.shape[0]
    if n == 0:
        return heatmap
    radii = radii.long()
    R = int(radii.max())
    off = torch.arange(-R, R + 1, device=heatmap.device)
    dy, dx = torch.meshgrid(off, off, indexing="ij")  # [2R+1, 2R+1]
    sigma = ((2 * radii + 1).to(torch.float64) / 6).view(n, 1, 1)
    g = torch.exp(-(dx * dx + dy * dy).to(torch.float64) / (2 * sigma * sigma))  # [n, 2R+1, 2R+1]
    g = torch.where(g < torch.finfo(torch.float64).eps, torch.zeros_like(g), g) * k  # (the window max is 1)
    x = centres[:, 0].long().view(n, 1, 1) + dx
    y = centres[:, 1].long().view(n, 1, 1) + dy
    r = radii.view(n, 1, 1)
    ok = (dx.abs() <= r) & (dy.abs() <= r) & (x >= 0) & (x < W) & (y >= 0) & (y < H)
    flat = (classes.long().view(n, 1, 1) * H + y) * W + x
    heatmap.view(-1).scatter_reduce_(0, flat[ok], g[ok].to(heatmap.dtype), reduce="amax", include_self=True)
    return heatmap
