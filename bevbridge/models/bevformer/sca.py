"""BEVFormer's spatial cross-attention (SCA, Eq. 3 of BEVFormer; ``SpatialCrossAttention`` + ``MSDeformableAttention3D``).

For the BEV query at cell (x, y), D reference points of its pillar (heights ``pillar_heights``) are projected into
every camera; V_hit is the set of cameras in which at least one of them lands in front of the camera and inside the
image. The query attends, by multi-scale deformable attention, to the features of each camera of V_hit around its
projected points (``num_points`` sampling points per head and level, split evenly over the D heights, each group
offset from its height's projection), and the results are summed and divided by |V_hit| (1 if no camera sees it):

    SCA(Q_p, F_t) = 1 / |V_hit| * sum_{i in V_hit} sum_{j=1..D} DeformAttn(Q_p, P(p, i, j), F_t^i)

Projection (``project_pillars``): augmented ego frame --bda^-1--> ego --sensor2ego^-1--> camera --K--> pixels of
the original image --ida--> pixels of the network input; pixel centres are integers (OpenCV), so pixel u is the
normalised coordinate (u + 0.5) / W_pad of the zero-padded input (mmdet pads to a multiple of 32; the feature maps
cover the padded image). A point counts as seen if its depth exceeds 1e-5 m and it lies strictly inside the *unpadded*
image (the released code tests the padded extent); points behind a camera are divided by 1e-5 as released, which
sends them far outside the map, where they sample zeros. Dropped cameras (``cam_mask`` False) see nothing.

Queries are "rebatched" per camera as the released code does (only the queries a camera sees attend to it), here
without a Python loop: a stable sort puts each camera's hit queries first, and a scatter-add sums them back.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bevbridge.geometry import BEVGrid
from bevbridge.ops.msda import ms_deform_attn

__all__ = ["pillar_points", "camera_projection", "project_pillars", "MSDeformableAttention3D",
           "SpatialCrossAttention"]


def pillar_points(grid: BEVGrid, z_range: tuple[float, float], num_points: int,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """``[D, H*W, 3]`` metres: every BEV cell centre (row-major, iy outer) at D heights.

    Heights as released: ``zmin + linspace(0.5, (zmax - zmin) - 0.5, D)`` (z range [-5, 3], D = 4: -4.5, -2.17,
    0.17, 2.5 m).
    """
    zmin, zmax = z_range
    xy = grid.cell_centres(device, torch.float64).reshape(-1, 2)
    z = zmin + torch.linspace(0.5, (zmax - zmin) - 0.5, num_points, dtype=torch.float64, device=device)
    pts = torch.cat([xy[None].expand(num_points, -1, -1), z.view(-1, 1, 1).expand(-1, xy.shape[0], 1)], -1)
    return pts.to(torch.float32)


def camera_projection(K: torch.Tensor, sensor2ego: torch.Tensor, ida: torch.Tensor,
                      bda: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, N, 4, 4]`` = ``ida @ K @ sensor2ego^-1 @ bda^-1`` (3x3 matrices embedded in 4x4): an augmented ego
    point (x, y, z, 1) -> (z_cam * u', z_cam * v', z_cam, 1), with (u', v') pixels of the network input."""
    B, N = K.shape[:2]
    eye = torch.eye(4, dtype=K.dtype, device=K.device).expand(B, N, 4, 4)
    K4, ida4 = eye.clone(), eye.clone()
    K4[..., :3, :3] = K
    ida4[..., :3, :3] = ida  # acts on z * (u, v, 1), so its translation scales with z as it must
    P = ida4 @ K4 @ torch.linalg.inv(sensor2ego.to(K.dtype))
    if bda is not None:
        P = P @ torch.linalg.inv(bda.to(K.dtype))[:, None]
    return P


