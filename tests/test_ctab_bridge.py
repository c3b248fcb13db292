"""The Cross-Task Attention Bridge against an independent float64 computation of Eqs. 2-7 (papers/ctab.txt Sec. III-D),
and spatial-alignment probes through the bridge and through BEV upsampling onto the ground-truth raster's grid.

Every test names the plausible bug it catches; the variants (gates swapped, query and value swapped in Eqs. 4-5,
MSDA's residual left on) are computed by the same reference and shown to differ from the module's output, so the
comparison has the power to reject them.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bevbridge.geometry import BEVGrid
from bevbridge.models.ctab.bridge import CrossTaskAttentionBridge
from bevbridge.models.heads.seg_decoder import BEVUpsample

H, W = 6, 9  # not square: a transposed grid or swapped (x, y) cannot pass


def _msda_reference(m, query: torch.Tensor, value: torch.Tensor, residual: bool = False) -> torch.Tensor:
    """Deformable DETR Eq. 2 with one level, written out: value projection, per-query offsets and softmax weights,
    bilinear sampling (grid_sample, zeros padding, align_corners=False) around the cell-centre reference points,
    weighted sum, output projection. ``query``/``value`` ``[B, H*W, C]``, row-major cells (iy outer)."""
    B, N, C = query.shape
    h, P = m.num_heads, m.num_points
    d = C // h
    lin = lambda x, layer: x @ layer.weight.double().T + layer.bias.double()  # noqa: E731
    v = lin(value, m.value_proj).view(B, H, W, h, d).permute(0, 3, 4, 1, 2).reshape(B * h, d, H, W)
    off = lin(query, m.sampling_offsets).view(B, N, h, P, 2)
    w = lin(query, m.attention_weights).view(B, N, h, P).softmax(-1)
    iy, ix = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    ref = torch.stack([(ix.flatten() + 0.5) / W, (iy.flatten() + 0.5) / H], -1)  # [N, 2] as (x, y) in [0, 1]
    loc = ref[None, :, None, None, :] + off / torch.tensor([W, H], dtype=torch.float64)
    grid = (2 * loc - 1).permute(0, 2, 1, 3, 4).reshape(B * h, N, P, 2)
    sampled = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # [B*h, d, N, P]
    out = (sampled * w.permute(0, 2, 1, 3).reshape(B * h, 1, N, P)).sum(-1)  # [B*h, d, N]
    out = lin(out.view(B, h * d, N).transpose(1, 2), m.output_proj)
    return out + query if residual else out


def _conv_gn(seq: nn.Sequential, x: torch.Tensor, relu: bool) -> torch.Tensor:
    conv, gn = seq[0], seq[1]
    y = F.conv2d(x, conv.weight.double(), conv.bias.double(), padding=conv.padding)
    y = F.group_norm(y, gn.num_groups, gn.weight.double(), gn.bias.double(), gn.eps)
    return y.relu() if relu else y


def bridge_reference(b: CrossTaskAttentionBridge, det: torch.Tensor, seg: torch.Tensor, *, swap_gates=False,
                     swap_query_value=False, residual=False) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. 2-7 in float64 from the module's weights (or one of the wrong variants)."""
    B = det.shape[0]
    seq = lambda x: x.flatten(2).transpose(1, 2)  # noqa: E731  [B, C, H, W] -> [B, N, C]
    fd = seq(_conv_gn(b.det_proj, det, relu=True))  # Eq. 2
    fs = seq(_conv_gn(b.seg_proj, seg, relu=True))  # Eq. 3
    if swap_query_value:
        a_d2s = _msda_reference(b.det_to_seg, fd, fs, residual)
        a_s2d = _msda_reference(b.seg_to_det, fs, fd, residual)
    else:
        a_d2s = _msda_reference(b.det_to_seg, fs, fd, residual)  # Eq. 4: Q = F_seg, V = F_det
        a_s2d = _msda_reference(b.seg_to_det, fd, fs, residual)  # Eq. 5: Q = F_det, V = F_seg
    to_map = lambda a: a.transpose(1, 2).reshape(B, -1, H, W)  # noqa: E731
    g_det, g_seg = b.gate_det.double().sigmoid(), b.gate_seg.double().sigmoid()
    if swap_gates:
        g_det, g_seg = g_seg, g_det
    det_out = g_det * _conv_gn(b.det_out, to_map(a_s2d), relu=False) + det  # Eq. 6
    seg_out = g_seg * _conv_gn(b.seg_out, to_map(a_d2s), relu=False) + seg  # Eq. 7
    return det_out, seg_out


