"""BEVDepth's LSS view transform: camera-aware depth net -> frustum -> BEVPoolv2 splat (RCBEVDet's camera branch).

``forward(feats [B, N, C, h, w], K, sensor2ego, ida [B, N, ...], bda [B, 4, 4], cam_mask [B, N] | None)
-> (bev [B, C_ctx, H, W], depth [B, N, D, h, w])``: per feature pixel a softmax over D depth bins (1-60 m in
0.5 m steps: 118) times C_ctx = 80 context channels, summed into the BEVGrid cell of each frustum point (BEVDet
keeps z in [-5, 3] m as one bin). A camera with ``cam_mask`` False contributes nothing (its depth is zeroed), so
a dropped camera is simply absent from the BEV.

Two depth nets (``depth_net``): ``"camera_aware"`` (BEVDepth's, above; RCBEVDet/CTAB) and ``"plain"`` (BEVFusion's
``LSSTransform``: one 1x1 conv, no camera parameters). ``bev_downsample=2`` adds BEVFusion's BEV downsampling after
the splat (conv3x3-BN-ReLU, the same with stride 2, conv3x3-BN-ReLU at C_ctx channels): BEVFusion's camera-only
segmentation splats on a 0.4 m grid (256x256 over +-51.2 m) and hands 128x128 at 0.8 m to the decoder.

Frustum pixels follow BEVDet's ``linspace(0, W_in - 1, w)`` by default (``pixel_mode="bevdet"``), the geometry its
checkpoints were trained with; ``"centre"`` uses patch centres.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from bevbridge.geometry import BEVGrid
from bevbridge.models.lift.depth_net import CameraAwareDepthNet, PlainDepthNet, camera_params
from bevbridge.ops.bev_pool import bev_pool, bev_pool_plan
from bevbridge.ops.frustum import depth_bins, feature_pixels, frustum_points

__all__ = ["LSSViewTransform"]


class LSSViewTransform(nn.Module):
    """See the module docstring. ``grid`` is the splat grid (the output grid is ``bev_downsample`` times coarser);
    ``downsample`` is the image feature stride."""

    def __init__(self, grid: BEVGrid, image_size: tuple[int, int], downsample: int = 16, in_channels: int = 512,
                 context_channels: int = 80, depth_range: tuple[float, float, float] = (1.0, 60.0, 0.5),
                 z_range: tuple[float, float] = (-5.0, 3.0), aspp_mid_channels: int = 96,
                 pixel_mode: Literal["bevdet", "centre"] = "bevdet",
                 depth_net: Literal["camera_aware", "plain"] = "camera_aware", bev_downsample: int = 1):
        super().__init__()
        if bev_downsample not in (1, 2):
            raise ValueError(f"LSSViewTransform: bev_downsample must be 1 or 2 (BEVFusion's), got {bev_downsample}")
        self.grid = grid
        self.image_size = tuple(image_size)
        self.downsample = downsample
        self.depth_range = tuple(depth_range)
        self.z_range = tuple(z_range)
        self.pixel_mode = pixel_mode
        self.register_buffer("depths", depth_bins(*depth_range), persistent=False)
        if depth_net == "camera_aware":
            self.depth_net: nn.Module = CameraAwareDepthNet(in_channels, in_channels, context_channels,
                                                            len(self.depths), aspp_mid_channels)
        elif depth_net == "plain":
            self.depth_net = PlainDepthNet(in_channels, context_channels, len(self.depths))
        else:
            raise ValueError(f"LSSViewTransform: depth_net must be 'camera_aware' or 'plain', got {depth_net!r}")
        self.context_channels = context_channels
        self.bev_downsample = bev_downsample
        if bev_downsample > 1:
            C = context_channels

            def cbr(stride: int) -> list[nn.Module]:
                return [nn.Conv2d(C, C, 3, stride, 1, bias=False), nn.BatchNorm2d(C), nn.ReLU(inplace=True)]

            self.bev_down = nn.Sequential(*cbr(1), *cbr(bev_downsample), *cbr(1))

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
        if self.bev_downsample > 1:
            bev = self.bev_down(bev)
        return bev, depth
