"""The LSS frustum: (camera, depth bin, feature pixel) -> point in the (BEV-augmented) ego frame.

As BEVDet's ``get_lidar_coor`` / BEVDepth: undo the image augmentation (``ida``), unproject with ``K^-1`` at each
depth, move to the ego frame with ``sensor2ego``, then apply the BEV augmentation ``bda``. Conventions (DESIGN.md):
``K [B, N, 3, 3]``, ``sensor2ego [B, N, 4, 4]``, ``ida [B, N, 3, 3]`` (original pixels -> augmented pixels),
``bda [B, 4, 4]``.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["depth_bins", "feature_pixels", "frustum_points"]


def depth_bins(dmin: float, dmax: float, step: float, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> torch.Tensor:
    """``[D]`` candidate depths ``dmin, dmin + step, ... < dmax`` (BEVDet: [1, 60, 0.5] -> 118 bins, 1.0 ... 59.5)."""
    n = int(round((dmax - dmin) / step))
    return dmin + step * torch.arange(n, dtype=torch.float64, device=device).to(dtype)


def feature_pixels(feat_hw: tuple[int, int], image_hw: tuple[int, int], mode: Literal["bevdet", "centre"] = "bevdet",
                   dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """``[fH, fW, 2]`` (u, v) pixel coordinates in the (augmented) input image of each feature-map cell.

    ``"bevdet"``: ``linspace(0, W_in - 1, fW)`` as BEVDet/BEVDepth (what their pretrained weights saw);
    ``"centre"``: the centre of the stride x stride patch, ``(j + 0.5) * W_in / fW - 0.5``.
    """
    (fH, fW), (H, W) = feat_hw, image_hw
    if mode == "bevdet":
        u = torch.linspace(0, W - 1, fW, dtype=torch.float64, device=device)
        v = torch.linspace(0, H - 1, fH, dtype=torch.float64, device=device)
    elif mode == "centre":
        u = (torch.arange(fW, dtype=torch.float64, device=device) + 0.5) * (W / fW) - 0.5
        v = (torch.arange(fH, dtype=torch.float64, device=device) + 0.5) * (H / fH) - 0.5
    else:
        raise ValueError(f"feature_pixels mode must be 'bevdet' or 'centre', got {mode!r}")
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([uu, vv], -1).to(dtype)


def frustum_points(K: torch.Tensor, sensor2ego: torch.Tensor, ida: torch.Tensor, depths: torch.Tensor,
                   pixels: torch.Tensor, bda: torch.Tensor | None = None) -> torch.Tensor:
    """Ego-frame points ``[B, N, D, fH, fW, 3]`` of every (camera, depth, feature pixel).

    ``pixels [fH, fW, 2]`` are (u, v) in the augmented image (``feature_pixels``), ``depths [D]`` the distances along
    the camera's optical axis (camera-frame z). Each point is ``bda @ sensor2ego @ (d * K^-1 @ ida^-1 @ (u, v, 1))``;
    it is affine in d, so the ray direction is computed once per pixel and the points are ``origin + d * dir``.
    """
    uv1 = torch.cat([pixels, torch.ones_like(pixels[..., :1])], -1).to(K.dtype)  # [fH, fW, 3]
    orig = torch.einsum("bnij,hwj->bnhwi", torch.linalg.inv(ida), uv1)  # original-image pixels, homogeneous
    orig = orig / orig[..., 2:3]  # ida is affine (a no-op then), but a projective one is handled too
    ray = sensor2ego[..., :3, :3] @ torch.linalg.inv(K)  # [B, N, 3, 3]: camera z = 1 per unit of depth
    direction = torch.einsum("bnij,bnhwj->bnhwi", ray, orig)  # [B, N, fH, fW, 3]
    origin = sensor2ego[..., :3, 3]  # [B, N, 3]
    if bda is not None:
        direction = torch.einsum("bij,bnhwj->bnhwi", bda[:, :3, :3], direction)
        origin = torch.einsum("bij,bnj->bni", bda[:, :3, :3], origin) + bda[:, None, :3, 3]
    d = depths.to(K.dtype).view(1, 1, -1, 1, 1, 1)
    return origin[:, :, None, None, None, :] + d * direction[:, :, None]
