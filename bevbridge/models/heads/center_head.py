"""CenterPoint's detection head (Yin et al. 2021) as RCBEVDet configures it (notes/anchor-facts.md).

``forward(bev [B, C, H, W]) -> list`` (one dict per task) of raw maps: ``reg [B,2,H,W]`` (sub-cell offset),
``height [B,1]`` (z of the centre), ``dim [B,3]`` (log l, w, h), ``rot [B,2]`` (sin, cos yaw), ``vel [B,2]``,
``heatmap [B, n_task_classes]`` (logits). A shared 3x3 conv-BN-ReLU (C -> 64) then, per task and per output, a
3x3 conv-BN-ReLU (64 -> 64) and a 3x3 conv to the output; heatmap biases start at -2.19 (prior 0.1).

Losses (``loss``): Gaussian focal loss on the clamped-sigmoid heatmap, normalised by the number of objects
(weight 6.0), and L1 on the 10-d box code at the object centres, normalised by the number of objects (weight 1.5).
Targets and decoding use ``bevbridge.ops.box_coder`` on the head's BEVGrid (RCBEVDet: 0.8 m cells).
Parameter names follow mmdet3d (shared_conv.conv/bn, task_heads.i.<name>.0.conv/bn, .1) for checkpoint loading.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SeparateHead", "CenterHeadNet", "COMMON_HEADS"]

COMMON_HEADS: dict[str, int] = {"reg": 2, "height": 1, "dim": 3, "rot": 2, "vel": 2}


class _ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


class SeparateHead(nn.Module):
    """One task's output branches: ``{name: [B, out, H, W]}``."""

    def __init__(self, in_channels: int, heads: dict[str, int], head_conv: int = 64, final_kernel: int = 3,
                 init_bias: float = -2.19):
        super().__init__()
        self.names = list(heads)
        for name, out in heads.items():
            final = nn.Conv2d(head_conv, out, final_kernel, padding=final_kernel // 2)
            branch = nn.Sequential(_ConvBNReLU(in_channels, head_conv, final_kernel), final)
            if name == "heatmap":
                nn.init.constant_(final.bias, init_bias)
            else:
                for m in branch.modules():
                    if isinstance(m, nn.Conv2d):
                        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            setattr(self, name, branch)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name)(x) for name in self.names}


class CenterHeadNet(nn.Module):
    """``forward(bev [B, C, H, W]) -> list[dict[str, Tensor]]``, one dict per task (see the module docstring)."""

    def __init__(self, in_channels: int, task_sizes: list[int], share_conv_channels: int = 64,
                 init_bias: float = -2.19, common_heads: dict[str, int] | None = None):
        super().__init__()
        heads = dict(common_heads or COMMON_HEADS)
        self.shared_conv = _ConvBNReLU(in_channels, share_conv_channels)
        self.task_heads = nn.ModuleList(
            SeparateHead(share_conv_channels, {**heads, "heatmap": n}, share_conv_channels, 3, init_bias)
            for n in task_sizes)

    def forward(self, bev: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        x = self.shared_conv(bev)
        return [head(x) for head in self.task_heads]
