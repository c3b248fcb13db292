"""BEVDet's BEV encoder: a ResNet of BasicBlocks over the BEV (``CustomResNet``) and the ``FPN_LSS`` neck.

RCBEVDet (public config): ``CustomResNet(720 -> [160, 320, 640], strides 2)`` then ``FPN_LSS(640 + 160 -> 256)``
with x4 and x2 bilinear upsampling: ``[B, 720, 128, 128] -> [B, 256, 128, 128]``. The same ``BEVResNet`` with one
stage of two stride-1 blocks at 80 channels is the per-frame ``pre_process`` net. Parameter names follow BEVDet.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

__all__ = ["BEVResNet", "FPNLSS"]


class BEVResNet(nn.Module):
    """Stages of BasicBlocks; each stage's first block changes width/stride with a bare 3x3 conv shortcut.

    ``forward([B, C_in, H, W]) -> list`` of the stages' outputs (``[B, channels[i], H / prod(strides[:i+1]), ...]``).
    """

    def __init__(self, in_channels: int, channels: list[int], num_blocks: list[int] | None = None,
                 strides: list[int] | None = None):
        super().__init__()
        num_blocks = num_blocks or [2] * len(channels)
        strides = strides or [2] * len(channels)
        layers = []
        cin = in_channels
        for cout, n, s in zip(channels, num_blocks, strides):
            blocks = [BasicBlock(cin, cout, stride=s, downsample=nn.Conv2d(cin, cout, 3, s, 1))]
            blocks += [BasicBlock(cout, cout) for _ in range(n - 1)]
            layers.append(nn.Sequential(*blocks))
            cin = cout
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats


class FPNLSS(nn.Module):
    """``forward(feats) -> [B, out, H0, W0]``: upsample the deepest of ``feats`` x4 onto the first, concat,
    two conv-BN-ReLU, then x2 upsampling with conv-BN-ReLU + 1x1 (BEVDet's ``extra_upsample=2``)."""

    def __init__(self, in_channels: int = 800, out_channels: int = 256, scale_factor: int = 4,
                 input_indices: tuple[int, int] = (0, 2), extra_upsample: int = 2):
        super().__init__()
        self.input_indices = input_indices
        self.up = nn.Upsample(scale_factor=scale_factor, mode="bilinear", align_corners=True)
        mid = out_channels * 2
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
        )
        self.up2 = nn.Sequential(
            nn.Upsample(scale_factor=extra_upsample, mode="bilinear", align_corners=True),
            nn.Conv2d(mid, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 1),
        )

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        fine, coarse = feats[self.input_indices[0]], feats[self.input_indices[1]]
        x = torch.cat([fine, self.up(coarse)], 1)
        return self.up2(self.conv(x))
