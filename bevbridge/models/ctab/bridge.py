"""The Cross-Task Attention Bridge (CTAB), papers/ctab.txt Sec. III-D, Eqs. 2-7, Fig. 2.

    F_det [B, 256, H, W], F_seg [B, 128, H, W]
      -> Eq. 2-3: ReLU(GN(Conv1x1(.))) to d = 128 each, flattened to [B, N, d], N = H W
      -> Eq. 4: A_d2s = MSDA(Q = F_seg, V = F_det, p_ref)     (segmentation queries read detection features)
         Eq. 5: A_s2d = MSDA(Q = F_det, V = F_seg, p_ref)     (detection queries read segmentation features)
         h = 8 heads, K = 4 points, L = 1 level; shared reference points on the uniform grid of cell centres;
         MSDA's internal residual disabled (a zero identity), so only the attended signal passes
      -> Eq. 6: F'_det = sigmoid(g_det) * GN(Conv3x3(A_s2d)) + F_det      (d -> 256)
         Eq. 7: F'_seg = sigmoid(g_seg) * GN(Conv3x3(A_d2s)) + F_seg      (d -> 128)
         scalar gates g initialised to -2.0 (sigmoid ~ 0.12); no activation before the gated residual.

Parameters: 0.58M at the paper's defaults (the test asserts it); the two gates are the only scalar parameters. The
paper does not state GN's group count: 32 by default (``gn_groups``). MSDA dropout follows mmcv's default (0.1).
"""

from __future__ import annotations

import torch
from torch import nn

from bevbridge.geometry import unit_cell_centres
from bevbridge.ops.msda import MSDeformAttn

__all__ = ["CrossTaskAttentionBridge"]


def _proj(cin: int, cout: int, groups: int, kernel: int, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, padding=kernel // 2), nn.GroupNorm(groups, cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class CrossTaskAttentionBridge(nn.Module):
    """``forward(det_feat [B, 256, H, W], seg_feat [B, 128, H, W]) -> (det_feat', seg_feat')``, same shapes.

    After each forward, ``gates()`` returns the current sigmoid(g) values for logging (Fig. 3).
    """

    def __init__(self, det_channels: int = 256, seg_channels: int = 128, dim: int = 128, heads: int = 8,
                 points: int = 4, gate_init: float = -2.0, gn_groups: int = 32, dropout: float = 0.1):
        super().__init__()
        self.det_proj = _proj(det_channels, dim, gn_groups, 1, relu=True)  # Eq. 2
        self.seg_proj = _proj(seg_channels, dim, gn_groups, 1, relu=True)  # Eq. 3
        self.det_to_seg = MSDeformAttn(dim, heads, 1, points, dropout=dropout, residual=False)  # Eq. 4
        self.seg_to_det = MSDeformAttn(dim, heads, 1, points, dropout=dropout, residual=False)  # Eq. 5
        self.det_out = _proj(dim, det_channels, gn_groups, 3, relu=False)  # Eq. 6
        self.seg_out = _proj(dim, seg_channels, gn_groups, 3, relu=False)  # Eq. 7
        self.gate_det = nn.Parameter(torch.tensor(float(gate_init)))
        self.gate_seg = nn.Parameter(torch.tensor(float(gate_init)))

    def forward(self, det_feat: torch.Tensor, seg_feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, _, H, W = det_feat.shape
        if seg_feat.shape[-2:] != (H, W):
            raise ValueError(f"CTAB needs det and seg features on one grid, got {(H, W)} and {tuple(seg_feat.shape[-2:])}")
        fd = self.det_proj(det_feat).flatten(2).transpose(1, 2)  # [B, N, d]
        fs = self.seg_proj(seg_feat).flatten(2).transpose(1, 2)
        ref = unit_cell_centres(H, W, det_feat.device, fd.dtype).view(1, H * W, 1, 2).expand(B, -1, -1, -1)
        shapes = torch.tensor([[H, W]], device=det_feat.device)
        start = torch.zeros(1, dtype=torch.long, device=det_feat.device)
        a_d2s = self.det_to_seg(fs, ref, shapes, start, value=fd)  # seg queries attend to det values
        a_s2d = self.seg_to_det(fd, ref, shapes, start, value=fs)  # det queries attend to seg values
        to_map = lambda a: a.transpose(1, 2).reshape(B, -1, H, W)  # noqa: E731
        det_out = torch.sigmoid(self.gate_det) * self.det_out(to_map(a_s2d)) + det_feat
        seg_out = torch.sigmoid(self.gate_seg) * self.seg_out(to_map(a_d2s)) + seg_feat
        return det_out, seg_out

    def gates(self) -> dict[str, float]:
        """``{"ctab/gate_det": sigmoid(g_det), "ctab/gate_seg": sigmoid(g_seg)}``."""
        return {"ctab/gate_det": float(torch.sigmoid(self.gate_det.detach())),
                "ctab/gate_seg": float(torch.sigmoid(self.gate_seg.detach()))}
