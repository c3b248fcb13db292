"""TOD3Cap's relation Q-Former (MTA Eq. 1) and projector (MTA Eq. 2): from BEV features and one detected object to
the K visual query tokens that condition the language model.

    BEV [B, C, H, W] --Conv 1x1 stride s (no bias) + BN + ReLU--> [B, C, H/s, W/s] --Linear C->D + LN--> F [B, M, D]
    object: box code [10] --Linear 10->D-->  (TOD3Cap's box token)   and/or   query [C] --Linear C->D-->  d_0 [D]
    Eq. 1:  [d_0, F_b] --L ViT blocks (D, heads, MLP ratio 4, qkv bias)--> the first K outputs        [N, K, D]
    Eq. 2:  q = Phi^q(.) = LayerNorm(Linear D->H)                                                     [N, K, H]

Sizes as released (../shared/notes/anchor-facts.md): BEVFormer-tiny's 50x50x256 BEV, stride 5 -> M = 100 tokens,
D = 768, 8 blocks, 16 heads, K = 10 (the object token's output and the first 9 BEV tokens' outputs, as the released
code slices them), H = the LM's hidden size. TOD3Cap's ``Conv3d(k=1, s=5)`` on the BEV seen as a 1-deep volume is a
1x1 2-D convolution with stride 5 (the same weights); it keeps every 5th cell. There is no positional embedding:
BEVFormer's BEV features already carry their position (its BEV queries have a learned positional encoding).

Eq. 1 writes each block as ``d_l = Q_l([d_{l-1}, F])``; as released, the BEV tokens go through the blocks with the
object token (each block sees the previous block's BEV tokens, not the raw F). The object token's hidden state after
every block is returned too (``hidden [L, N, D]``): MTA's BLA aligns the one after block l (Eq. 3).

The object token (``object_token``): ``box`` = TOD3Cap's box token (the matched query's predicted 10-d box code,
gradients flowing into the regression branch); ``query`` = the matched decoder query's embedding (MTA's "detection
embedding from the detection head", Eq. 1's d_0); ``box+query`` = the sum of both projections.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["BEVTokens", "ObjectToken", "RelationQFormer", "Projector", "BOX_CODE_SIZE"]

BOX_CODE_SIZE = 10  # BEVFormer's box code: x, y, log l, log w, z, log h, sin yaw, cos yaw, vx, vy


class BEVTokens(nn.Module):
    """``[B, C, H, W] -> [B, ceil(H/s) * ceil(W/s), D]`` (row-major over the strided grid)."""

    def __init__(self, bev_channels: int, dim: int, stride: int):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(bev_channels, bev_channels, 1, stride=stride, bias=False),
                                  nn.BatchNorm2d(bev_channels), nn.ReLU(inplace=True))
        self.proj = nn.Linear(bev_channels, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, bev: torch.Tensor) -> torch.Tensor:
        x = self.down(bev).flatten(2).transpose(1, 2)
        return self.norm(self.proj(x))


class ObjectToken(nn.Module):
    """The detection embedding d_0 of each object (see the module docstring): ``box [N, 10]``, ``query [N, C]``
    -> ``[N, D]``."""

    def __init__(self, kind: Literal["box", "query", "box+query"], query_channels: int, dim: int):
        super().__init__()
        if kind not in ("box", "query", "box+query"):
            raise ValueError(f"object_token must be 'box', 'query' or 'box+query', got {kind!r}")
        self.kind = kind
        self.box = nn.Linear(BOX_CODE_SIZE, dim) if "box" in kind else None
        self.query = nn.Linear(query_channels, dim) if "query" in kind else None

    def forward(self, box: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        out = self.box(box) if self.box is not None else 0
        return out + self.query(query) if self.query is not None else out


class RelationQFormer(nn.Module):
    """Eq. 1: ``obj [N, D]`` with its sample's BEV tokens ``bev [B, M, D]`` (``sample [N]`` indexes B) through the
    blocks -> ``(first K outputs [N, K, D], object token after each block [L, N, D])``."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float, query_len: int):
        super().__init__()
        from timm.models.vision_transformer import Block

        self.query_len = query_len
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, qkv_bias=True) for _ in range(depth))

    def forward(self, obj: torch.Tensor, bev: torch.Tensor, sample: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.query_len > 1 + bev.shape[1]:
            raise ValueError(f"query_len {self.query_len} exceeds the 1 + {bev.shape[1]} Q-Former tokens")
        x = torch.cat([obj[:, None].to(bev.dtype), bev[sample]], 1)
        hidden = []
        for block in self.blocks:
            x = block(x)
            hidden.append(x[:, 0])
        return x[:, : self.query_len], torch.stack(hidden)


class Projector(nn.Module):
    """Eq. 2: ``[N, K, D] -> [N, K, H]``, Linear + LayerNorm (TOD3Cap's visual_proj + visual_proj_norm)."""

    def __init__(self, dim: int, lm_hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, lm_hidden)
        self.norm = nn.LayerNorm(lm_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))