def project_pillars(points: torch.Tensor, K: torch.Tensor, sensor2ego: torch.Tensor, ida: torch.Tensor,
                    bda: torch.Tensor | None, image_hw: tuple[int, int], padded_hw: tuple[int, int],
                    cam_mask: torch.Tensor | None = None, eps: float = 1e-5
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Project ``points [D, Q, 3]`` (augmented ego frame) into every camera.

    Returns ``(uv [B, N, Q, D, 2]`` normalised by the padded input ``padded_hw`` (x, y in [0, 1] on the feature
    maps), ``hit [B, N, Q, D]`` (in front and inside the unpadded ``image_hw``), ``pix [B, N, Q, D, 2]`` pixels).
    """
    dt = torch.float64 if torch.float64 in (points.dtype, K.dtype) else torch.float32  # never half precision
    with torch.autocast(device_type=points.device.type, enabled=False):
        P = camera_projection(K.to(dt), sensor2ego.to(dt), ida.to(dt), None if bda is None else bda.to(dt))
        pts = points.to(dt)
        homo = torch.cat([pts, torch.ones_like(pts[..., :1])], -1).permute(1, 0, 2)  # [Q, D, 4]
        cam = torch.einsum("bnij,qdj->bnqdi", P[..., :3, :], homo)  # [B, N, Q, D, 3] = z * (u, v, 1)
        z = cam[..., 2:3]
        pix = cam[..., :2] / torch.clamp(z, min=eps)
        (H, W), (Hp, Wp) = image_hw, padded_hw
        uv = (pix + 0.5) / pix.new_tensor([Wp, Hp])
        lim = pix.new_tensor([W, H])
        hit = (z[..., 0] > eps) & ((pix + 0.5) > 0).all(-1) & ((pix + 0.5) < lim).all(-1)
    if cam_mask is not None:
        hit = hit & cam_mask[:, :, None, None].bool()
    return uv, hit, pix


def _msda_init(sampling_offsets: nn.Linear, attention_weights: nn.Linear, heads: int, groups: int,
               points: int) -> None:
    """mmcv's deformable-attention init: offsets weight 0, bias = head direction (cos, sin) / max-abs x (k + 1) for
    point k; attention weights 0 (uniform softmax). ``groups`` = levels (x queue length for TSA)."""
    nn.init.zeros_(sampling_offsets.weight)
    theta = torch.arange(heads, dtype=torch.float64) * (2.0 * math.pi / heads)
    g = torch.stack([theta.cos(), theta.sin()], -1)
    g = (g / g.abs().max(-1, keepdim=True).values).view(heads, 1, 1, 2).repeat(1, groups, points, 1)
    g = g * torch.arange(1, points + 1, dtype=torch.float64).view(1, 1, points, 1)
    with torch.no_grad():
        sampling_offsets.bias.copy_(g.flatten())
    nn.init.zeros_(attention_weights.weight)
    nn.init.zeros_(attention_weights.bias)


class MSDeformableAttention3D(nn.Module):
    """Deformable attention of rebatched queries to one camera's multi-level features, with D reference points per
    query; no output projection (SCA has it). ``forward(query [M, Nq, C], reference [M, Nq, D, 2], value [M, S, C],
    spatial_shapes [L, 2], level_start_index [L]) -> [M, Nq, C]``."""

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int = 8,
                 num_z: int = 4):
        super().__init__()
        if num_points % num_z:
            raise ValueError(f"SCA: num_points ({num_points}) must be a multiple of the pillar points ({num_z})")
        self.h, self.L, self.P, self.D = num_heads, num_levels, num_points, num_z
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        _msda_init(self.sampling_offsets, self.attention_weights, num_heads, num_levels, num_points)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)

    def forward(self, query: torch.Tensor, reference: torch.Tensor, value: torch.Tensor,
                spatial_shapes: torch.Tensor, level_start_index: torch.Tensor) -> torch.Tensor:
        M, Nq, C = query.shape
        h, L, P, D = self.h, self.L, self.P, self.D
        v = self.value_proj(value).view(M, value.shape[1], h, C // h)
        off = self.sampling_offsets(query).view(M, Nq, h, L, P, 2)
        w = self.attention_weights(query).view(M, Nq, h, L * P).softmax(-1).view(M, Nq, h, L, P)
        off = off / spatial_shapes.flip(-1).to(off.dtype)[None, None, None, :, None, :]  # (W, H) per level
        # point k = j * D + z belongs to height z (released: view [.., P // D, D, 2] + reference[.., None, D, 2])
        loc = reference[:, :, None, None, None, :, :] + off.view(M, Nq, h, L, P // D, D, 2)
        return ms_deform_attn(v, spatial_shapes, level_start_index, loc.view(M, Nq, h, L, P, 2), w)


class SpatialCrossAttention(nn.Module):
    """See the module docstring. ``forward(query [B, Q, C], value [B, N, S, C], spatial_shapes, level_start_index,
    uv [B, N, Q, D, 2], hit [B, N, Q, D], query_pos [B, Q, C]) -> [B, Q, C]`` (residual added)."""

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int = 8,
                 num_z: int = 4, dropout: float = 0.1):
        super().__init__()
        self.deformable_attention = MSDeformableAttention3D(embed_dims, num_heads, num_levels, num_points, num_z)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.dropout = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, query: torch.Tensor, value: torch.Tensor, spatial_shapes: torch.Tensor,
                level_start_index: torch.Tensor, uv: torch.Tensor, hit: torch.Tensor,
                query_pos: torch.Tensor | None = None) -> torch.Tensor:
        B, Q, C = query.shape
        N = value.shape[1]
        identity = query
        q = query if query_pos is None else query + query_pos
        seen = hit.any(-1)  # [B, N, Q]: camera i is in V_hit of the query
        n_seen = seen.sum(-1)  # [B, N]
        M = max(int(n_seen.max()), 1)
        order = torch.argsort((~seen).to(torch.uint8), dim=-1, stable=True)[..., :M]  # [B, N, M] seen queries first
        keep = torch.arange(M, device=query.device) < n_seen[..., None]  # [B, N, M]
        q_r = torch.gather(q[:, None].expand(B, N, Q, C), 2, order[..., None].expand(-1, -1, -1, C))
        D = uv.shape[-2]
        ref = torch.gather(uv, 2, order[..., None, None].expand(-1, -1, -1, D, 2))
        out = self.deformable_attention(q_r.flatten(0, 1), ref.flatten(0, 1), value.flatten(0, 1),
                                        spatial_shapes, level_start_index).view(B, N, M, C)
        out = out * keep[..., None].to(out.dtype)
        slots = out.new_zeros(B, Q, C).scatter_add_(1, order.flatten(1)[..., None].expand(-1, -1, C), out.flatten(1, 2))
        count = seen.sum(1).clamp(min=1).to(slots.dtype)  # |V_hit|, at least 1
        return self.dropout(self.output_proj(slots / count[..., None])) + identity