@pytest.fixture
def bridge() -> CrossTaskAttentionBridge:
    """A small bridge in float64 with every weight random (offsets and attention weights depend on the query, the
    GN affines are not 1/0) and distinct gates, in eval mode (MSDA dropout off)."""
    torch.manual_seed(0)
    b = CrossTaskAttentionBridge(det_channels=24, seg_channels=16, dim=16, heads=4, points=3, gn_groups=4).double()
    with torch.no_grad():
        for p in b.parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() > 1 else 0.5))
        b.gate_det.fill_(-1.0)
        b.gate_seg.fill_(0.7)
    return b.eval()


def _inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 24, H, W, generator=g, dtype=torch.float64),
            torch.randn(2, 16, H, W, generator=g, dtype=torch.float64))


def test_bridge_matches_eqs_2_to_7_and_rejects_the_wrong_variants(bridge):
    """Eqs. 2-7 exactly, against float64 from first principles. Catches: g_det and g_seg swapped; query and value
    swapped in Eqs. 4-5 (segmentation reading its own features); MSDA's internal residual left on (the paper passes a
    zero identity); a wrong reference-point grid or flatten order (the grid is 6 x 9)."""
    det, seg = _inputs()
    with torch.no_grad():
        got = bridge(det, seg)
        want = bridge_reference(bridge, det, seg)
        for out, ref in zip(got, want):
            assert torch.allclose(out, ref, atol=1e-10, rtol=0), (out - ref).abs().max()
        for variant in ({"swap_gates": True}, {"swap_query_value": True}, {"residual": True}):
            wrong = bridge_reference(bridge, det, seg, **variant)
            gap = max((a - b).abs().max().item() for a, b in zip(got, wrong))
            assert gap > 1e-2, (variant, gap)  # the comparison above would reject this variant


def test_each_gate_scales_only_its_own_branch(bridge):
    """Eq. 6-7: F' - F is sigma(g) times the branch's correction, so changing one gate rescales exactly one output's
    update by the ratio of the sigmoids and leaves the other output bit-identical. Catches swapped gates, a shared
    gate, a gate applied after the residual (which would scale F too) or an activation before the gated sum."""
    det, seg = _inputs(2)
    with torch.no_grad():
        d0, s0 = bridge(det, seg)
        g0 = bridge.gate_seg.sigmoid().item()
        bridge.gate_seg.fill_(-3.0)
        d1, s1 = bridge(det, seg)
        ratio = bridge.gate_seg.sigmoid().item() / g0
    assert torch.equal(d1, d0)
    assert torch.allclose(s1 - seg, ratio * (s0 - seg), atol=1e-12)
    with torch.no_grad():
        bridge.gate_det.fill_(-1e4)  # a closed gate: the output is its input, exactly
        bridge.gate_seg.fill_(-1e4)
        d2, s2 = bridge(det, seg)
    assert torch.equal(d2, det) and torch.equal(s2, seg)


def test_perturbing_detection_features_moves_segmentation_through_the_values(bridge):
    """Perturb F_det only. Eq. 7's update moves through Eq. 4's VALUES: with the query fixed, MSDA is linear in the
    value, so the segmentation update's pre-norm attention output responds linearly to the value change. We check
    the size of the response against the reference for two perturbation sizes. Catches query and value swapped (then
    F_det would steer the sampling of the segmentation's own features instead) and a bridge that ignores F_det."""
    det, seg = _inputs(3)
    delta = torch.zeros_like(det)
    delta[:, :, 2, 5] = 3.0  # one cell of the detection map
    with torch.no_grad():
        base = bridge(det, seg)
        moved = bridge(det + delta, seg)
        ref = bridge_reference(bridge, det + delta, seg)
    assert torch.allclose(moved[1], ref[1], atol=1e-10)
    assert (moved[1] - base[1]).abs().max() > 1e-3  # segmentation output moved
    # Eq. 4's attention output (before Eq. 7's conv + GN) is exactly linear in F_det's projection for a fixed query
    seq = lambda x: x.flatten(2).transpose(1, 2)  # noqa: E731
    with torch.no_grad():
        fs = seq(_conv_gn(bridge.seg_proj, seg, relu=True))
        fd0 = seq(_conv_gn(bridge.det_proj, det, relu=True))
        fd1 = seq(_conv_gn(bridge.det_proj, det + delta, relu=True))
        a = [_msda_reference(bridge.det_to_seg, fs, v) for v in (fd0, fd1, (fd0 + fd1) / 2)]
    assert torch.allclose(a[2], (a[0] + a[1]) / 2, atol=1e-12)


