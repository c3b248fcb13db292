"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021, Eq. 2) in pure PyTorch.

``ms_deform_attn`` is the core op with mmcv's tensor layouts and semantics:

- ``value [B, S, heads, dim]`` with ``S = sum(H_l * W_l)``: the L feature maps flattened row-major (y, then x) and
  concatenated; ``spatial_shapes [L, 2] = (H_l, W_l)``; ``level_start_index [L]`` where each level starts in S.
- ``sampling_locations [B, Nq, heads, L, P, 2]``: normalised (x, y) in [0, 1] per level; pixel (i, j) of a level has
  its centre at ((j + 0.5) / W, (i + 0.5) / H) (``grid_sample`` with ``align_corners=False``).
- ``attention_weights [B, Nq, heads, L, P]`` (softmax over L*P is the caller's job).
- returns ``[B, Nq, heads * dim]``: bilinear samples (zeros outside each map) weighted by the attention weights.

Two implementations give the same result (tests compare them in float64; the benchmark in float32):

- ``"reference"``: the straightforward one (mmcv's ``multi_scale_deformable_attn_pytorch``): one ``grid_sample`` per
  level on ``[B*heads, dim, H, W]`` maps, then a weighted sum. It materialises ``[B*heads, dim, Nq, L*P]`` samples.
- ``"gather"`` (the default): heads folded into the batch, all levels packed into one zero-bordered atlas, the four
  bilinear corners of every point found by index arithmetic, and the whole weighted sum done by one
  ``F.embedding_bag`` (per-sample weights = attention x bilinear weight), which reads each corner row once and
  materialises no per-point samples. Its backward sends the value and location gradients through ``grid_sample``'s
  own backward kernel on the atlas (the fastest scatter-add PyTorch has on CPU, measured against index_put_,
  index_add_, scatter_add_ and embedding_bag's backward) and the attention gradient through embedding_bag's
  per-sample-weight backward.

Measured and dropped (``benchmarks/RESULTS.md``): a single ``grid_sample`` over the atlas with autograd ("fused
levels": faster forward at L=1 only, slower forward+backward almost everywhere), bf16 (slower on CPU; half-precision
inputs are computed in float32 here), ``torch.compile`` of the reference.

The atlas: each level is padded with one zero row/column before and two after and the levels are stacked
vertically, ``[B*heads, Ha, Wa, dim]``. Pixel coordinates are clamped to ``[-1, W]`` x ``[-1, H]``; a clamped point
lands on zero padding, so it contributes exactly zero (as ``grid_sample``'s zero padding) and gets a zero location
gradient, and no bilinear corner can ever leave its own level's block.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ms_deform_attn", "ms_deform_attn_reference", "MSDeformAttn", "IMPLEMENTATIONS"]

Impl = Literal["gather", "reference"]
IMPLEMENTATIONS: tuple[str, ...] = ("gather", "reference")


def _check(value, spatial_shapes, level_start_index, sampling_locations, attention_weights) -> list[tuple[int, int]]:
    if value.dim() != 4:
        raise ValueError(f"value must be [B, S, heads, dim], got shape {tuple(value.shape)}")
    B, S, h, _ = value.shape
    shapes = [(int(H), int(W)) for H, W in spatial_shapes.tolist()]
    if sum(H * W for H, W in shapes) != S:
        raise ValueError(f"value has S={S} positions but spatial_shapes {shapes} sum to {sum(H * W for H, W in shapes)}")
    starts = [0]
    for H, W in shapes[:-1]:
        starts.append(starts[-1] + H * W)
    if level_start_index.tolist() != starts:
        raise ValueError(f"level_start_index {level_start_index.tolist()} does not match spatial_shapes (expected {starts})")
    L = len(shapes)
    loc, attn = sampling_locations, attention_weights
    if loc.dim() != 6 or loc.shape[0] != B or loc.shape[2] != h or loc.shape[3] != L or loc.shape[5] != 2:
        raise ValueError(f"sampling_locations must be [B={B}, Nq, heads={h}, L={L}, P, 2], got {tuple(loc.shape)}")
    if tuple(attn.shape) != tuple(loc.shape[:5]):
        raise ValueError(f"attention_weights must be {tuple(loc.shape[:5])} (= sampling_locations[..., 0]), "
                         f"got {tuple(attn.shape)}")
    return shapes


def ms_deform_attn_reference(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                             sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    """The straightforward implementation: one ``grid_sample`` per level (mmcv's pure-PyTorch path). Shapes: module doc."""
    shapes = _check(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    B, _, h, d = value.shape
    _, Nq, _, L, P, _ = sampling_locations.shape
    grids = 2 * sampling_locations - 1
    samples = []
    for lvl, v in enumerate(value.split([H * W for H, W in shapes], dim=1)):
        H, W = shapes[lvl]
        img = v.flatten(2).transpose(1, 2).reshape(B * h, d, H, W)
        # [B*h, Nq, P, 2]; contiguous: at B=1 flatten() would return a strided view, which the grid-sampler kernels
        # read 1.5-2x slower (mmcv's formulation has that penalty at batch 1 and not above).
        grid = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1).contiguous()
        samples.append(F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    attn = attention_weights.transpose(1, 2).reshape(B * h, 1, Nq, L * P)
    out = (torch.stack(samples, dim=-2).flatten(-2) * attn).sum(-1)  # [B*h, d, Nq]
    return out.view(B, h * d, Nq).transpose(1, 2).contiguous()


# ------------------------------------------------------------------------------------------------------- the atlas
def _atlas_layout(shapes: list[tuple[int, int]]) -> tuple[int, int, list[int]]:
    """``(Ha, Wa, row0)``: atlas size and the first padded row of each level (1 zero row/col before, 2 after)."""
    row0, r = [], 0
    for H, _ in shapes:
        row0.append(r)
        r += H + 3
    return r, max(W for _, W in shapes) + 3, row0


def _atlas(value: torch.Tensor, shapes: list[tuple[int, int]]) -> torch.Tensor:
    """``value [B, S, h, d]`` -> zero-bordered atlas ``[B*h, Ha, Wa, d]`` (channels last: a corner is one row)."""
    B, _, h, d = value.shape
    _, Wa, _ = _atlas_layout(shapes)
    v = value.permute(0, 2, 1, 3)  # [B, h, S, d]
    blocks = [F.pad(vl.reshape(B * h, H, W, d), (0, 0, 1, Wa - W - 1, 1, 2))
              for (H, W), vl in zip(shapes, v.split([H * W for H, W in shapes], dim=2))]
    return torch.cat(blocks, dim=1) if len(blocks) > 1 else blocks[0]


def _atlas_pixels(sampling_locations: torch.Tensor, shapes: list[tuple[int, int]]
                  ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Sampling locations -> ``(local, shift, Ha, Wa)``: clamped pixel coordinates (x, y) within each level
    ``[B*h, Nq, L*P, 2]`` and the whole-number offset ``[L*P, 2]`` of that level's block in the atlas. Kept apart
    so that float32 fractions are as exact as the reference's (the atlas coordinate is ``local + shift``)."""
    B, Nq, h, L, P, _ = sampling_locations.shape
    Ha, Wa, row0 = _atlas_layout(shapes)
    t = dict(dtype=sampling_locations.dtype, device=sampling_locations.device)
    size = torch.tensor([[W, H] for H, W in shapes], **t).view(L, 1, 2)
    shift = torch.tensor([[1.0, r + 1.0] for r in row0], **t).view(L, 1, 2).expand(L, P, 2).reshape(L * P, 2)
    loc = sampling_locations.permute(0, 2, 1, 3, 4, 5)  # [B, h, Nq, L, P, 2]
    pix = (loc * size - 0.5).nan_to_num(nan=-1.0)  # a NaN location samples nothing (as in grid_sample)
    pix = torch.maximum(torch.minimum(pix, size), torch.full_like(size, -1.0))
    return pix.reshape(B * h, Nq, L * P, 2).contiguous(), shift, Ha, Wa


def _to_grid(local: torch.Tensor, shift: torch.Tensor, Ha: int, Wa: int) -> torch.Tensor:
    """Level-local pixels + block offsets -> ``grid_sample`` coordinates on the atlas (align_corners=False)."""
    scale = local.new_tensor([2.0 / Wa, 2.0 / Ha])
    return (local + (shift + 0.5)) * scale - 1


def _attn_heads_first(attention_weights: torch.Tensor) -> torch.Tensor:
    B, Nq, h, L, P = attention_weights.shape
    return attention_weights.permute(0, 2, 1, 3, 4).reshape(B * h, Nq, L * P).contiguous()


def _heads_back(out: torch.Tensor, B: int, h: int, Nq: int, d: int) -> torch.Tensor:
    """``[B*h, Nq, d]`` -> ``[B, Nq, h*d]``."""
    return out.view(B, h, Nq, d).transpose(1, 2).reshape(B, Nq, h * d)


# --------------------------------------------------------------------------------------------------------- gather
def _corners(local: torch.Tensor, shift: torch.Tensor, Ha: int, Wa: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Level-local pixels ``[N, Nq, K, 2]`` + block offsets ``[K, 2]`` -> row indices ``[N, Nq, K, 4]`` into the
    flattened ``[N*Ha*Wa]`` atlas and bilinear weights ``[N, Nq, K, 4]``; corners (y0,x0), (y0,x1), (y1,x0), (y1,x1)."""
    N = local.shape[0]
    p0 = local.floor()
    fx, fy = (local - p0).unbind(-1)
    p0 = p0.long() + shift.long()
    base = p0[..., 1] * Wa + p0[..., 0] + (torch.arange(N, device=local.device) * (Ha * Wa)).view(N, 1, 1)
    idx = base.unsqueeze(-1) + torch.tensor([0, 1, Wa, Wa + 1], device=local.device)
    wx = torch.stack([1 - fx, fx], -1)
    wy = torch.stack([1 - fy, fy], -1)
    return idx, (wy.unsqueeze(-1) * wx.unsqueeze(-2)).flatten(-2)


class _GatherSample(torch.autograd.Function):
    """Forward: one ``embedding_bag`` over the 4 corners of every point, weighted by attention x bilinear weight.
    Backward: ``grid_sampler_2d_backward`` on the atlas gives the value and location gradients (its scatter-add is
    the fastest PyTorch has on CPU); the attention gradient comes from embedding_bag's per-sample-weight gradient
    (one dot product per corner, no per-point samples materialised). Corner indices and weights are recomputed in
    the backward rather than saved (they would be 12 bytes x 4 corners per point).
    """

    @staticmethod
    def forward(ctx, rows, grid, attn, local, shift, atlas_shape):  # noqa: D102 - autograd protocol
        N, Ha, Wa, d = atlas_shape
        Nq, K = attn.shape[1:]
        idx, bil = _corners(local, shift, Ha, Wa)
        ctx.save_for_backward(rows, grid, attn, local, shift)
        ctx.atlas_shape = atlas_shape
        w = (bil * attn.unsqueeze(-1)).view(N * Nq, K * 4)
        return F.embedding_bag(idx.view(N * Nq, K * 4), rows, per_sample_weights=w, mode="sum")

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        rows, grid, attn, local, shift = ctx.saved_tensors
        N, Ha, Wa, d = ctx.atlas_shape
        Nq, K = attn.shape[1:]
        grad_out = grad_out.contiguous()
        grad_rows = grad_grid = grad_attn = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            go = grad_out.view(N, Nq, d).transpose(1, 2).contiguous().unsqueeze(-1) * attn.unsqueeze(1)  # [N,d,Nq,K]
            img = rows.view(N, Ha, Wa, d).permute(0, 3, 1, 2)
            grad_img, grad_grid = torch.ops.aten.grid_sampler_2d_backward(go, img, grid, 0, 0, False, [True, True])
            del go
            grad_rows = grad_img.permute(0, 2, 3, 1).reshape(N * Ha * Wa, d)
        if ctx.needs_input_grad[2]:
            idx, bil = _corners(local, shift, Ha, Wa)
            with torch.enable_grad():
                w = (bil * attn.unsqueeze(-1)).view(N * Nq, K * 4).requires_grad_()
                out = F.embedding_bag(idx.view(N * Nq, K * 4), rows.detach(), per_sample_weights=w, mode="sum")
                (grad_w,) = torch.autograd.grad(out, w, grad_out)
            grad_attn = (grad_w.view(N, Nq, K, 4) * bil).sum(-1)
        return grad_rows, grad_grid, grad_attn, None, None, None


def _ms_deform_attn_gather(value, shapes, sampling_locations, attention_weights) -> torch.Tensor:
    B, _, h, d = value.shape
    Nq = sampling_locations.shape[1]
    atlas = _atlas(value, shapes)  # [B*h, Ha, Wa, d]
    local, shift, Ha, Wa = _atlas_pixels(sampling_locations, shapes)  # [B*h, Nq, L*P, 2], [L*P, 2]
    attn = _attn_heads_first(attention_weights)  # [B*h, Nq, L*P]
    grid = _to_grid(local, shift, Ha, Wa)
    out = _GatherSample.apply(atlas.reshape(-1, d), grid, attn, local.detach(), shift, (B * h, Ha, Wa, d))
    return _heads_back(out, B, h, Nq, d)


def ms_deform_attn(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                   sampling_locations: torch.Tensor, attention_weights: torch.Tensor, impl: Impl = "gather"
                   ) -> torch.Tensor:
    """Multi-scale deformable attention core: ``[B, S, h, d]`` values -> ``[B, Nq, h*d]`` (shapes: module doc).

    ``impl`` picks the implementation ("gather" or "reference"); both give the same result up to rounding.
    """
    if impl == "reference":
        return ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations,
                                        attention_weights)
    shapes = _check(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if value.dtype in (torch.float16, torch.bfloat16):
        # Computed in float32: bf16 is slower on CPU (benchmarks/RESULTS.md), and half-precision atlas coordinates
        # cannot address a big atlas exactly.
        out = ms_deform_attn(value.float(), spatial_shapes, level_start_index, sampling_locations.float(),
                             attention_weights.float(), impl=impl)
        return out.to(value.dtype)
    if impl == "gather":
        return _ms_deform_attn_gather(value, shapes, sampling_locations, attention_weights)
    raise ValueError(f"ms_deform_attn impl must be one of {IMPLEMENTATIONS}, got {impl!r}")


# --------------------------------------------------------------------------------------------------------- module
class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention block (Deformable DETR Eq. 2; mmcv's ``MultiScaleDeformableAttention``).

    Projections (exactly the standard ones, so parameter counts match the papers): ``sampling_offsets``
    Linear(C, h*L*P*2), ``attention_weights`` Linear(C, h*L*P), ``value_proj`` Linear(C, C), ``output_proj``
    Linear(C, C). With C=128, h=8, L=1, P=4 (CTAB) that is 45,408 parameters per block.

    Initialisation (mmcv): offsets weight 0 and bias = each head's direction (cos, sin)(2*pi*i/h) scaled so its
    larger component is 1, times (point index + 1); attention weights 0 (uniform softmax); value/output Xavier
    uniform with zero bias.

    ``forward(query [B, Nq, C], reference_points [B, Nq, L, 2] (normalised (x, y) in [0, 1]), value [B, S, C]
    (default: query), spatial_shapes [L, 2], level_start_index [L], key_padding_mask [B, S] (True = ignore),
    query_pos [B, Nq, C], identity [B, Nq, C])`` -> ``[B, Nq, C]`` = dropout(output_proj(attention)) + identity.
    ``identity`` defaults to the query (before ``query_pos`` is added) when ``residual=True``, and to nothing when
    ``residual=False``: CTAB (Eqs. 4-5, Sec. III-D) passes a zero identity so only the attended signal is output.
    Only ``batch_first`` layouts are supported (every caller here is batch-first). ``impl`` picks the core
    (``ms_deform_attn``): "gather" is faster at every measured shape for inference and for training at CTAB's shape;
    for CPU training at BEVFormer's 4-level spatial cross-attention "reference" is faster (benchmarks/RESULTS.md).
    """

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int = 4,
                 dropout: float = 0.1, residual: bool = True, impl: Impl = "gather"):
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f"embed_dims ({embed_dims}) must be divisible by num_heads ({num_heads})")
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
        self.embed_dims, self.num_heads, self.num_levels, self.num_points = embed_dims, num_heads, num_levels, num_points
        self.residual, self.impl = residual, impl
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.dropout = nn.Dropout(dropout)
        self.init_weights()

    def init_weights(self) -> None:
        h, L, P = self.num_heads, self.num_levels, self.num_points
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(h, dtype=torch.float64) * (2.0 * math.pi / h)
        dirs = torch.stack([theta.cos(), theta.sin()], -1)
        dirs = dirs / dirs.abs().max(-1, keepdim=True).values
        bias = dirs.view(h, 1, 1, 2).repeat(1, L, P, 1) * torch.arange(1, P + 1, dtype=torch.float64).view(1, 1, P, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, spatial_shapes: torch.Tensor,
                level_start_index: torch.Tensor, value: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None, query_pos: torch.Tensor | None = None,
                identity: torch.Tensor | None = None) -> torch.Tensor:
        B, Nq, C = query.shape
        h, L, P = self.num_heads, self.num_levels, self.num_points
        if C != self.embed_dims:
            raise ValueError(f"query has {C} channels, MSDeformAttn was built for {self.embed_dims}")
        if tuple(reference_points.shape) != (B, Nq, L, 2):
            raise ValueError(f"reference_points must be [B={B}, Nq={Nq}, L={L}, 2], got {tuple(reference_points.shape)}")
        if spatial_shapes.shape != (L, 2):
            raise ValueError(f"spatial_shapes must be [L={L}, 2], got {tuple(spatial_shapes.shape)}")
        if identity is None and self.residual:
            identity = query
        if value is None:
            value = query
        if query_pos is not None:
            query = query + query_pos
        value = self.value_proj(value)
        if key_padding_mask is not None:
            value = value.masked_fill(key_padding_mask[..., None], 0.0)
        value = value.view(B, value.shape[1], h, C // h)
        offsets = self.sampling_offsets(query).view(B, Nq, h, L, P, 2)
        weights = self.attention_weights(query).view(B, Nq, h, L * P).softmax(-1).view(B, Nq, h, L, P)
        normalizer = spatial_shapes.flip(-1).to(offsets.dtype)  # (W, H) per level
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        out = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights, impl=self.impl)
        out = self.dropout(self.output_proj(out))
        return out if identity is None else out + identity
