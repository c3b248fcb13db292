"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021, Eq. 2) in pure PyTorch.

``ms_deform_attn`` is the core op with mmcv's tensor layouts and semantics:

- ``value [B, S, heads, dim]`` with ``S = sum(H_l * W_l)``: the L feature maps flattened row-major (y, then x) and
  concatenated; ``spatial_shapes [L, 2] = (H_l, W_l)``; ``level_start_index [L]`` where each level starts in S.
- ``sampling_locations [B, Nq, heads, L, P, 2]``: normalised (x, y) in [0, 1] per level; pixel (i, j) of a level has
  its centre at ((j + 0.5) / W, (i + 0.5) / H) (``grid_sample`` with ``align_corners=False``).
- ``attention_weights [B, Nq, heads, L, P]`` (softmax over L*P is the caller's job).
- returns ``[B, Nq, heads * dim]``: bilinear samples (zeros outside each map) weighted by the attention weights.

Two implementations give the same result (tests compare them in float64; the benchmark in float32), and
``impl="auto"`` (the default) picks the faster one per shape by a static rule on the shapes (``choose_impl``):

- ``"reference"``: the straightforward one (mmcv's ``multi_scale_deformable_attn_pytorch``): one ``grid_sample`` per
  level on ``[B*heads, dim, H, W]`` maps, then a weighted sum. It materialises ``[B*heads, dim, Nq, L*P]`` samples.
  "auto" uses it when the maps are large for the number of points (fewer than one point per two value positions):
  there its reading the value in place beats the gather's atlas copy.
- ``"gather"`` (``bevbridge/ops/msda_gather.py``): heads folded into the batch, all levels packed into one
  zero-bordered atlas, the four bilinear corners of every point found by index arithmetic and the whole weighted
  sum done by one ``F.embedding_bag`` (per-sample weights = attention x bilinear weight), which reads each corner row
  once and materialises no per-point samples. Its backward runs ``grid_sample``'s own backward kernel per level
  (the fastest scatter-add PyTorch has on CPU; it also gives the location gradient, with the reference's grid, so
  it is the reference's at cell borders too) and gets the attention gradient from per-point samples and one batched
  matrix-vector product; all per-point temporaries are made and consumed in chunks of (batch x head) slices.
  "auto" uses it everywhere else: every CTAB and BEVFormer shape but BEVFormer's decoder on the 200x200 BEV, where
  it is 2.5-11x faster forward and 1.2-2.7x forward+backward (``benchmarks/RESULTS.md``, "after the rewrite").

Measured and dropped (``benchmarks/RESULTS.md``): a single ``grid_sample`` over the atlas with autograd ("fused
levels"), bf16 (slower on CPU; half-precision inputs are computed in float32 here), ``torch.compile`` of the
reference, index_put_/index_add_/scatter_add_/sorted embedding_bag as the backward scatter, embedding_bag's
per-sample-weight gradient for the attention gradient (one BLAS dot call per corner).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bevbridge.ops.msda_gather import gather_msda

__all__ = ["ms_deform_attn", "ms_deform_attn_reference", "choose_impl", "MSDeformAttn", "IMPLEMENTATIONS"]

Impl = Literal["auto", "gather", "reference"]
IMPLEMENTATIONS: tuple[str, ...] = ("auto", "gather", "reference")


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
    return _reference(value, shapes, sampling_locations, attention_weights)


def _reference(value, shapes, sampling_locations, attention_weights) -> torch.Tensor:
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


def choose_impl(shapes: list[tuple[int, int]], num_queries: int, points_per_query: int) -> str:
    """The static rule behind ``impl="auto"``: ``"reference"`` (one ``grid_sample`` per level) when a (batch, head)
    slice has fewer than one sampling point per two value positions, ``Nq * L * P < S / 2``, else ``"gather"``.

    Below that ratio the work is in passes over the value (the gather's atlas copy and its gradient) rather than
    over the points, and grid_sample's kernels, which read the value in place, win. Measured on 50x50 to 200x200
    maps (``bench_ops.py --msda-sweep``): forward+backward breaks even between 0.2 and 0.4 points per position, the
    forward alone lower, so the threshold errs on grid_sample's side. BEVFormer's decoder on the 200x200 BEV (900
    queries x 4 points, ratio 0.09) is the one config shape below it (benchmarks/RESULTS.md). A rule on shapes, not
    a timing, so results do not depend on the machine.
    """
    return "reference" if 2 * num_queries * points_per_query < sum(H * W for H, W in shapes) else "gather"


def ms_deform_attn(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                   sampling_locations: torch.Tensor, attention_weights: torch.Tensor, impl: Impl = "auto"
                   ) -> torch.Tensor:
    """Multi-scale deformable attention core: ``[B, S, h, d]`` values -> ``[B, Nq, h*d]`` (shapes: module doc).

    ``impl`` picks the implementation: "gather" or "reference" (same result up to rounding), or "auto" (the default)
    for the faster one at these shapes (``choose_impl``).
    """
    shapes = _check(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if impl == "auto":
        _, Nq, _, L, P, _ = sampling_locations.shape
        impl = choose_impl(shapes, Nq, L * P)
    if impl == "reference":
        return _reference(value, shapes, sampling_locations, attention_weights)
    if value.dtype in (torch.float16, torch.bfloat16):
        # Computed in float32: bf16 is slower on CPU (benchmarks/RESULTS.md), and half-precision atlas coordinates
        # cannot address a big atlas exactly.
        out = ms_deform_attn(value.float(), spatial_shapes, level_start_index, sampling_locations.float(),
                             attention_weights.float(), impl=impl)
        return out.to(value.dtype)
    if impl == "gather":
        return gather_msda(value, shapes, sampling_locations, attention_weights)
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
    (``ms_deform_attn``); the default "auto" picks the faster formulation per shape by a static rule
    (``choose_impl``; benchmarks/RESULTS.md).
    """

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int = 4,
                 dropout: float = 0.1, residual: bool = True, impl: Impl = "auto"):
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
