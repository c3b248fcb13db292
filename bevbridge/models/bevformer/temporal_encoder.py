"""BEVFormer v2's temporal encoder (papers/bevformer_v2.txt, "Enhanced Temporal Encoding"; ``ResNetFusion`` in the
public v2 code).

    B_warped(t-k) = Warp(B_{t-k}, T_{t-k -> t})                  (temporal_align.warp_bev, by ego motion and bda)
    x = concat[B_t, B_warped(t-1), ..., B_warped(t-T)]           [B, (T + 1) * C, H, W]   (t8: 8 x 256 = 2048)
    x = BasicBlock(-> inter) -> BasicBlock -> BasicBlock          ResNet basic blocks (3x3 convs + BN), ``blocks``
    BEV = LayerNorm(Linear(inter -> C)) per cell                 [B, H*W, C]

The first block changes the width with a 3x3 conv + BN shortcut (the public code's downsample), the others are
identity-shortcut blocks. Kaiming-normal convs (fan out), as torchvision's ResNet.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BasicBlock", "TemporalFusion"]


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` with 3x3 convs, stride 1."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class TemporalFusion(nn.Module):
    """``forward(bevs: list of [B, C, H, W], current first, the others already warped) -> [B, H*W, C]``.

    Args:
        embed_dims: C. ``num_frames``: BEVs concatenated (current + past). ``inter_channels``: block width (512).
        num_blocks: basic blocks (3).
    """

    def __init__(self, embed_dims: int, num_frames: int, inter_channels: int = 512, num_blocks: int = 3):
        super().__init__()
        self.num_frames = num_frames
        blocks = [BasicBlock(embed_dims * num_frames, inter_channels)]
        blocks += [BasicBlock(inter_channels, inter_channels) for _ in range(num_blocks - 1)]
        self.layers = nn.Sequential(*blocks)
        self.layer_norm = nn.Sequential(nn.Linear(inter_channels, embed_dims), nn.LayerNorm(embed_dims))
        for m in self.layers.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, bevs: list[torch.Tensor]) -> torch.Tensor:
        if len(bevs) != self.num_frames:
            raise ValueError(f"TemporalFusion built for {self.num_frames} BEVs got {len(bevs)}")
        x = self.layers(torch.cat(bevs, 1))
        return self.layer_norm(x.flatten(2).transpose(1, 2))
