"""Image necks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FPNToOneLevel", "GeneralizedLSSFPN"]


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


class GeneralizedLSSFPN(nn.Module):
    """BEVFusion's camera neck: top-down, each level CONCATENATED (not added) with the upsampled coarser one.

    For levels ``i = L-2 ... 0``: ``x_i = conv3x3(conv1x1(cat(f_i, up(x_{i+1}))))`` with ``x_{L-1} = f_{L-1}`` (the
    coarsest backbone map enters unreduced); every conv is conv-BN-ReLU without bias (mmcv ConvModule). Returns the
    L-1 fused maps, finest first: with Swin-T stages 1-3 (``[192, 384, 768]``, strides 8/16/32) and 256 channels,
    ``[B*N, 256, H/8, W/8]`` and ``[B*N, 256, H/16, W/16]``; BEVFusion's LSS reads the first. Upsampling is bilinear
    (BEVFusion's camera configs: ``align_corners=False``). Parameter names follow mmcv (``lateral_convs.i.conv``,
    ``.bn``; ``fpn_convs.i``).
    """

    def __init__(self, in_channels: list[int], out_channels: int = 256, align_corners: bool = False):
        super().__init__()
        if len(in_channels) < 2:
            raise ValueError(f"GeneralizedLSSFPN needs at least two input levels, got {in_channels}")
        L = len(in_channels)
        self.lateral_convs = nn.ModuleList(
            _ConvBNReLU(in_channels[i] + (in_channels[i + 1] if i == L - 2 else out_channels), out_channels, 1)
            for i in range(L - 1))
        self.fpn_convs = nn.ModuleList(_ConvBNReLU(out_channels, out_channels, 3) for _ in range(L - 1))
        self.align_corners = align_corners
        self.out_channels = out_channels

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        x = feats[-1]
        outs = []
        for i in range(len(feats) - 2, -1, -1):
            up = F.interpolate(x, size=feats[i].shape[-2:], mode="bilinear", align_corners=self.align_corners)
            x = self.fpn_convs[i](self.lateral_convs[i](torch.cat([feats[i], up], 1)))
            outs.append(x)
        return outs[::-1]


class _ConvBNReLU(nn.Module):
    """mmcv's ConvModule(conv, BN, ReLU) with a bias-free conv: ``.conv``, ``.bn``."""

    def __init__(self, cin: int, cout: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class _Wrap(nn.Module):
    """Holds a conv as ``.conv`` so parameter names match mmcv's ConvModule."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
