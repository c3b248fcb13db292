"""BEVFormer's object decoder (``DetectionTransformerDecoder`` with ``DetrTransformerDecoderLayer``; Deformable DETR).

Each of the ``layers`` layers (post-norm, as published):

    q = LN(q + Dropout(MHSA(q + pos, q + pos, q)))                  self-attention among the object queries
    q = LN(MSDeformAttn(q + pos, reference (x, y), BEV))           deformable cross-attention on the BEV (1 level)
    q = LN(FFN(q))

With iterative box refinement (``reg_branches`` given), after layer l the reference point moves by the layer's box
regression: (x, y) <- sigmoid(delta[0:2] + logit(x, y)), z <- sigmoid(delta[4] + logit(z)), detached before the
next layer (Deformable DETR Sec. 4 / BEVFormer). Group DETR: in training the queries form ``groups`` independent
sets that attend only to their own group in self-attention (folded into the batch here; the cross-attention and FFN
are per query anyway). Parameters per layer at C = 256, FFN 512, 8 heads, 4 points: MHSA 263,168 + deformable
cross-attention 156,256 + FFN 262,912 + 3 LayerNorms 1,536 = 683,872.
"""

from __future__ import annotations

import torch
from torch import nn

from bevbridge.models.bevformer.config import DecoderConfig
from bevbridge.models.bevformer.ffn import FFN
from bevbridge.ops.msda import MSDeformAttn

__all__ = ["inverse_sigmoid", "SelfAttention", "DecoderLayer", "BEVDecoder"]


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``log(x / (1 - x))`` with x clamped to [0, 1] and both terms to >= eps (mmdet's inverse_sigmoid)."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class SelfAttention(nn.Module):
    """mmcv ``MultiheadAttention``: ``identity + Dropout(MHA(q + pos, q + pos, q))`` (attention dropout too)."""

    def __init__(self, embed_dims: int, num_heads: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=dropout, batch_first=True)
        self.proj_drop = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.attn.out_proj.weight)  # BEVFormer's transformer init: Xavier for dim > 1

    def forward(self, query: torch.Tensor, query_pos: torch.Tensor, groups: int = 1) -> torch.Tensor:
        B, Nq, C = query.shape
        if Nq % groups:
            raise ValueError(f"{Nq} queries do not split into {groups} groups")
        q = (query + query_pos).reshape(B * groups, Nq // groups, C)  # group DETR: groups attend within themselves
        v = query.reshape(B * groups, Nq // groups, C)
        out = self.attn(q, q, v, need_weights=False)[0].reshape(B, Nq, C)
        return query + self.proj_drop(out)


class DecoderLayer(nn.Module):
    """self-attention, LN, deformable cross-attention on the BEV, LN, FFN, LN (mmcv names)."""

    def __init__(self, cfg: DecoderConfig, embed_dims: int):
        super().__init__()
        C = embed_dims
        self.attentions = nn.ModuleList([SelfAttention(C, cfg.heads, cfg.dropout),
                                         MSDeformAttn(C, cfg.heads, 1, cfg.points, cfg.dropout)])
        self.norms = nn.ModuleList(nn.LayerNorm(C) for _ in range(3))
        self.ffns = nn.ModuleList([FFN(C, cfg.ffn_channels, cfg.dropout)])

    def forward(self, query, query_pos, reference_xy, bev, bev_shape, bev_start, groups: int = 1) -> torch.Tensor:
        query = self.norms[0](self.attentions[0](query, query_pos, groups))
        query = self.norms[1](self.attentions[1](query, reference_xy, bev_shape, bev_start, value=bev,
                                                 query_pos=query_pos))
        return self.norms[2](self.ffns[0](query))


class BEVDecoder(nn.Module):
    """``forward(query [B, Nq, C], query_pos [B, Nq, C], reference [B, Nq, 3] in (0, 1), bev [B, H*W, C],
    bev_hw, reg_branches=None, groups=1) -> (hs [L, B, Nq, C], references [L, B, Nq, 3])`` where
    ``references[l]`` is the reference point layer l's output is relative to (the input one for l = 0)."""

    def __init__(self, cfg: DecoderConfig, embed_dims: int):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(cfg, embed_dims) for _ in range(cfg.layers))

    def forward(self, query: torch.Tensor, query_pos: torch.Tensor, reference: torch.Tensor, bev: torch.Tensor,
                bev_hw: tuple[int, int], reg_branches: nn.ModuleList | None = None, groups: int = 1
                ) -> tuple[torch.Tensor, torch.Tensor]:
        shape = torch.tensor([bev_hw], dtype=torch.long, device=bev.device)
        start = torch.zeros(1, dtype=torch.long, device=bev.device)
        hs, refs = [], []
        out = query
        for lid, layer in enumerate(self.layers):
            refs.append(reference)
            out = layer(out, query_pos, reference[..., None, :2].to(out.dtype), bev, shape, start, groups)
            hs.append(out)
            if reg_branches is not None:
                delta = reg_branches[lid](out)
                new = torch.cat([delta[..., 0:2] + inverse_sigmoid(reference[..., 0:2]),
                                 delta[..., 4:5] + inverse_sigmoid(reference[..., 2:3])], -1)
                reference = new.sigmoid().detach()
        return torch.stack(hs), torch.stack(refs)
