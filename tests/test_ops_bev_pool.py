"""LSS frustum geometry and BEV pooling against obvious references."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bevbridge.geometry import BEVGrid, invert_transform, make_transform, rotation_z, transform_points
from bevbridge.ops.bev_pool import bev_pool, bev_pool_plan, bev_pool_reference
from bevbridge.ops.frustum import depth_bins, feature_pixels, frustum_points

# nuScenes-like front camera: optical axis (camera z) along ego +x, camera x along ego -y, camera y along ego -z.
CAM_TO_EGO_R = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]], dtype=torch.float64)


def _camera_rig(B: int, N: int, g: torch.Generator):
    K = torch.tensor([[1266.0, 0.0, 816.0], [0.0, 1266.0, 491.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    K = K.expand(B, N, 3, 3).clone()
    K[..., 0, 0] += torch.rand(B, N, generator=g, dtype=torch.float64) * 100
    yaw = torch.rand(B, N, generator=g, dtype=torch.float64) * 2 * math.pi
    R = rotation_z(yaw) @ CAM_TO_EGO_R
    t = torch.randn(B, N, 3, generator=g, dtype=torch.float64) + torch.tensor([1.0, 0.0, 1.5], dtype=torch.float64)
    s2e = make_transform(R, t)
    # ida: resize, crop (translate), rotate a little; maps original pixels to augmented pixels.
    ang = (torch.rand(B, N, generator=g, dtype=torch.float64) - 0.5) * 0.2
    scale = 0.44 + 0.1 * torch.rand(B, N, generator=g, dtype=torch.float64)
    ida = torch.zeros(B, N, 3, 3, dtype=torch.float64)
    ida[..., 0, 0], ida[..., 0, 1] = scale * ang.cos(), -scale * ang.sin()
    ida[..., 1, 0], ida[..., 1, 1] = scale * ang.sin(), scale * ang.cos()
    ida[..., 0, 2], ida[..., 1, 2], ida[..., 2, 2] = -20.0, -140.0, 1.0
    bda_yaw = torch.rand(B, generator=g, dtype=torch.float64) * 0.8 - 0.4
    bda = make_transform(rotation_z(bda_yaw) * 1.05, torch.zeros(B, 3, dtype=torch.float64))
    bda[:, 1] *= -1  # a y flip, as BEVDet's BEV augmentation does
    return K, s2e, ida, bda


def test_depth_bins_and_pixels_follow_bevdet():
    d = depth_bins(1.0, 60.0, 0.5)
    assert d.numel() == 118 and d[0] == 1.0 and d[-1] == 59.5
    px = feature_pixels((16, 44), (256, 704))
    assert px.shape == (16, 44, 2)
    assert px[0, 0].tolist() == [0.0, 0.0] and px[-1, -1].tolist() == [703.0, 255.0]
    pc = feature_pixels((16, 44), (256, 704), mode="centre")
    assert pc[0, 0].tolist() == [7.5, 7.5] and pc[-1, -1].tolist() == [695.5, 247.5]


def test_frustum_round_trip_recovers_pixels_and_depths():
    g = torch.Generator().manual_seed(0)
    K, s2e, ida, bda = _camera_rig(2, 3, g)
    depths = depth_bins(1.0, 5.0, 1.0, dtype=torch.float64)
    pixels = feature_pixels((4, 5), (256, 704), dtype=torch.float64)
    pts = frustum_points(K, s2e, ida, depths, pixels, bda)  # [B, N, D, fH, fW, 3]
    assert pts.shape == (2, 3, 4, 4, 5, 3)
    for b in range(2):
        for n in range(3):
            ego = transform_points(invert_transform(bda[b]), pts[b, n].reshape(-1, 3))
            cam = transform_points(invert_transform(s2e[b, n]), ego)
            torch.testing.assert_close(cam[:, 2], depths.view(-1, 1).expand(4, 20).reshape(-1))
            uv = (K[b, n] @ (cam / cam[:, 2:3]).T).T  # original pixels, homogeneous
            aug = (ida[b, n] @ uv.T).T[:, :2]
            torch.testing.assert_close(aug, pixels.reshape(1, -1, 2).expand(4, -1, -1).reshape(-1, 2))


def test_frustum_principal_ray_points_forward():
    K = torch.tensor([[1000.0, 0, 400], [0, 1000.0, 300], [0, 0, 1]], dtype=torch.float64).view(1, 1, 3, 3)
    s2e = make_transform(CAM_TO_EGO_R, torch.tensor([1.5, 0.0, 1.6], dtype=torch.float64)).view(1, 1, 4, 4)
    ida = torch.eye(3, dtype=torch.float64).view(1, 1, 3, 3)
    pts = frustum_points(K, s2e, ida, torch.tensor([10.0]), torch.tensor([[[400.0, 300.0]]], dtype=torch.float64))
    torch.testing.assert_close(pts.view(3), torch.tensor([11.5, 0.0, 1.6], dtype=torch.float64))


def _pool_inputs(B=2, N=2, D=5, fH=3, fW=4, C=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(B, N, D, fH, fW, 3, generator=g, dtype=dtype) * torch.tensor([12.0, 12.0, 10.0], dtype=dtype)
    pts = pts - torch.tensor([6.0, 6.0, 6.0], dtype=dtype)  # some outside the 10 x 10 m grid and the z range
    depth = torch.rand(B, N, D, fH, fW, generator=g, dtype=dtype).softmax(2)
    feat = torch.randn(B, N, fH, fW, C, generator=g, dtype=dtype)
    return depth, feat, pts


GRID = BEVGrid(-5.0, 5.0, -5.0, 5.0, 2.0)


@pytest.mark.parametrize("z_bins", [1, 3])
def test_bev_pool_matches_dense_reference_and_its_gradients(z_bins):
    depth, feat, pts = _pool_inputs()
    plan = bev_pool_plan(pts, GRID, z_range=(-5.0, 3.0), z_bins=z_bins)
    assert 0 < plan.num_points < pts[..., 0].numel()  # some points are dropped, some kept
    depth.requires_grad_(), feat.requires_grad_()
    out = bev_pool(depth, feat, plan)
    ref = bev_pool_reference(depth, feat, pts, GRID, (-5.0, 3.0), z_bins)
    assert out.shape == (2, 3 * z_bins, 5, 5)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    cot = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (depth, feat), cot), torch.autograd.grad(ref, (depth, feat), cot)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_bev_pool_gradcheck():
    depth, feat, pts = _pool_inputs(B=1, N=2, D=3, fH=2, fW=3, C=2, seed=1)
    plan = bev_pool_plan(pts, GRID)
    assert torch.autograd.gradcheck(lambda d, f: bev_pool(d, f, plan), (depth.requires_grad_(), feat.requires_grad_()))


def test_reference_puts_a_single_point_in_the_right_cell():
    pts = torch.zeros(1, 1, 1, 1, 1, 3, dtype=torch.float64)
    pts[..., 0], pts[..., 1] = 3.1, -4.9  # x -> column 4, y -> row 0 of the 2 m grid starting at -5
    depth = torch.full((1, 1, 1, 1, 1), 0.5, dtype=torch.float64)
    feat = torch.tensor([2.0, -4.0], dtype=torch.float64).view(1, 1, 1, 1, 2)
    for out in (bev_pool(depth, feat, bev_pool_plan(pts, GRID)), bev_pool_reference(depth, feat, pts, GRID)):
        expected = torch.zeros(1, 2, 5, 5, dtype=torch.float64)
        expected[0, :, 0, 4] = torch.tensor([1.0, -2.0])
        torch.testing.assert_close(out, expected)


@settings(max_examples=15, deadline=None)
@given(B=st.integers(1, 2), N=st.integers(1, 3), D=st.integers(1, 4), fH=st.integers(1, 3), fW=st.integers(1, 3),
       z_bins=st.integers(1, 2), seed=st.integers(0, 10**6))
def test_property_bev_pool_equals_reference(B, N, D, fH, fW, z_bins, seed):
    depth, feat, pts = _pool_inputs(B, N, D, fH, fW, 2, seed)
    out = bev_pool(depth, feat, bev_pool_plan(pts, GRID, z_bins=z_bins))
    torch.testing.assert_close(out, bev_pool_reference(depth, feat, pts, GRID, z_bins=z_bins), rtol=0, atol=1e-12)


def test_bev_pool_rejects_mismatched_inputs():
    depth, feat, pts = _pool_inputs()
    plan = bev_pool_plan(pts, GRID)
    with pytest.raises(ValueError, match="depth must be"):
        bev_pool(depth[:, :1], feat, plan)
    with pytest.raises(ValueError, match="feat must be"):
        bev_pool(depth, feat.transpose(2, 3), plan)
    with pytest.raises(ValueError, match="frustum points"):
        bev_pool_plan(pts[..., :2], GRID)
