"""Image necks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FPNToOneLevel"]


class FPNToOneLevel(nn.Module):
    """An FPN that fuses several backbone levels top-down and outputs ONE map at the finest input stride.

    RCBEVDet/BEVDet's ``CustomFPN(in_channels=[1024, 2048], out_channels=512, num_outs=1, out_ids=[0])``: 1x1
    lateral convs per level, nearest-neighbour top-down addition, one 3x3 output conv on level 0. With ResNet-50
    stages 3-4 this gives ``[B*N, 512, H/16, W/16]``. Parameter names follow mmdet (lateral_convs.i.conv,
    fpn_convs.0.conv) so official checkpoints map one to one.
    """

    def __init__(self, in_channels: list[int], out_channels: int = 512):
        super().__init__()
        self.lateral_convs = nn.ModuleList(_Wrap(nn.Conv2d(c, out_channels, 1)) for c in in_channels)
        self.fpn_convs = nn.ModuleList([_Wrap(nn.Conv2d(out_channels, out_channels, 3, padding=1))])
        self.out_channels = out_channels

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="nearest")
        return self.fpn_convs[0](laterals[0])


class _Wrap(nn.Module):
    """Holds a conv as ``.conv`` so parameter names match mmcv's ConvModule."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
