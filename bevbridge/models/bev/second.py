"""SECOND's 2D BEV backbone and SECOND-FPN neck (Yan et al. 2018), as RCBEVDet's radar BEV path uses them.

RCBEVDet (public config): ``SECOND(64 -> [64, 128, 256], layers [3, 5, 5], strides 2)`` on the 512x512 radar canvas,
then ``SECONDFPN([64, 128, 256] -> 3 x 128, upsample strides [0.5, 1, 2])``: ``[B, 64, 512, 512] -> [B, 384, 128,
128]``. BatchNorm eps 1e-3, momentum 0.01 (``bn_momentum``: the running statistics of a run of a few hundred steps
lag far behind the weights with 0.01); convolutions without bias. Parameter names follow mmdet3d.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SECOND", "SECONDFPN"]


def _bn(c: int, momentum: float = 0.01) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=momentum)


class SECOND(nn.Module):
    """``forward([B, C_in, H, W]) -> list`` of stage outputs ``[B, out[i], H / prod(strides[:i+1]), ...]``."""

    def __init__(self, in_channels: int = 64, out_channels: tuple[int, ...] = (64, 128, 256),
                 layer_nums: tuple[int, ...] = (3, 5, 5), layer_strides: tuple[int, ...] = (2, 2, 2),
                 bn_momentum: float = 0.01):
        super().__init__()
        blocks = []
        cin = in_channels
        for cout, n, s in zip(out_channels, layer_nums, layer_strides):
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, stride=s, padding=1, bias=False), _bn(cout, bn_momentum),
                                       nn.ReLU(inplace=True)]
            for _ in range(n):
                layers += [nn.Conv2d(cout, cout, 3, padding=1, bias=False), _bn(cout, bn_momentum),
                           nn.ReLU(inplace=True)]
            blocks.append(nn.Sequential(*layers))
            cin = cout
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return outs


class SECONDFPN(nn.Module):
    """Bring every level to one stride and concatenate: ``list -> [B, sum(out_channels), H', W']``.

    An upsample stride s > 1 is a transposed conv (kernel = stride = s); s < 1 a strided conv (kernel = stride =
    1/s); s == 1 a 1x1 conv (``use_conv_for_no_stride``). Each followed by BN + ReLU.
    """

    def __init__(self, in_channels: tuple[int, ...] = (64, 128, 256), out_channels: tuple[int, ...] = (128, 128, 128),
                 upsample_strides: tuple[float, ...] = (0.5, 1, 2), bn_momentum: float = 0.01):
        super().__init__()
        deblocks = []
        for cin, cout, s in zip(in_channels, out_channels, upsample_strides):
            if s > 1:
                conv: nn.Module = nn.ConvTranspose2d(cin, cout, int(s), stride=int(s), bias=False)
            else:
                k = int(round(1 / s))
                conv = nn.Conv2d(cin, cout, k, stride=k, bias=False)
            deblocks.append(nn.Sequential(conv, _bn(cout, bn_momentum), nn.ReLU(inplace=True)))
        self.deblocks = nn.ModuleList(deblocks)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([deblock(f) for deblock, f in zip(self.deblocks, feats)], 1)
