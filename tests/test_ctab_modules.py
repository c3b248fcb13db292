"""CTAB bridge, CAMF fusion and the LSS view transform: published counts, shapes, init, geometry."""

from __future__ import annotations

import math

import numpy as np
import torch

from bevbridge.geometry import BEVGrid, make_transform
from bevbridge.models.ctab.bridge import CrossTaskAttentionBridge
from bevbridge.models.fusion.camf import CAMF
from bevbridge.models.lift.lss import LSSViewTransform


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_ctab_published_parameter_count_and_scalar_gates():
    ctab = CrossTaskAttentionBridge()
    assert round(n_params(ctab) / 1e6, 2) == 0.58  # Sec. IV-B: "The CTAB module (d = 128, h = 8, K = 4) adds 0.58M"
    scalars = [name for name, p in ctab.named_parameters() if p.numel() == 1]
    assert sorted(scalars) == ["gate_det", "gate_seg"]
    gates = ctab.gates()
    assert math.isclose(gates["ctab/gate_det"], 1 / (1 + math.exp(2.0)), rel_tol=1e-6)  # sigma(-2) ~ 0.12


def test_ctab_shapes_and_gated_residual():
    torch.manual_seed(0)
    ctab = CrossTaskAttentionBridge(dim=32, heads=4, gn_groups=8).eval()
    det, seg = torch.randn(2, 256, 16, 16), torch.randn(2, 128, 16, 16)
    d2, s2 = ctab(det, seg)
    assert d2.shape == det.shape and s2.shape == seg.shape
    assert not torch.allclose(d2, det) and not torch.allclose(s2, seg)
    with torch.no_grad():  # closed gates -> identity (sigmoid(-inf) = 0)
        ctab.gate_det.fill_(-1e4)
        ctab.gate_seg.fill_(-1e4)
    d3, s3 = ctab(det, seg)
    assert torch.allclose(d3, det) and torch.allclose(s3, seg)
    # gradients reach both gates and both attention blocks
    ctab.train()
    with torch.no_grad():
        ctab.gate_det.fill_(-2.0)
        ctab.gate_seg.fill_(-2.0)
    a, b = ctab(det, seg)
    (a.sum() + b.sum()).backward()
    assert ctab.gate_det.grad != 0 and ctab.gate_seg.grad != 0
    assert ctab.det_to_seg.sampling_offsets.weight.grad.abs().sum() > 0


def test_camf_shapes():
    camf = CAMF(256, 384, 256, 8, 8, (12, 12))
    out = camf(torch.randn(1, 256, 12, 12), torch.randn(1, 384, 12, 12))
    assert out.shape == (1, 256, 12, 12)


def test_lss_puts_a_known_depth_at_the_right_bev_cell():
    """One front camera at 1.5 m height, a depth net forced to say 10 m everywhere: context lands 11 m ahead."""
    grid = BEVGrid.square(16.0, 0.5)
    lss = LSSViewTransform(grid, (64, 96), downsample=16, in_channels=8, context_channels=4,
                           depth_range=(1.0, 20.0, 1.0), aspp_mid_channels=8)
    D = lss.num_bins

    class FixedDepth(torch.nn.Module):
        def forward(self, x, cam):
            depth = torch.full((x.shape[0], D, 4, 6), -1e4)
            depth[:, 9] = 0.0  # bin 9 = 10 m
            return torch.cat([depth, torch.ones(x.shape[0], 4, 4, 6)], 1)

    lss.depth_net = FixedDepth()
    R = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=np.float64)
    s2e = torch.tensor(make_transform(R, np.array([1.0, 0.0, 1.5])), dtype=torch.float32)[None, None]
    K = torch.tensor([[60.0, 0, 48], [0, 60.0, 32], [0, 0, 1]])[None, None]
    ida, bda = torch.eye(3)[None, None], torch.eye(4)[None]
    bev, depth = lss(torch.zeros(1, 1, 8, 4, 6), K, s2e, ida, bda)
    assert bev.shape == (1, 4, 64, 64) and depth.shape == (1, 1, D, 4, 6)
    mass = bev[0, 0]
    iy, ix = np.unravel_index(mass.argmax().item(), mass.shape)
    x, y = grid.index_to_xy(np.array(ix), np.array(iy))
    assert abs(x - 11.0) <= 0.5 and abs(y) <= 8.0
    # rows of the image at camera height 1.5 m: z in [-5, 3] keeps them all; a dropped camera contributes nothing
    bev0, _ = lss(torch.zeros(1, 1, 8, 4, 6), K, s2e, ida, bda, cam_mask=torch.zeros(1, 1, dtype=torch.bool))
    assert bev0.abs().sum() == 0
