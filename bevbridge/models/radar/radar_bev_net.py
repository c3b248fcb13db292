"""RadarBEVNet's dual-stream pillar encoder (RCBEVDet, Sec. 3.2; public config in ../shared/notes/anchor-facts.md).

Input: radar pillars from ``bevbridge.ops.voxelize`` (``Voxels``: ``features [P, T, 7]`` with x, y, z, vx_comp,
vy_comp, rcs, dt; ``num_points [P]``; ``coors [P, 4] = (batch, iz, iy, ix)`` on the pillar BEVGrid, RCBEVDet: 0.2 m
over [-51.2, 51.2]). Output: one feature per pillar ``[P, 64]`` and the pillar's mean input features ``[P, 7]``
(x, y, z normalised to [0, 1] over the grid and height range) for the RCS-aware scatter.

Two streams run side by side over the points of each pillar:
- point stream: ``RFN`` layers (Linear -> BN1d -> ReLU) on ``[normalised xyz, vx, vy, rcs, dt, offset to pillar
  centre]`` (9-d), 7 -> 32 -> 64;
- transformer stream: a PointNet-style embedding of 11-d point features (+ a learned embedding of xyz), then per
  stage an Injector (stream cross-attention, zero-initialised scale), an Extractor (cross-attention + FFN) and a
  self-attention block whose logits are biased by ``-beta * (pairwise BEV distance)`` (distance-modulated
  self-attention, DMSA), with ``beta`` a per-query, per-head linear function of the features.
Attention is over the PILLARS of one sample (each pillar represented by the max over its points); every sample of
the batch attends only within itself (a padding mask, not a Python loop over samples).

Faithfulness notes (the public code defines the behaviour the checkpoints were trained with; we reproduce it):
the per-pillar max runs over all T slots including empty ones; the Extractor and the self-attention block return
their FFN output without a final residual; DMSA's ``beta`` is initialised to weight 0, bias U(0, 2).
Parameter names follow the public code so official checkpoints load (see ``models/ctab/rcbevdet_weights.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from bevbridge.geometry import BEVGrid
from bevbridge.ops.voxelize import Voxels

__all__ = ["RadarBEVNet", "pillars_to_padded"]


def pillars_to_padded(values: torch.Tensor, batch_idx: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scatter per-pillar rows ``[P, ...]`` into ``[B, Pmax, ...]`` by sample; returns (padded, valid [B, Pmax],
    slot [P]) where ``slot`` is each pillar's position inside its sample (for gathering back)."""
    counts = torch.bincount(batch_idx, minlength=batch_size)
    order = torch.argsort(batch_idx, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(batch_idx)
    slot[order] = torch.arange(batch_idx.numel(), device=batch_idx.device) - starts[batch_idx[order]]
    pmax = int(counts.max()) if batch_idx.numel() else 1
    padded = values.new_zeros((batch_size, max(pmax, 1), *values.shape[1:]))
    padded[batch_idx, slot] = values
    valid = torch.zeros(batch_size, max(pmax, 1), dtype=torch.bool, device=values.device)
    valid[batch_idx, slot] = True
    return padded, valid, slot


class _RFNLayer(nn.Module):
    """Linear (no bias) -> BatchNorm1d(eps 1e-3, momentum 0.01) -> ReLU on ``[P, T, C]``."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.linear = nn.Linear(cin, cout, bias=False)
        self.norm = nn.BatchNorm1d(cout, eps=1e-3, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        return F.relu(self.norm(x.transpose(1, 2)).transpose(1, 2))


class _PointEmbed(nn.Module):
    """PointNet-style embedding ``[P, T, Cin] -> [P, T, Cout]`` (per-point conv, pillar max, concat, conv)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv1d(cin, cout, 1), nn.BatchNorm1d(cout), nn.ReLU(inplace=True),
                                   nn.Conv1d(cout, cout, 1))
        self.conv2 = nn.Sequential(nn.Conv1d(cout * 2, cout * 2, 1), nn.BatchNorm1d(cout * 2), nn.ReLU(inplace=True),
                                   nn.Conv1d(cout * 2, cout, 1))

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        f = self.conv1(pts.transpose(1, 2))  # [P, C, T]
        g = f.max(dim=2, keepdim=True).values.expand_as(f)
        return self.conv2(torch.cat([g, f], 1)).transpose(1, 2)


