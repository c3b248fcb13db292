"""BEVDepth's LSS view transform: camera-aware depth net -> frustum -> BEVPoolv2 splat (RCBEVDet's camera branch).

``forward(feats [B, N, C, h, w], K, sensor2ego, ida [B, N, ...], bda [B, 4, 4], cam_mask [B, N] | None)
-> (bev [B, C_ctx, H, W], depth [B, N, D, h, w])``: per feature pixel a softmax over D depth bins (1-60 m in
0.5 m steps: 118) times C_ctx = 80 context channels, summed into the BEVGrid cell of each frustum point (BEVDet
keeps z in [-5, 3] m as one bin). A camera with ``cam_mask`` False contributes nothing (its depth is zeroed), so
a dropped camera is simply absent from the BEV.

Frustum pixels follow BEVDet's ``linspace(0, W_in - 1, w)`` by default (``pixel_mode="bevdet"``), the geometry its
checkpoints were trained with; ``"centre"`` uses patch centres.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from bevbridge.geometry import BEVGrid
from bevbridge.models.lift.depth_net import CameraAwareDepthNet, camera_params
from bevbridge.ops.bev_pool import bev_pool, bev_pool_plan
from bevbridge.ops.frustum import depth_bins, feature_pixels, frustum_points

__all__ = ["LSSViewTransform"]


class LSSViewTransform(nn.Module):
    def __init__(self, grid: BEVGrid, image_size: tuple[int, int], downsample: int = 16, in_channels: int = 512,
                 context_channels: int = 80, depth_range: tuple[float, float, float] = (1.0, 60.0, 0.5),
                 z_range: tuple[float, float] = (-5.0, 3.0), aspp_mid_channels: int = 96,
                 pixel_mode: Literal["bevdet", "centre"] = "bevdet"):
        super().__init__()
        self.grid = grid
        self.image_size = tuple(image_size)
        self.downsample = downsample
        self.depth_range = tuple(depth_range)
        self.z_range = tuple(z_range)
        self.pixel_mode = pixel_mode
        self.register_buffer("depths", depth_bins(*depth_range), persistent=False)
        self.depth_net = CameraAwareDepthNet(in_channels, in_channels, context_channels, len(self.depths),
                                             aspp_mid_channels)
        self.context_channels = context_channels

    @property
    def num_bins(self) -> int:
        return int(self.depths.numel())

    def forward(self, feats: torch.Tensor, K: torch.Tensor, sensor2ego: torch.Tensor, ida: torch.Tensor,
                bda: torch.Tensor, cam_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        B, N, C, h, w = feats.shape
        D = self.num_bins
        cam = camera_params(K, sensor2ego, ida, bda)
        x = self.depth_net(feats.flatten(0, 1), cam.flatten(0, 1))
        depth = x[:, :D].softmax(1).view(B, N, D, h, w)
        context = x[:, D:].view(B, N, self.context_channels, h, w)
        if cam_mask is not None:
            depth = depth * cam_mask.view(B, N, 1, 1, 1).to(depth.dtype)
        with torch.no_grad():
            pixels = feature_pixels((h, w), self.image_size, self.pixel_mode, K.dtype, K.device)
            points = frustum_points(K.float(), sensor2ego.float(), ida.float(), self.depths, pixels, bda.float())
            plan = bev_pool_plan(points, self.grid, self.z_range)
        bev = bev_pool(depth, context.permute(0, 1, 3, 4, 2).contiguous(), plan)
        return bev, depth