def test_bridge_is_spatially_aligned_cell_by_cell():
    """With the projections and output convolutions replaced by identities, value/output projections set to the
    identity and the sampling offsets zeroed, each query samples exactly its own cell: then F'_seg = F_seg +
    sigma(g_seg) F_det and F'_det = F_det + sigma(g_det) F_seg, cell by cell, on a 6 x 9 map. Catches reference points
    transposed to (y, x), off by half a cell (align_corners), or a flatten/unflatten that scrambles cells."""
    torch.manual_seed(0)
    b = CrossTaskAttentionBridge(det_channels=8, seg_channels=8, dim=8, heads=2, points=2, gn_groups=2).eval()
    b.det_proj = b.seg_proj = b.det_out = b.seg_out = nn.Identity()
    with torch.no_grad():
        for m in (b.det_to_seg, b.seg_to_det):
            m.sampling_offsets.weight.zero_()
            m.sampling_offsets.bias.zero_()
            for lin in (m.value_proj, m.output_proj):
                lin.weight.copy_(torch.eye(8))
                lin.bias.zero_()
        b.gate_det.fill_(0.3)
        b.gate_seg.fill_(-0.4)
    det, seg = torch.randn(2, 8, H, W), torch.randn(2, 8, H, W)
    with torch.no_grad():
        d2, s2 = b(det, seg)
    assert torch.allclose(s2, seg + torch.sigmoid(torch.tensor(-0.4)) * det, atol=1e-5)
    assert torch.allclose(d2, det + torch.sigmoid(torch.tensor(0.3)) * seg, atol=1e-5)


@pytest.mark.parametrize("name", ["mtl_ctab_synth", "mtl_ctab"])
def test_bev_upsampling_lands_on_the_ground_truth_raster_grid(name):
    """A feature equal to each BEV cell's metric x (or y) coordinate, bilinearly upsampled by BEVUpsample (residual
    branch off), equals the x (y) of the cell centres of the grid the map targets are rasterised on
    (``data_needs().map_grid``), away from the border. Catches align_corners=True (a shift growing to half a cell at
    the edges), an axis flipped or transposed between the 128- and 200-cell grids, and a target grid whose extent
    differs from the features' (DESIGN.md: targets cover exactly the prediction's extent)."""
    from bevbridge.config import load_config

    cfg = load_config(f"configs/ctab/{name}.yaml").model
    feat_grid, map_grid = cfg.grid.to_grid(), cfg.data_needs().map_grid
    assert (map_grid.xmin, map_grid.xmax, map_grid.ymin, map_grid.ymax) == (
        feat_grid.xmin, feat_grid.xmax, feat_grid.ymin, feat_grid.ymax)
    up = BEVUpsample(channels=2, out_size=map_grid.shape).double()
    with torch.no_grad():
        up.norm2.weight.zero_()
        up.norm2.bias.zero_()

    def coords(grid: BEVGrid) -> torch.Tensor:
        iy, ix = torch.meshgrid(torch.arange(grid.H, dtype=torch.float64), torch.arange(grid.W, dtype=torch.float64),
                                indexing="ij")
        return grid.index_to_xy(ix, iy).permute(2, 0, 1)[None]  # [1, 2, H, W]: (x, y) in metres

    with torch.no_grad():
        got = up(coords(feat_grid))[0]
    want = coords(map_grid)[0]
    inner = (slice(None), slice(2, -2), slice(2, -2))  # bilinear is exact for a ramp away from the zero-padded edge
    assert torch.allclose(got[inner], want[inner], atol=1e-9), (got[inner] - want[inner]).abs().max()
    # x grows along W (the last axis), y along H
    assert (want[0, :, 1:] > want[0, :, :-1]).all() and (want[1, 1:] > want[1, :-1]).all()