class _CrossAttention(nn.Module):
    """Multi-head cross-attention, no qkv bias: queries ``[B, N, C]`` attend to ``context [B, N, C]``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, dim * 2, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q = self.q(x).view(B, N, self.heads, C // self.heads).transpose(1, 2)
        k, v = self.kv(c).view(B, N, 2, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :])
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class _Injector(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=1e-6)
        self.feat_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _CrossAttention(dim, heads)
        self.gamma = nn.Parameter(torch.zeros(dim))

    def forward(self, query: torch.Tensor, feat: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.gamma * self.attn(self.query_norm(query), self.feat_norm(feat), valid)


class _Extractor(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=1e-6)
        self.feat_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _CrossAttention(dim, heads)
        self.ffn = Mlp(dim, dim, act_layer=nn.GELU)
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, query: torch.Tensor, feat: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        query = query + self.attn(self.query_norm(query), self.feat_norm(feat), valid)
        return self.ffn(self.ffn_norm(query))


class _MHA(nn.Module):
    """Holds ``nn.MultiheadAttention`` as ``.attn`` (mmcv's MultiheadAttention naming); adds the identity."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return x + self.attn(x, x, x, attn_mask=bias, need_weights=False)[0]


class _DMSA(nn.Module):
    """Distance-modulated self-attention: logits += ``-beta_h(query) * ||p_i - p_j||`` (BEV distance)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.attention = _MHA(dim, heads)
        self.beta = nn.Linear(dim, heads)
        nn.init.zeros_(self.beta.weight)
        nn.init.uniform_(self.beta.bias, 0.0, 2.0)

    def forward(self, xyz: torch.Tensor, feat: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        B, N, _ = feat.shape
        dist = torch.cdist(xyz[..., :2], xyz[..., :2])  # [B, N, N]
        bias = -dist[:, None] * self.beta(feat).transpose(1, 2)[..., None]  # [B, heads, N(query), N(key)]
        bias = bias.masked_fill(~valid[:, None, None, :], float("-inf"))
        return self.attention(feat, bias.reshape(B * self.heads, N, N))


class _SelfAttentionBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _DMSA(dim, heads)
        self.ffn = Mlp(dim, dim * 2, act_layer=nn.GELU)
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, feat: torch.Tensor, xyz: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        feat = self.attn(xyz, self.query_norm(feat), valid) + feat
        return self.ffn(self.ffn_norm(feat))


class RadarBEVNet(nn.Module):
    """``forward(voxels: Voxels, batch_size) -> (pillar_feat [P, 64], pillar_mean [P, 7])``. See the module
    docstring. ``legacy_x_offset`` reproduces a quirk of the public code (the x offset to the pillar centre is taken
    from the z index, i.e. measured from the grid's edge) for exact parity with its checkpoints; off by default."""

    def __init__(self, grid: BEVGrid = BEVGrid.square(51.2, 0.2), z_range: tuple[float, float] = (-5.0, 3.0),
                 in_channels: int = 7, feat_channels: tuple[int, ...] = (32, 64), heads: int = 2,
                 legacy_x_offset: bool = False):
        super().__init__()
        chans = [in_channels + 2, *feat_channels]
        self.point_block = nn.ModuleList(_RFNLayer(chans[i], chans[i + 1]) for i in range(len(feat_channels)))
        self.extractor = nn.ModuleList(_Extractor(c, heads) for c in feat_channels)
        self.injector = nn.ModuleList(_Injector(c, heads) for c in feat_channels)
        self.transformer_block = nn.ModuleList(_SelfAttentionBlock(c, heads) for c in feat_channels)
        self.linear_module = nn.ModuleList(nn.Linear(feat_channels[i], feat_channels[i + 1])
                                           for i in range(len(feat_channels) - 1))
        self.out_linear = nn.Linear(feat_channels[-1] * 2, feat_channels[-1])
        e = feat_channels[0]
        self.pos_embed = nn.Sequential(nn.Linear(3, e), nn.LayerNorm(e), nn.ReLU(inplace=True),
                                       nn.Linear(e, e), nn.LayerNorm(e), nn.ReLU(inplace=True))
        self.point_embed = _PointEmbed(in_channels + 4, e)
        self.grid = grid
        self.z_range = tuple(z_range)
        self.legacy_x_offset = legacy_x_offset
        self.out_channels = feat_channels[-1]

    def forward(self, voxels: Voxels, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        features, num_points, coors = voxels.features, voxels.num_points, voxels.coors
        P, T, _ = features.shape
        mask = (torch.arange(T, device=features.device)[None] < num_points[:, None]).unsqueeze(-1).to(features.dtype)
        centres = voxels.centres(self.grid).to(features.dtype)  # [P, 2] metres of each pillar's cell centre
        if self.legacy_x_offset:
            centres = centres.clone()
            centres[:, 0] = self.grid.xmin + self.grid.res / 2
        f_center = features[..., :2] - centres[:, None]
        zmin, zmax = self.z_range
        feats = torch.cat([self.grid.xy_to_unit(features[..., :2]), (features[..., 2:3] - zmin) / (zmax - zmin),
                           features[..., 3:]], -1)
        count = mask.sum(1).clamp(min=1)
        mean_xy = (feats[..., :2] * mask).sum(1, keepdim=True) / count[:, None]
        f_mean = feats[..., :2] - mean_xy
        pillar_mean = (feats * mask).sum(1) / count  # [P, 7]

        x = torch.cat([feats, f_center], -1) * mask
        c = torch.cat([feats, f_mean, f_center], -1) * mask
        c = self.point_embed(c) + self.pos_embed(feats[..., :3])
        batch_idx = coors[:, 0].long()
        xyz_tokens, valid, slot = pillars_to_padded(feats[..., :3].detach().max(1).values, batch_idx, batch_size)
        valid[:, 0] = True  # a sample without pillars attends to one zero token instead of producing NaN

        def tokens(t: torch.Tensor) -> torch.Tensor:  # [P, T, C] -> [B, Pmax, C] (max over a pillar's slots)
            return pillars_to_padded(t.max(1).values, batch_idx, batch_size)[0]

        def back(t: torch.Tensor) -> torch.Tensor:  # [B, Pmax, C] -> [P, 1, C], broadcast over the T slots
            return t[batch_idx, slot].unsqueeze(1)

        for i, rfn in enumerate(self.point_block):
            x = rfn(x)
            c = c + back(self.injector[i](tokens(c), tokens(x), valid))
            x = x + back(self.extractor[i](tokens(x), tokens(c), valid))
            c = back(self.transformer_block[i](tokens(c), xyz_tokens, valid)).expand(-1, T, -1)
            if i < len(self.linear_module):
                c = self.linear_module[i](c)
        out = self.out_linear(torch.cat([c, x], -1)).max(1).values
        return out, pillar_mean
