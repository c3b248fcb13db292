"""Aligning a past BEV to the current frame by ego motion (BEVFormer's TSA input B'_{t-1}; v2's temporal encoder).

Every cell centre p of the destination grid (the current frame, after the BEV augmentation ``bda``) is moved into the
source frame by ``dst_to_src`` and the source BEV is sampled there bilinearly (zeros outside the source grid). A
translation by whole cells or a rotation by a multiple of 90 degrees about the grid's centre maps cell centres onto
cell centres, so the warp is then an exact permutation of cells (the tests check it).

Deviation from the released BEVFormer: it rotates the previous BEV as an image about its centre and moves TSA's
reference points by the translation ("shift", computed from CAN-bus deltas in the LiDAR frame); here one warp applies
the whole rigid transform (and ``bda``) to the features, with both of TSA's reference-point sets at the cell centres.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bevbridge.geometry import BEVGrid, invert_transform

__all__ = ["warp_bev", "past_to_current"]


def past_to_current(ego2key: torch.Tensor, bda: torch.Tensor | None = None) -> torch.Tensor:
    """``[..., 4, 4]`` past ego -> key ego (``PastFrames.ego2key``) composed with the key frame's BEV augmentation
    ``bda [B, 4, 4]`` (broadcast over the past frames): past ego -> augmented key frame."""
    if bda is None:
        return ego2key
    extra = ego2key.dim() - bda.dim()
    return bda.view(bda.shape[0], *([1] * extra), 4, 4) @ ego2key


def warp_bev(bev: torch.Tensor, src_to_dst: torch.Tensor, grid: BEVGrid) -> torch.Tensor:
    """The source BEV ``bev [B, C, H, W]`` (on ``grid`` in its own frame) seen in the destination frame.

    ``src_to_dst [B, 4, 4]`` maps source-frame points to destination-frame points (e.g. :func:`past_to_current`);
    its inverse is computed in float64. Returns ``[B, C, H, W]`` on the same grid in the destination frame.
    """
    B, _, H, W = bev.shape
    if (H, W) != grid.shape:
        raise ValueError(f"warp_bev: BEV is {H}x{W} but the grid is {grid.shape}")
    dst_to_src = invert_transform(src_to_dst.to(torch.float64))
    centres = grid.cell_centres(bev.device, torch.float64).reshape(1, -1, 2)  # [1, HW, 2]
    src = centres @ dst_to_src[:, :2, :2].transpose(1, 2) + dst_to_src[:, None, :2, 3]  # z = 0: the BEV plane
    norm = grid.xy_to_normalized(src).to(bev.dtype).view(B, H, W, 2)
    return F.grid_sample(bev, norm, mode="bilinear", padding_mode="zeros", align_corners=False)
