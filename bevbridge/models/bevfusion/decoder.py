"""BEVFusion's BEV decoders: ``resnet_fpn`` (GeneralizedResNet + LSSFPN, the camera-only model's) and ``second``
(SECOND + SECONDFPN, the fusion model's).

BEVFusion-C (configs/nuscenes/seg/camera-bev256d2.yaml) at paper scale::

    F_cam [B, 80, 128, 128] --stage 1: 2 BasicBlocks, stride 2--> [B, 160, 64, 64]
                            --stage 2: 2 BasicBlocks, stride 2--> [B, 320, 32, 32]
                            --stage 3: 2 BasicBlocks, stride 1--> [B, 640, 32, 32]
    LSSFPN: up(stage 3 -> 64x64) ++ stage 1 [B, 800, 64, 64] --1x1 + 3x3 (BN, ReLU)--> 256
            --x2 up + 3x3--> F_dec [B, 256, 128, 128]

A block whose width or stride changes has mmdet's shortcut: 1x1 conv (stride s, no bias) + BN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

from bevbridge.models.bev.second import SECOND, SECONDFPN

__all__ = ["GeneralizedResNet", "LSSFPN", "BEVDecoder"]


class GeneralizedResNet(nn.Module):
    """BEVFusion's ``GeneralizedResNet``: stages of BasicBlocks. ``forward([B, C_in, H, W]) -> list`` of the stage
    outputs ``[B, channels[i], H / prod(strides[:i+1]), ...]``.

    Args:
        in_channels: input channels.
        channels, blocks, strides: per stage, the width, the number of BasicBlocks and the first block's stride.
    """

    def __init__(self, in_channels: int, channels: tuple[int, ...], blocks: tuple[int, ...],
                 strides: tuple[int, ...]):
        super().__init__()
        stages = []
        cin = in_channels
        for cout, n, s in zip(channels, blocks, strides):
            short = None
            if s != 1 or cin != cout:
                short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=s, bias=False), nn.BatchNorm2d(cout))
            layers = [BasicBlock(cin, cout, stride=s, downsample=short)]
            layers += [BasicBlock(cout, cout) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            cin = cout
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


class LSSFPN(nn.Module):
    """BEVFusion's ``LSSFPN``: ``x1 = feats[in_indices[0]]`` bilinearly resized (align_corners=True) onto
    ``x2 = feats[in_indices[1]]``, concatenated, conv1x1-BN-ReLU + conv3x3-BN-ReLU to ``out_channels``, then (if
    ``scale_factor > 1``) bilinear upsampling and conv3x3-BN-ReLU. ``forward(list) -> [B, out, H2 * s, W2 * s]``.
    """

    def __init__(self, in_channels: tuple[int, int], out_channels: int, scale_factor: int = 1,
                 in_indices: tuple[int, int] = (-1, 0)):
        super().__init__()
        self.in_indices = in_indices
        self.fuse = nn.Sequential(
            nn.Conv2d(in_channels[0] + in_channels[1], out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True))
        self.scale_factor = scale_factor
        self.upsample = None
        if scale_factor > 1:
            self.upsample = nn.Sequential(
                nn.Upsample(scale_factor=scale_factor, mode="bilinear", align_corners=True),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x1, x2 = feats[self.in_indices[0]], feats[self.in_indices[1]]
        x1 = F.interpolate(x1, size=x2.shape[-2:], mode="bilinear", align_corners=True)
        x = self.fuse(torch.cat([x1, x2], 1))
        return x if self.upsample is None else self.upsample(x)


class BEVDecoder(nn.Module):
    """``forward(F [B, C_in, H, W]) -> decoded [B, out_channels, H, W]`` (F_dec, the decoded level of BridgeTA's DLD).

    Args:
        in_channels: the decoder's input channels (F_cam or F_fus).
        type: ``"resnet_fpn"`` or ``"second"`` (see bevbridge/models/bevfusion/config.py ``DecoderConfig``).
        channels, blocks, strides: per stage (blocks: BasicBlocks for resnet_fpn, conv layers for second).
        out_channels: LSSFPN's output (one value) or SECONDFPN's per stage.
        upsample_strides: SECONDFPN's per stage (second only).
    """

    def __init__(self, in_channels: int, *, type: str = "resnet_fpn",  # noqa: A002 - the config's key
                 channels: tuple[int, ...] = (160, 320, 640), blocks: tuple[int, ...] = (2, 2, 2),
                 strides: tuple[int, ...] = (2, 2, 1), out_channels: tuple[int, ...] = (256,),
                 upsample_strides: tuple[float, ...] = ()):
        super().__init__()
        if type == "resnet_fpn":
            self.backbone: nn.Module = GeneralizedResNet(in_channels, channels, blocks, strides)
            self.neck: nn.Module = LSSFPN((channels[-1], channels[0]), out_channels[0], scale_factor=strides[0])
            self.out_channels = out_channels[0]
        elif type == "second":
            self.backbone = SECOND(in_channels, channels, blocks, strides)
            self.neck = SECONDFPN(channels, out_channels, upsample_strides)
            self.out_channels = sum(out_channels)
        else:
            raise ValueError(f"BEVDecoder type must be 'resnet_fpn' or 'second', got {type!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.backbone(x))
