"""Pillar voxelization and BEV scatter against a slow, obvious loop (mmcv's hard-voxelization algorithm)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bevbridge.geometry import BEVGrid
from bevbridge.ops.voxelize import scatter_to_bev, voxelize

GRID = BEVGrid(-2.0, 2.0, -1.0, 1.0, 0.5)  # 4 x 8 cells


def loop_voxelize(points, mask, grid, z_range, z_bins, max_points, max_voxels):
    """Per sample, point by point: new voxels in order of first appearance, first max_points points kept."""
    feats, nums, coors = [], [], []
    zres = (z_range[1] - z_range[0]) / z_bins
    for b in range(points.shape[0]):
        index: dict[tuple[int, int, int], int] = {}
        for m in range(points.shape[1]):
            if mask is not None and not mask[b, m]:
                continue
            x, y, z = (float(v) for v in points[b, m, :3])
            ix, iy = math.floor((x - grid.xmin) / grid.res), math.floor((y - grid.ymin) / grid.res)
            iz = math.floor((z - z_range[0]) / zres)
            if not (0 <= ix < grid.W and 0 <= iy < grid.H and 0 <= iz < z_bins):
                continue
            k = (iz, iy, ix)
            if k not in index:
                if max_voxels is not None and len(index) >= max_voxels:
                    continue
                index[k] = len(feats)
                feats.append(torch.zeros(max_points, points.shape[2], dtype=points.dtype))
                nums.append(0)
                coors.append((b, *k))
            v = index[k]
            if nums[v] < max_points:
                feats[v][nums[v]] = points[b, m]
                nums[v] += 1
    if not feats:
        return (torch.zeros(0, max_points, points.shape[2], dtype=points.dtype), torch.zeros(0, dtype=torch.long),
                torch.zeros(0, 4, dtype=torch.long))
    return torch.stack(feats), torch.tensor(nums), torch.tensor(coors)


def random_points(B=2, M=60, F=5, seed=0, dup=True):
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(B, M, F, generator=g, dtype=torch.float64)
    pts[..., 0] = pts[..., 0] * 5 - 2.5  # some outside x
    pts[..., 1] = pts[..., 1] * 2.5 - 1.25
    pts[..., 2] = pts[..., 2] * 10 - 6  # some outside [-5, 3)
    if dup:  # a crowded pillar, to exercise max_points
        pts[:, :15, :2] = torch.tensor([0.1, 0.1], dtype=torch.float64)
    mask = torch.rand(B, M, generator=g) > 0.1
    return pts, mask


@pytest.mark.parametrize("max_voxels", [None, 3])
@pytest.mark.parametrize("z_bins", [1, 2])
def test_voxelize_matches_the_loop(max_voxels, z_bins):
    pts, mask = random_points()
    vox = voxelize(pts, GRID, (-5.0, 3.0), z_bins, max_points=4, max_voxels=max_voxels, mask=mask)
    f, n, c = loop_voxelize(pts, mask, GRID, (-5.0, 3.0), z_bins, 4, max_voxels)
    assert torch.equal(vox.coors, c) and torch.equal(vox.num_points, n)
    torch.testing.assert_close(vox.features, f, rtol=0, atol=0)


def test_point_voxel_and_centres():
    pts, mask = random_points(B=1, M=20, F=3, seed=1)
    vox = voxelize(pts, GRID, max_points=100, mask=mask)
    kept = vox.point_voxel >= 0
    assert int(kept.sum()) == int(vox.num_points.sum())
    # every kept point lies in the cell of its pillar
    c = vox.centres(GRID)[vox.point_voxel[kept]]
    assert ((pts[kept][:, :2] - c).abs() <= GRID.res / 2 + 1e-9).all()


def test_rcbevdet_radar_pillars():
    grid = BEVGrid.square(51.2, 0.2)
    assert grid.shape == (512, 512)
    pts = torch.tensor([[[10.05, -3.05, 0.5, 1.0, 2.0, 3.0, 0.1]] * 12 + [[-51.3, 0.0, 0.0, 0, 0, 0, 0]]])
    vox = voxelize(pts, grid, (-5.0, 3.0), 1, max_points=10)
    assert vox.features.shape == (1, 10, 7) and vox.num_points.tolist() == [10]
    assert vox.coors.tolist() == [[0, 0, 240, 306]]  # y = -3.05 -> row 240, x = 10.05 -> column 306


@settings(max_examples=20, deadline=None)
@given(B=st.integers(1, 3), M=st.integers(0, 40), max_points=st.integers(1, 5),
       max_voxels=st.one_of(st.none(), st.integers(1, 6)), seed=st.integers(0, 10**6))
def test_property_voxelize_matches_the_loop(B, M, max_points, max_voxels, seed):
    pts, mask = random_points(B, M, 4, seed, dup=M >= 15)
    vox = voxelize(pts, GRID, max_points=max_points, max_voxels=max_voxels, mask=mask)
    f, n, c = loop_voxelize(pts, mask, GRID, (-5.0, 3.0), 1, max_points, max_voxels)
    assert torch.equal(vox.coors, c) and torch.equal(vox.num_points, n) and torch.equal(vox.features, f)


def test_scatter_to_bev_places_features_and_passes_gradients():
    pts, mask = random_points(seed=2)
    vox = voxelize(pts, GRID, max_points=3, mask=mask)
    feats = torch.randn(vox.coors.shape[0], 6, dtype=torch.float64, requires_grad=True)
    bev = scatter_to_bev(feats, vox.coors, 2, GRID)
    assert bev.shape == (2, 6, 4, 8)
    expected = torch.zeros(2, 6, 4, 8, dtype=torch.float64)
    for v, (b, _, iy, ix) in enumerate(vox.coors.tolist()):
        expected[b, :, iy, ix] = feats[v]
    torch.testing.assert_close(bev, expected)
    assert torch.autograd.gradcheck(lambda f: scatter_to_bev(f, vox.coors, 2, GRID), (feats,))


def test_bad_inputs_are_named():
    pts, mask = random_points()
    with pytest.raises(ValueError, match="points must be"):
        voxelize(pts[..., :2], GRID)
    with pytest.raises(ValueError, match="mask must be"):
        voxelize(pts, GRID, mask=mask[:, :3])
    vox = voxelize(pts, GRID, z_bins=2, mask=mask)
    with pytest.raises(ValueError, match="pillars"):
        scatter_to_bev(torch.zeros(vox.coors.shape[0], 2, dtype=torch.float64), vox.coors, 2, GRID)
