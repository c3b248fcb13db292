"""BEVFusion's ``ConvFuser``: concatenate the camera and LiDAR BEV features, conv3x3 (no bias) + BN + ReLU.

``forward(cam [B, C_cam, H, W], lidar [B, C_lidar, H, W]) -> fused [B, out_channels, H, W]``. BEVFusion's fusion
segmentation model: [80, 256] -> 256. BridgeTA's teacher and teacher assistant: out_channels = the student's
camera-BEV channels (80), so F_fus^T, F_fus^TA and F_cam^S have one shape (papers/bridgeta.txt, FLD).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConvFuser"]


class ConvFuser(nn.Sequential):
    def __init__(self, cam_channels: int, lidar_channels: int, out_channels: int):
        super().__init__(nn.Conv2d(cam_channels + lidar_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
        self.cam_channels, self.lidar_channels = cam_channels, lidar_channels

    def forward(self, cam: torch.Tensor, lidar: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if cam.shape[1] != self.cam_channels or lidar.shape[1] != self.lidar_channels:
            raise ValueError(f"ConvFuser expects {self.cam_channels} camera + {self.lidar_channels} LiDAR channels, "
                             f"got {cam.shape[1]} + {lidar.shape[1]}")
        if cam.shape[-2:] != lidar.shape[-2:]:
            raise ValueError(f"ConvFuser: camera BEV {tuple(cam.shape[-2:])} and LiDAR BEV "
                             f"{tuple(lidar.shape[-2:])} are on different grids")
        return super().forward(torch.cat([cam, lidar], 1))
