"""The transformer feed-forward block of BEVFormer's encoder and decoder layers (mmcv ``FFN``, two fully connected
layers): ``x + Dropout(Linear(Dropout(ReLU(Linear(x)))))``; C = 256 and 512 hidden: 262,912 parameters.

Parameter names follow mmcv (``layers.0.0``, ``layers.1``); weights Xavier-uniform as BEVFormer's transformer init
(every parameter with more than one dimension), biases PyTorch's default.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FFN"]


class FFN(nn.Module):
    """``forward(x [..., C]) -> [..., C]`` with the residual added."""

    def __init__(self, embed_dims: int = 256, ffn_channels: int = 512, dropout: float = 0.1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(embed_dims, ffn_channels), nn.ReLU(inplace=True), nn.Dropout(dropout)),
            nn.Linear(ffn_channels, embed_dims), nn.Dropout(dropout))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)
