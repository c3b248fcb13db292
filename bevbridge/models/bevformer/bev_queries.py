"""BEVFormer's BEV queries (Sec. 3.2 of BEVFormer): one learned query per BEV cell and a learned positional encoding.

    Q = bev_embedding  [H*W, C]            (cell (iy, ix) at row iy*W + ix: H along y, W along x, DESIGN.md)
    pos = [col_embed[ix] ; row_embed[iy]]  [H*W, C]   (mmdet's LearnedPositionalEncoding: x half first)

The queries keep nn.Embedding's N(0, 1) initialisation and the positional tables mmcv's uniform [0, 1) one, as
BEVFormerHead does. Parameters: H*W*C + (H + W)*C/2 (tiny: 640,000 + 12,800).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BEVQueries", "LearnedPositionalEncoding"]


class LearnedPositionalEncoding(nn.Module):
    """``forward() -> [H*W, 2*num_feats]``: column (x) embedding then row (y) embedding of every cell."""

    def __init__(self, num_feats: int, H: int, W: int):  # noqa: N803
        super().__init__()
        self.H, self.W = H, W
        self.row_embed = nn.Embedding(H, num_feats)
        self.col_embed = nn.Embedding(W, num_feats)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self) -> torch.Tensor:
        x = self.col_embed.weight[None].expand(self.H, -1, -1)  # [H, W, F]
        y = self.row_embed.weight[:, None].expand(-1, self.W, -1)  # [H, W, F]
        return torch.cat([x, y], -1).reshape(self.H * self.W, -1)


class BEVQueries(nn.Module):
    """``forward(batch_size) -> (queries [B, H*W, C], pos [B, H*W, C])``."""

    def __init__(self, H: int, W: int, embed_dims: int):  # noqa: N803
        super().__init__()
        if embed_dims % 2:
            raise ValueError(f"BEVQueries: embed_dims must be even, got {embed_dims}")
        self.H, self.W = H, W
        self.bev_embedding = nn.Embedding(H * W, embed_dims)
        self.positional_encoding = LearnedPositionalEncoding(embed_dims // 2, H, W)

    def forward(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        # a copy, not a view: a view of a parameter made under no_grad claims requires_grad without a grad_fn,
        # which breaks module hooks that look at outputs (torch's FlopCounterMode in ``bevbridge summary``)
        q = self.bev_embedding.weight.unsqueeze(0).repeat(batch_size, 1, 1)
        pos = self.positional_encoding()[None].expand(batch_size, -1, -1)
        return q, pos
