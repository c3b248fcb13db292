"""The fast implementation behind ``ms_deform_attn(impl="gather")``. Shapes and semantics: ``bevbridge/ops/msda.py``.

With ``N = B * heads`` (batch x head slices), ``K = L * P`` points per query and head, and ``d`` channels per head:

- **Forward**: the L maps of every slice are packed into one zero-bordered atlas ``[B, h, Ha, Wa, d]`` (channels
  last, so one bilinear corner is one contiguous row); the 4 corners of every point are found by index arithmetic,
  and ``F.embedding_bag`` sums ``attention x bilinear weight x row`` over the 4K corners of each query. It reads each
  corner row once and materialises no per-point samples (the grid_sample formulation writes ``[N, d, Nq, K]``).
- **Backward**: the value and location gradients come from ATen's ``grid_sampler_2d_backward`` run per level on the
  level's block of the atlas with the reference's own grid ``2 * loc - 1`` (so the location gradient at cell
  borders, map edges and outside the map is the reference's by construction), ``grad_output = grad x attention``.
  The attention gradient ``<grad, sample>`` of every point comes from a per-point ``embedding_bag`` (bags of 4
  corners) and one batched matrix-vector product.
- **Chunks**: slices are processed ``chunk_size`` at a time, so the per-point temporaries (corner indices and
  weights, ``grad x attention``, samples) are a few MB and are reused from the allocator instead of being faulted in
  as fresh pages (the old single-pass version spent more time in page faults and DRAM traffic of ``[N, Nq, K, 4]``
  temporaries, built by broadcasts over tiny inner dimensions, than in the kernels). The size is a static function
  of the shapes and the thread count; every slice is computed the same way whatever the chunking, so results do not
  depend on it.

Pixel coordinates are clamped to ``[-1, W] x [-1, H]`` (NaN -> -1): a clamped point lands on the zero border, so it
contributes exactly zero, as with ``grid_sample``'s zero padding, and no corner can leave its level's block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["gather_msda"]

# Elements of the largest per-point temporary of one chunk: forward [c, Nq, K, 4] corner indices and weights (4 + 4 MB
# at 2^20), backward [c, Nq, K, d] grad x attention and samples. The chunk-size ablation is in benchmarks/RESULTS.md.
CHUNK_ELEMENTS = 1 << 20


def atlas_layout(shapes: list[tuple[int, int]]) -> tuple[int, int, list[int]]:
    """``(Ha, Wa, row0)``: atlas size and the first (zero) row of each level's block; one zero row/column before a
    level and two after it (a corner ``x0 + 1`` of a point clamped to ``x = W`` is column ``W + 1``)."""
    row0, r = [], 0
    for H, _ in shapes:
        row0.append(r)
        r += H + 3
    return r, max(W for _, W in shapes) + 3, row0


def chunk_size(N: int, elements_per_slice: int) -> int:
    """Slices per chunk: about ``CHUNK_ELEMENTS`` temporary elements, a multiple of the thread count (ATen's
    grid-sampler kernels parallelise over slices only), at most ``N``."""
    c = max(1, min(N, CHUNK_ELEMENTS // max(elements_per_slice, 1)))
    t = max(1, torch.get_num_threads())
    return min(N, -(-c // t) * t)


def _segments(n0: int, n1: int, h: int):
    """Slices ``[n0, n1)`` (``n = b * h + m``) as runs ``(b, m0, m1, i0)`` inside one batch element."""
    n = n0
    while n < n1:
        b, m0 = divmod(n, h)
        m1 = min(h, m0 + n1 - n)
        yield b, m0, m1, n - n0
        n += m1 - m0


def _take(src: torch.Tensor, n0: int, n1: int, h: int) -> torch.Tensor:
    """``src [B, X, h, ...]`` -> slices ``[n1 - n0, X, ...]`` (contiguous)."""
    out = src.new_empty(n1 - n0, src.shape[1], *src.shape[3:])
    for b, m0, m1, i0 in _segments(n0, n1, h):
        out[i0:i0 + m1 - m0] = src[b, :, m0:m1].transpose(0, 1)
    return out


def _put(dst: torch.Tensor, src: torch.Tensor, n0: int, h: int) -> None:
    """Inverse of ``_take``: slices ``src [c, X, ...]`` -> ``dst [B, X, h, ...]`` at slices ``[n0, n0 + c)``."""
    for b, m0, m1, i0 in _segments(n0, n0 + src.shape[0], h):
        dst[b, :, m0:m1] = src[i0:i0 + m1 - m0].transpose(0, 1)


def _transpose(t: torch.Tensor) -> torch.Tensor:
    """``[c, a, b]`` -> contiguous ``[c, b, a]``; one 2-D copy per matrix takes ATen's blocked-transpose path on CPU
    (2-3x faster than a 3-D permuted copy at these sizes)."""
    if t.device.type != "cpu":
        return t.transpose(1, 2).contiguous()
    out = t.new_empty(t.shape[0], t.shape[2], t.shape[1])
    for i in range(t.shape[0]):
        out[i].copy_(t[i].t())
    return out


def _atlas(value: torch.Tensor, shapes: list[tuple[int, int]]) -> torch.Tensor:
    """``value [B, S, h, d]`` -> zero-bordered atlas ``[B, h, Ha, Wa, d]``. Only the borders are zeroed: a zero fill
    of the whole atlas would be a second full pass over it, which dominates when the maps are big and the queries
    few."""
    B, _, h, d = value.shape
    Ha, Wa, row0 = atlas_layout(shapes)
    atlas = value.new_empty(B, h, Ha, Wa, d)
    s0 = 0
    for (H, W), r in zip(shapes, row0):
        atlas[:, :, r].zero_()
        atlas[:, :, r + H + 1:r + H + 3].zero_()
        atlas[:, :, r + 1:r + 1 + H, 0].zero_()
        atlas[:, :, r + 1:r + 1 + H, W + 1:].zero_()
        atlas[:, :, r + 1:r + 1 + H, 1:1 + W] = value[:, s0:s0 + H * W].view(B, H, W, h, d).permute(0, 3, 1, 2, 4)
        s0 += H * W
    return atlas


def _pixels(loc: torch.Tensor, shapes: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``loc [B, Nq, h, L, P, 2]`` -> level-local pixel coordinates x, y ``[N, Nq, K]`` (slices first), clamped."""
    B, Nq, h, L, P, _ = loc.shape
    src = loc.permute(0, 2, 1, 3, 4, 5)  # [B, h, Nq, L, P, 2]: written slices first by the out= products
    x, y = (loc.new_empty(B, h, Nq, L, P) for _ in range(2))
    if L == 1:
        (H, W), = shapes
        torch.mul(src[..., 0], W, out=x).sub_(0.5).clamp_(-1.0, W)
        torch.mul(src[..., 1], H, out=y).sub_(0.5).clamp_(-1.0, H)
    else:
        size = torch.tensor(shapes, dtype=loc.dtype, device=loc.device)  # [L, (H, W)]
        for i, t, s in ((0, x, size[:, 1:]), (1, y, size[:, :1])):  # a per-level [L, 1] against the [L, P] points
            torch.minimum(torch.mul(src[..., i], s, out=t).sub_(0.5).clamp_(min=-1.0), s, out=t)
    return x.nan_to_num_(-1.0).view(B * h, Nq, L * P), y.nan_to_num_(-1.0).view(B * h, Nq, L * P)


