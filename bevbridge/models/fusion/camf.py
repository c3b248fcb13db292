"""Cross-Attention Multi-layer Fusion (CAMF) of camera and radar BEV features (RCBEVDet Sec. 3.3; public config).

    radar BEV [B, 384, H, W] --3x3 conv-BN-ReLU--> [B, 256, H, W]
    with learned row/column positional encodings added to each modality (query and value alike):
      radar queries attend to camera values  (deformable cross-attention, 1 level, 8 heads, 8 points)
      camera queries attend to radar values
    both outputs (no residual, no LayerNorm, no FFN, as the public code) -> concat -> RadarConvFuser:
      conv3x3(512 -> 256)-BN-ReLU, concat with the 512 inputs, 3 x conv3x3-BN-ReLU (768 -> 256 -> 256 -> 256).

Reference points are the cell centres of the BEV map. Parameter names follow the public code where it matters for
checkpoint loading (see models/ctab/rcbevdet_weights.py).
"""

from __future__ import annotations

import torch
from torch import nn

from bevbridge.geometry import unit_cell_centres
from bevbridge.ops.msda import MSDeformAttn

__all__ = ["LearnedPositionalEncoding", "RadarConvFuser", "CAMF"]


class LearnedPositionalEncoding(nn.Module):
    """``[B, 2F, H, W]`` = concat(column embedding, row embedding) (mmdet's LearnedPositionalEncoding)."""

    def __init__(self, num_feats: int, rows: int, cols: int):
        super().__init__()
        self.row_embed = nn.Embedding(rows, num_feats)
        self.col_embed = nn.Embedding(cols, num_feats)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, batch: int, H: int, W: int) -> torch.Tensor:
        x = self.col_embed.weight[:W]  # [W, F]
        y = self.row_embed.weight[:H]  # [H, F]
        pos = torch.cat([x[None].expand(H, W, -1), y[:, None].expand(H, W, -1)], -1)  # [H, W, 2F]
        return pos.permute(2, 0, 1)[None].expand(batch, -1, -1, -1)


def _cbr(cin: int, cout: int, eps: float = 1e-5, momentum: float = 0.1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout, eps=eps, momentum=momentum),
                         nn.ReLU(inplace=True))


class RadarConvFuser(nn.Module):
    """``forward(a [B, C, H, W], b [B, C, H, W]) -> [B, C, H, W]``: conv fuse, skip-concat, ``blocks`` convs."""

    def __init__(self, channels: int = 256, blocks: int = 3):
        super().__init__()
        self.fuse_conv = _cbr(2 * channels, channels)
        self.deconv = nn.ModuleList(_cbr(3 * channels if i == 0 else channels, channels) for i in range(blocks))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x = torch.cat([a, b], 1)
        out = torch.cat([self.fuse_conv(x), x], 1)
        for layer in self.deconv:
            out = layer(out)
        return out


class CAMF(nn.Module):
    """``forward(cam_bev [B, C_cam, H, W], radar_bev [B, C_radar, H, W]) -> [B, dim, H, W]``."""

    def __init__(self, cam_channels: int = 256, radar_channels: int = 384, dim: int = 256, heads: int = 8,
                 points: int = 8, bev_hw: tuple[int, int] = (128, 128), fuser_blocks: int = 3):
        super().__init__()
        if cam_channels != dim:
            raise ValueError(f"CAMF: camera BEV channels ({cam_channels}) must equal dim ({dim}) as in RCBEVDet")
        H, W = bev_hw
        self.radar_reduce = _cbr(radar_channels, dim, eps=1e-3, momentum=0.01)
        self.radar_pos = LearnedPositionalEncoding(dim // 2, H, W)
        self.cam_pos = LearnedPositionalEncoding(dim // 2, H, W)
        self.radar_from_cam = MSDeformAttn(dim, heads, 1, points, dropout=0.0, residual=False)
        self.cam_from_radar = MSDeformAttn(dim, heads, 1, points, dropout=0.0, residual=False)
        self.fuser = RadarConvFuser(dim, fuser_blocks)

    def forward(self, cam_bev: torch.Tensor, radar_bev: torch.Tensor) -> torch.Tensor:
        B, _, H, W = cam_bev.shape
        radar = self.radar_reduce(radar_bev)
        flat = lambda x: x.flatten(2).transpose(1, 2)  # noqa: E731  [B, C, H, W] -> [B, HW, C]
        r = flat(radar + self.radar_pos(B, H, W))
        c = flat(cam_bev + self.cam_pos(B, H, W))
        ref = unit_cell_centres(H, W, cam_bev.device, r.dtype).view(1, H * W, 1, 2).expand(B, -1, -1, -1)
        shapes = torch.tensor([[H, W]], device=cam_bev.device)
        start = torch.zeros(1, dtype=torch.long, device=cam_bev.device)
        f1 = self.radar_from_cam(r, ref, shapes, start, value=c)
        f2 = self.cam_from_radar(c, ref, shapes, start, value=r)
        to_map = lambda a: a.transpose(1, 2).reshape(B, -1, H, W)  # noqa: E731
        return self.fuser(to_map(f1), to_map(f2))
