"""CTAB's BEV segmentation branch: `SegDecoder` (Sec. III-B) and `BEVUpsample` (Sec. III-C, Eq. 1).

papers/ctab.txt. Data flow in the multi-task model (Fig. 1)::

    F_bev [B, 256, 128, 128] --SegDecoder.features--> F_seg [B, 128, 128, 128] --(CTAB)--> F'_seg
        --BEVUpsample--> [B, 128, 200, 200] --SegDecoder.classify--> logits [B, C, 200, 200]

Instance Normalization everywhere (the paper's argument: modules trained from scratch next to a pretrained
backbone; BN statistics diverge between train and eval). Convolutions keep PyTorch's default bias. Whether IN has
affine parameters is not stated; we use ``affine=True`` by default (``in_affine``), which changes the count by a
few hundred parameters and does not move the published rounded figures (SegDecoder 1.33M with C=7, BEVUpsample
0.30M).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SegDecoder", "BEVUpsample"]


def _conv_in_relu(cin: int, cout: int, affine: bool) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.InstanceNorm2d(cout, affine=affine), nn.ReLU(inplace=True))


class _ResidualBlock(nn.Module):
    """Two Conv3x3 + IN with a skip connection: ``relu(x + IN(conv(relu(IN(conv(x))))))``."""

    def __init__(self, channels: int, affine: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm1 = nn.InstanceNorm2d(channels, affine=affine)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.InstanceNorm2d(channels, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)), inplace=True)
        return F.relu(x + self.norm2(self.conv2(y)), inplace=True)


class SegDecoder(nn.Module):
    """Sec. III-B: input projection (Conv3x3 256->128, IN, ReLU), three residual blocks, prediction head
    (Conv3x3, IN, ReLU, Conv1x1 128->C).

    ``features(F_bev [B, in_ch, H, W]) -> F_seg [B, 128, H, W]`` (the CTAB input, after the third block);
    ``classify(F [B, 128, H', W']) -> logits [B, C, H', W']`` (applied after BEV upsampling, at 200x200).
    """

    def __init__(self, num_classes: int, in_channels: int = 256, channels: int = 128, num_blocks: int = 3,
                 in_affine: bool = True):
        super().__init__()
        self.input_proj = _conv_in_relu(in_channels, channels, in_affine)
        self.blocks = nn.Sequential(*[_ResidualBlock(channels, in_affine) for _ in range(num_blocks)])
        self.head = nn.Sequential(_conv_in_relu(channels, channels, in_affine), nn.Conv2d(channels, num_classes, 1))

    def features(self, bev: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.input_proj(bev))

    def classify(self, feat: torch.Tensor) -> torch.Tensor:
        return self.head(feat)

    def forward(self, bev: torch.Tensor) -> torch.Tensor:
        """Without upsampling: logits at the input resolution."""
        return self.classify(self.features(bev))


class BEVUpsample(nn.Module):
    """Eq. 1: ``F' = U + IN(Conv3x3(ReLU(IN(Conv3x3(U)))))`` with ``U = bilinear upsample of F_seg``.

    ``[B, C, 128, 128] -> [B, C, 200, 200]`` by default. The output covers the SAME metric extent as the input
    (102.4 m at 0.512 m/cell for CTAB); ``align_corners=False`` keeps cell centres consistent with
    ``bevbridge.geometry.BEVGrid.resample`` between the two grids.
    """

    def __init__(self, channels: int = 128, out_size: tuple[int, int] = (200, 200), in_affine: bool = True):
        super().__init__()
        self.out_size = tuple(out_size)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm1 = nn.InstanceNorm2d(channels, affine=in_affine)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.InstanceNorm2d(channels, affine=in_affine)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        u = F.interpolate(feat, size=self.out_size, mode="bilinear", align_corners=False)
        return u + self.norm2(self.conv2(F.relu(self.norm1(self.conv1(u)))))