def _offsets(shapes: list[tuple[int, int]], N: int, P: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """Row of pixel (0, 0) of each (slice, level) in the flattened atlas ``[N, 1, L*P]``, and the atlas width."""
    Ha, Wa, row0 = atlas_layout(shapes)
    dtype = torch.int32 if N * Ha * Wa < 2**31 else torch.int64
    level = torch.tensor([(r + 1) * Wa + 1 for r in row0], dtype=dtype, device=device).repeat_interleave(P)
    return torch.arange(N, dtype=dtype, device=device).view(N, 1, 1) * (Ha * Wa) + level, Wa


def _corners(x: torch.Tensor, y: torch.Tensor, off: torch.Tensor, Wa: int, attn: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels ``[c, Nq, K]`` -> atlas rows ``[c, Nq, K, 4]`` of the corners (y0,x0), (y0,x1), (y1,x0), (y1,x1) and
    their bilinear weights ``[c, Nq, K, 4]`` (times ``attn [c, Nq, K]`` if given). Integer index arithmetic is
    exact for any atlas size; the corner layout is last so that each write below is one long strided loop."""
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    idx = torch.empty(*x.shape, 4, dtype=off.dtype, device=x.device)
    base = y0.to(off.dtype).mul_(Wa).add_(x0.to(off.dtype))
    torch.add(base, off, out=idx[..., 0])
    for k, step in ((1, 1), (2, Wa), (3, Wa + 1)):
        torch.add(idx[..., 0], step, out=idx[..., k])
    if attn is None:
        gy = 1 - fy
    else:
        gy = attn - fy.mul_(attn)
    gx = 1 - fx
    w = torch.empty_like(idx, dtype=x.dtype)
    for k, (wy, wx) in enumerate(((gy, gx), (gy, fx), (fy, gx), (fy, fx))):
        torch.mul(wy, wx, out=w[..., k])
    return idx, w


class _GatherMSDA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value, loc, attn, shapes):  # noqa: D102 - autograd protocol
        B, _, h, d = value.shape
        _, Nq, _, L, P, _ = loc.shape
        N, K = B * h, L * P
        atlas = _atlas(value, shapes)
        rows = atlas.view(-1, d)
        x, y = _pixels(loc, shapes)
        a = attn.permute(0, 2, 1, 3, 4).reshape(N, Nq, K)
        off, Wa = _offsets(shapes, N, P, value.device)
        out = value.new_empty(B, Nq, h, d)
        c = chunk_size(N, Nq * K * 4)
        for n0 in range(0, N, c):
            n1 = min(N, n0 + c)
            idx, w = _corners(x[n0:n1], y[n0:n1], off[n0:n1], Wa, a[n0:n1])
            res = F.embedding_bag(idx.view(-1, 4 * K), rows, per_sample_weights=w.view(-1, 4 * K), mode="sum")
            _put(out, res.view(n1 - n0, Nq, d), n0, h)
        ctx.save_for_backward(atlas, loc, a, x, y, off)
        ctx.shapes = shapes
        return out.view(B, Nq, h * d)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        atlas, loc, a, x, y, off = ctx.saved_tensors
        shapes = ctx.shapes
        B, h, Ha, Wa, d = atlas.shape
        _, Nq, _, L, P, _ = loc.shape
        N, K = B * h, L * P
        need_value, need_loc, need_attn = ctx.needs_input_grad[:3]
        grad = grad.reshape(B, Nq, h, d)
        grad_value = grad_grid = grad_attn = None
        if need_value or need_loc:
            grid = loc.new_empty(B, h, K, Nq, 2)  # the reference's grid 2 * loc - 1, points before queries
            torch.mul(loc.view(B, Nq, h, K, 2).permute(0, 2, 3, 1, 4), 2, out=grid).sub_(1)
            grid = grid.view(N, L, P, Nq, 2)
            a_t = a.transpose(1, 2).contiguous().view(N, L, P, Nq)
            grad_grid = torch.empty_like(grid)
            grad_value = atlas.new_empty(B, sum(H * W for H, W in shapes), h, d) if need_value else None
        if need_attn:
            grad_attn = a.new_empty(B, Nq, h, K)
        img = atlas.view(N, Ha, Wa, d)
        _, _, row0 = atlas_layout(shapes)
        c = chunk_size(N, Nq * K * max(4, d))
        for n0 in range(0, N, c):
            n1 = min(N, n0 + c)
            g = _take(grad, n0, n1, h)  # [c, Nq, d]
            if grad_grid is not None:
                g_t = _transpose(g).unsqueeze(2)  # [c, d, 1, Nq]
                s0 = 0
                for lvl, ((H, W), r) in enumerate(zip(shapes, row0)):
                    go = g_t * a_t[n0:n1, lvl].unsqueeze(1)  # [c, d, P, Nq]
                    img_l = img[n0:n1, r + 1:r + 1 + H, 1:1 + W].permute(0, 3, 1, 2)  # [c, d, H, W], a view
                    gi, grad_grid[n0:n1, lvl] = torch.ops.aten.grid_sampler_2d_backward(
                        go, img_l, grid[n0:n1, lvl], 0, 0, False, [need_value, True])
                    if need_value:
                        _put(grad_value[:, s0:s0 + H * W], _transpose(gi.view(n1 - n0, d, H * W)), n0, h)
                    s0 += H * W
            if grad_attn is not None:
                idx, w = _corners(x[n0:n1], y[n0:n1], off[n0:n1], Wa)
                samples = F.embedding_bag(idx.view(-1, 4), atlas.view(-1, d), per_sample_weights=w.view(-1, 4),
                                          mode="sum")  # [c * Nq * K, d]
                dots = torch.bmm(samples.view(-1, K, d), g.view(-1, d, 1))
                _put(grad_attn, dots.view(n1 - n0, Nq, K), n0, h)
        grad_loc = None
        if need_loc:
            grad_loc = grad_grid.mul_(2).view(B, h, K, Nq, 2).permute(0, 3, 1, 2, 4).reshape(loc.shape)
        if grad_attn is not None:
            grad_attn = grad_attn.view(B, Nq, h, L, P)
        return grad_value, grad_loc, grad_attn, None


def gather_msda(value: torch.Tensor, shapes: list[tuple[int, int]], sampling_locations: torch.Tensor,
                attention_weights: torch.Tensor) -> torch.Tensor:
    """``value [B, S, h, d]``, ``sampling_locations [B, Nq, h, L, P, 2]``, ``attention_weights [B, Nq, h, L, P]``
    -> ``[B, Nq, h*d]`` (validated by the caller)."""
    return _GatherMSDA.apply(value, sampling_locations, attention_weights, shapes)
