"""BEVFormer's encoder (Fig. 2 of BEVFormer; ``PerceptionTransformer.get_bev_features`` + ``BEVFormerEncoder``).

    Q = BEV queries [B, H*W, C] (+ CanBusMLP(can bus) when on)          pos = learned BEV positional encoding
    image features of every level l and camera i, + cams_embeds[i] + level_embeds[l]  -> value [B, N, S, C]
    pillar points (D heights per cell) projected into every camera  -> uv, hit           (sca.project_pillars)
    repeat ``layers`` times (post-norm, as published):
        Q = LN(TSA(Q, {B'_{t-1}, Q_0}))        (v1 only; temporal self-attention, tsa.py)
        Q = LN(SCA(Q, value, uv, hit))         (spatial cross-attention, sca.py)
        Q = LN(FFN(Q))
    -> BEV features [B, H*W, C]   (row iy*W + ix: H along y, W along x)

Parameters per layer at C = 256, FFN 512, 8 heads: TSA 230,080 + SCA 180,928 + FFN 262,912 + 3 LayerNorms 1,536 =
675,456 (BEVFormer-tiny, SCA with 1 level and 8 points); v2's layers have no TSA. ``level_embeds`` has 4 rows as
released (``num_feature_levels=4``) whatever the number of levels read.
"""

from __future__ import annotations

import torch
from torch import nn

from bevbridge.geometry import BEVGrid
from bevbridge.models.bevformer.bev_queries import BEVQueries
from bevbridge.models.bevformer.can_bus import CanBusMLP
from bevbridge.models.bevformer.config import EncoderConfig
from bevbridge.models.bevformer.ffn import FFN
from bevbridge.models.bevformer.sca import SpatialCrossAttention, pillar_points, project_pillars
from bevbridge.models.bevformer.tsa import TemporalSelfAttention

__all__ = ["EncoderLayer", "BEVEncoder", "NUM_FEATURE_LEVELS", "flatten_levels"]

NUM_FEATURE_LEVELS = 4


def flatten_levels(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``feats``: L maps ``[B, N, C, h_l, w_l]`` -> ``(value [B, N, S, C], spatial_shapes [L, 2], level_start_index
    [L])`` with S = sum h_l * w_l, each level row-major (the MSDA layout of bevbridge/ops/msda.py)."""
    shapes = torch.tensor([f.shape[-2:] for f in feats], dtype=torch.long, device=feats[0].device)
    starts = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    value = torch.cat([f.flatten(3).transpose(2, 3) for f in feats], 2)
    return value, shapes, starts


class EncoderLayer(nn.Module):
    """One encoder layer: [TSA, LN,] SCA, LN, FFN, LN (mmcv names: ``attentions``, ``norms``, ``ffns``)."""

    def __init__(self, cfg: EncoderConfig, num_levels: int, bev_hw: tuple[int, int]):
        super().__init__()
        C = cfg.embed_dims
        attns: list[nn.Module] = []
        if cfg.tsa:
            attns.append(TemporalSelfAttention(C, cfg.heads, cfg.tsa_points, bev_hw, cfg.dropout))
        attns.append(SpatialCrossAttention(C, cfg.heads, num_levels, cfg.sca_points, cfg.pillar_points, cfg.dropout))
        self.attentions = nn.ModuleList(attns)
        self.norms = nn.ModuleList(nn.LayerNorm(C) for _ in range(len(attns) + 1))
        self.ffns = nn.ModuleList([FFN(C, cfg.ffn_channels, cfg.dropout)])
        self.tsa = cfg.tsa

    def forward(self, query, bev_pos, bev_query, history, has_history, value, spatial_shapes, level_start_index,
                uv, hit) -> torch.Tensor:
        i = 0
        if self.tsa:
            query = self.norms[0](self.attentions[0](query, history, has_history, bev_pos, bev_query))
            i = 1
        query = self.norms[i](self.attentions[i](query, value, spatial_shapes, level_start_index, uv, hit, bev_pos))
        return self.norms[i + 1](self.ffns[0](query))


class BEVEncoder(nn.Module):
    """``forward(feats, K, sensor2ego, ida, bda, cam_mask, padded_hw, can_bus=None, history=None,
    has_history=None) -> [B, H*W, C]`` (see the module docstring).

    Args:
        grid: the BEV grid (H x W queries over its extent, in the augmented ego frame).
        cfg: the encoder section of the config.
        num_levels: image feature levels read by SCA.
        image_hw: (H, W) of the unpadded network input (points projecting outside it are not seen).
    """

    def __init__(self, grid: BEVGrid, cfg: EncoderConfig, num_levels: int, image_hw: tuple[int, int]):
        super().__init__()
        if num_levels > NUM_FEATURE_LEVELS:
            raise ValueError(f"BEVEncoder: at most {NUM_FEATURE_LEVELS} feature levels, got {num_levels}")
        self.grid, self.image_hw = grid, tuple(image_hw)
        C = cfg.embed_dims
        self.queries = BEVQueries(grid.H, grid.W, C)
        self.level_embeds = nn.Parameter(torch.randn(NUM_FEATURE_LEVELS, C))
        self.cams_embeds = nn.Parameter(torch.randn(cfg.num_cams, C))
        self.can_bus_mlp = CanBusMLP(C) if cfg.can_bus else None
        self.layers = nn.ModuleList(EncoderLayer(cfg, num_levels, grid.shape) for _ in range(cfg.layers))
        self.register_buffer("pillars", pillar_points(grid, cfg.z_range, cfg.pillar_points), persistent=False)

    def forward(self, feats: list[torch.Tensor], K: torch.Tensor, sensor2ego: torch.Tensor, ida: torch.Tensor,
                bda: torch.Tensor | None, cam_mask: torch.Tensor | None, padded_hw: tuple[int, int],
                can_bus: torch.Tensor | None = None, history: torch.Tensor | None = None,
                has_history: torch.Tensor | None = None) -> torch.Tensor:
        B, N = feats[0].shape[:2]
        if N > self.cams_embeds.shape[0]:
            raise ValueError(f"BEVEncoder has {self.cams_embeds.shape[0]} camera embeddings (model.encoder.num_cams) "
                             f"but the batch has {N} cameras")
        feats = [f + (self.cams_embeds[:N, :, None, None] + self.level_embeds[lvl, :, None, None]).to(f.dtype)
                 for lvl, f in enumerate(feats)]
        value, shapes, starts = flatten_levels(feats)
        uv, hit, _ = project_pillars(self.pillars, K, sensor2ego, ida, bda, self.image_hw, padded_hw, cam_mask)
        query, pos = self.queries(B)
        query = query.to(value.dtype)
        if self.can_bus_mlp is not None:
            if can_bus is None:
                raise ValueError("BEVEncoder: model.encoder.can_bus is on but no CAN-bus signal was given")
            query = query + self.can_bus_mlp(can_bus.to(query.dtype))[:, None]
        bev_query = query
        for layer in self.layers:
            query = layer(query, pos.to(query.dtype), bev_query, history, has_history, value, shapes, starts,
                          uv.to(query.dtype), hit)
        return query
