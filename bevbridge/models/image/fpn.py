"""A multi-level feature pyramid (Lin et al. 2017) with mmdet's ``FPN`` semantics, for BEVFormer (v1 and v2).

    fpn = FPN([512, 1024, 2048], 256, num_outs=5)     # BEVFormer v2: C3..C5 -> P3..P5 + P6, P7 (strides 8..128)
    fpn = FPN([2048], 256, num_outs=1)                # BEVFormer-tiny: C5 -> one 256-channel level

1x1 lateral convs, nearest-neighbour top-down addition, a 3x3 output conv per level; extra levels beyond the
backbone's are stride-2 3x3 convs on the last output (``add_extra_convs="on_output"``), with a ReLU before every extra
conv but the first (mmdet's ``relu_before_extra_convs=True`` applies it to the previous *extra* output only), or
stride-2 max-pooling when ``add_extra_convs`` is False. Parameter names follow mmdet (``lateral_convs.i.conv``,
``fpn_convs.i.conv``) so official checkpoints map one to one; Xavier-uniform weights, zero biases (mmdet's init).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bevbridge.models.image.neck import _Wrap

__all__ = ["FPN"]


class FPN(nn.Module):
    """``forward(feats: list of [B, C_i, H_i, W_i]) -> list of num_outs [B, out_channels, H_l, W_l]``, finest first.

    Args:
        in_channels: channels of the backbone levels given to ``forward`` (finest first).
        out_channels: channels of every output level.
        num_outs: output levels; those beyond ``len(in_channels)`` are extra (stride 2 each).
        add_extra_convs: ``"on_output"`` (a 3x3 stride-2 conv on the previous output), ``"on_input"`` (the first one on
            the coarsest backbone level) or False (max-pooling, no parameters).
        relu_before_extra_convs: ReLU before the second and later extra convs (mmdet).
    """

    def __init__(self, in_channels: list[int], out_channels: int = 256, num_outs: int = 1,
                 add_extra_convs: Literal["on_output", "on_input", False] = "on_output",
                 relu_before_extra_convs: bool = True):
        super().__init__()
        if num_outs < len(in_channels):
            raise ValueError(f"FPN num_outs ({num_outs}) must be >= the number of input levels ({len(in_channels)})")
        self.in_channels, self.out_channels, self.num_outs = list(in_channels), out_channels, num_outs
        self.add_extra_convs, self.relu_before_extra_convs = add_extra_convs, relu_before_extra_convs
        n = len(in_channels)
        self.lateral_convs = nn.ModuleList(_Wrap(nn.Conv2d(c, out_channels, 1)) for c in in_channels)
        convs = [_Wrap(nn.Conv2d(out_channels, out_channels, 3, padding=1)) for _ in range(n)]
        if add_extra_convs:
            for i in range(num_outs - n):
                cin = in_channels[-1] if (i == 0 and add_extra_convs == "on_input") else out_channels
                convs.append(_Wrap(nn.Conv2d(cin, out_channels, 3, stride=2, padding=1)))
        self.fpn_convs = nn.ModuleList(convs)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        n = len(self.in_channels)
        if len(feats) != n:
            raise ValueError(f"FPN built for {n} input levels got {len(feats)}")
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        for i in range(n - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="nearest")
        outs = [self.fpn_convs[i](laterals[i]) for i in range(n)]
        for i in range(n, self.num_outs):
            if not self.add_extra_convs:
                outs.append(F.max_pool2d(outs[-1], 1, stride=2))
            elif i == n:
                outs.append(self.fpn_convs[i](feats[-1] if self.add_extra_convs == "on_input" else outs[-1]))
            else:
                prev = F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]
                outs.append(self.fpn_convs[i](prev))
        return outs
