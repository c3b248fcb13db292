"""Rotated BEV IoU and 3D IoU against shapely polygons."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Polygon

from bevbridge.geometry import box_bev_corners
from bevbridge.ops.iou3d import box_iou_3d, box_iou_bev


def shapely_iou(b1: np.ndarray, b2: np.ndarray, three_d: bool = False) -> float:
    p1, p2 = (Polygon(box_bev_corners(b[None])[0]) for b in (b1, b2))
    inter = p1.intersection(p2).area
    if not three_d:
        return inter / (p1.area + p2.area - inter)
    dz = max(0.0, min(b1[2] + b1[5] / 2, b2[2] + b2[5] / 2) - max(b1[2] - b1[5] / 2, b2[2] - b2[5] / 2))
    vi = inter * dz
    return vi / (np.prod(b1[3:6]) + np.prod(b2[3:6]) - vi)


def random_boxes(n: int, seed: int, spread: float = 4.0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    b = torch.zeros(n, 9, dtype=dtype)
    b[:, :2] = torch.rand(n, 2, generator=g, dtype=dtype) * spread
    b[:, 2] = torch.rand(n, generator=g, dtype=dtype) * 2
    b[:, 3:6] = 0.3 + torch.rand(n, 3, generator=g, dtype=dtype) * 4
    b[:, 6] = (torch.rand(n, generator=g, dtype=dtype) * 2 - 1) * math.pi
    return b


@pytest.mark.parametrize("three_d", [False, True])
def test_matches_shapely_on_random_boxes(three_d):
    b1, b2 = random_boxes(40, 0), random_boxes(30, 1)
    ours = (box_iou_3d if three_d else box_iou_bev)(b1, b2)
    ref = torch.tensor([[shapely_iou(x, y, three_d) for y in b2.numpy()] for x in b1.numpy()], dtype=torch.float64)
    assert (ref > 0).float().mean() > 0.2 and (ref == 0).any()  # the set has overlapping and separate pairs
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-9)


def test_float32_far_from_origin_matches_shapely():
    b1, b2 = random_boxes(20, 2), random_boxes(20, 3)
    b1[:, :2] += 45.0
    b2[:, :2] += 45.0
    ours = box_iou_bev(b1.float(), b2.float()).double()
    ref = torch.tensor([[shapely_iou(x, y) for y in b2.numpy()] for x in b1.numpy()], dtype=torch.float64)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_degenerate_configurations():
    box = torch.tensor([[1.0, 2.0, 0.0, 4.0, 2.0, 1.5, 0.3, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(box_iou_bev(box, box), torch.ones(1, 1, dtype=torch.float64))
    torch.testing.assert_close(box_iou_3d(box, box), torch.ones(1, 1, dtype=torch.float64))
    inner = box.clone()
    inner[0, 3:5] = torch.tensor([2.0, 1.0])
    torch.testing.assert_close(box_iou_bev(box, inner), torch.full((1, 1), 0.25, dtype=torch.float64))
    # same footprint rotated by 180 degrees, or l and w swapped with a 90 degree turn: identical
    flipped = box.clone()
    flipped[0, 6] += math.pi
    turned = box.clone()
    turned[0, 3:5] = box[0, [4, 3]]
    turned[0, 6] += math.pi / 2
    for other in (flipped, turned):
        torch.testing.assert_close(box_iou_bev(box, other), torch.ones(1, 1, dtype=torch.float64))
    # sharing exactly one edge: IoU 0; lifted above the other: 3D IoU 0
    beside = torch.tensor([[0.0, 0.0, 0, 2, 2, 1, 0, 0, 0], [2.0, 0.0, 0, 2, 2, 1, 0, 0, 0]], dtype=torch.float64)
    assert box_iou_bev(beside[:1], beside[1:]).item() == pytest.approx(0.0, abs=1e-12)
    above = beside[:1].clone()
    above[0, 2] = 5.0
    assert box_iou_3d(beside[:1], above).item() == 0.0 and box_iou_bev(beside[:1], above).item() == 1.0


def test_aligned_and_empty():
    b1, b2 = random_boxes(10, 4), random_boxes(10, 5)
    torch.testing.assert_close(box_iou_bev(b1, b2, aligned=True), box_iou_bev(b1, b2).diagonal())
    torch.testing.assert_close(box_iou_3d(b1, b2, aligned=True), box_iou_3d(b1, b2).diagonal())
    assert box_iou_bev(b1[:0], b2).shape == (0, 10)
    with pytest.raises(ValueError, match="boxes2"):
        box_iou_bev(b1, b2[:, :5])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-3, 3), min_size=14, max_size=14))
def test_property_symmetric_and_matches_shapely(v):
    b = torch.tensor([[v[0], v[1], v[2], 0.2 + abs(v[3]), 0.2 + abs(v[4]), 0.2 + abs(v[5]), v[6]],
                      [v[7], v[8], v[9], 0.2 + abs(v[10]), 0.2 + abs(v[11]), 0.2 + abs(v[12]), v[13]]],
                     dtype=torch.float64)
    iou = box_iou_bev(b[:1], b[1:]).item()
    assert iou == pytest.approx(box_iou_bev(b[1:], b[:1]).item(), abs=1e-9)
    assert iou == pytest.approx(shapely_iou(b[0].numpy(), b[1].numpy()), abs=1e-6)
    assert 0.0 <= iou <= 1.0


def test_gradcheck_on_overlapping_pairs():
    b1, b2 = random_boxes(6, 6, spread=1.0)[:, :7], random_boxes(6, 7, spread=1.0)[:, :7]
    assert (box_iou_bev(b1, b2, aligned=True) > 0).all()
    for fn in (box_iou_bev, box_iou_3d):
        assert torch.autograd.gradcheck(lambda x, y: fn(x, y, aligned=True), (b1.requires_grad_(), b2.requires_grad_()))
