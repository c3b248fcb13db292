"""NMS variants against the textbook greedy loop (and torchvision for axis-aligned boxes)."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from bevbridge.ops.iou3d import box_iou_bev
from bevbridge.ops.nms import RCBEVDET_NMS_SCALE, circle_nms, greedy_keep, nms_rotated, scale_nms


def loop_nms(scores, suppresses):
    """Textbook greedy NMS: visit boxes by decreasing score, keep one unless a kept box suppresses it."""
    keep = []
    for i in torch.argsort(scores, descending=True, stable=True).tolist():
        if not any(suppresses(k, i) for k in keep):
            keep.append(i)
    return torch.tensor(keep, dtype=torch.long)


def random_scene(n=60, seed=0, extent=12.0, classes=3):
    g = torch.Generator().manual_seed(seed)
    b = torch.zeros(n, 9, dtype=torch.float64)
    b[:, :2] = torch.rand(n, 2, generator=g, dtype=torch.float64) * extent
    b[:, 3:6] = 0.5 + torch.rand(n, 3, generator=g, dtype=torch.float64) * 3
    b[:, 6] = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    scores = torch.rand(n, generator=g, dtype=torch.float64)
    labels = torch.randint(0, classes, (n,), generator=g)
    return b, scores, labels


@pytest.mark.parametrize("class_aware", [False, True])
def test_nms_rotated_matches_the_loop(class_aware):
    b, s, lab = random_scene()
    iou = box_iou_bev(b, b)
    same = (lab[:, None] == lab[None]) if class_aware else torch.ones_like(iou, dtype=torch.bool)
    ref = loop_nms(s, lambda k, i: bool(iou[k, i] > 0.2 and same[k, i]))
    ours = nms_rotated(b, s, 0.2, lab if class_aware else None)
    assert 5 < ref.numel() < 60 and torch.equal(ours, ref)


def test_axis_aligned_boxes_agree_with_torchvision():
    b, s, _ = random_scene(seed=1)
    b[:, 6] = 0
    xyxy = torch.cat([b[:, :2] - b[:, 3:5] / 2, b[:, :2] + b[:, 3:5] / 2], 1)
    assert torch.equal(nms_rotated(b, s, 0.3), torchvision.ops.nms(xyxy, s, 0.3))


def test_pre_and_post_max():
    b, s, _ = random_scene(seed=2)
    order = torch.argsort(s, descending=True)
    kept = nms_rotated(b, s, 0.2, pre_max=20, post_max=5)
    assert kept.numel() == 5 and set(kept.tolist()) <= set(order[:20].tolist())
    top = order[:20]
    assert torch.equal(kept, top[nms_rotated(b[top], s[top], 0.2)[:5]])


def test_circle_nms_uses_squared_distance():
    b, s, lab = random_scene(seed=3)
    d2 = torch.cdist(b[:, :2], b[:, :2]).square()
    ref = loop_nms(s, lambda k, i: bool(d2[k, i] <= 4.0))
    assert torch.equal(circle_nms(b[:, :2], s, 4.0), ref)
    two = torch.tensor([[0.0, 0.0], [1.9, 0.0]])
    assert circle_nms(two, torch.tensor([0.9, 0.8]), 4.0).tolist() == [0]  # 1.9^2 = 3.61 <= 4: suppressed
    assert circle_nms(two, torch.tensor([0.9, 0.8]), 3.0).tolist() == [0, 1]


def test_scale_nms_scales_sizes_per_class():
    b, s, lab = random_scene(seed=4, classes=10)
    f = torch.tensor(RCBEVDET_NMS_SCALE, dtype=torch.float64)
    scaled = b.clone()
    scaled[:, 3:6] *= f[lab][:, None]
    iou = box_iou_bev(scaled, scaled)
    ref = loop_nms(s, lambda k, i: bool(iou[k, i] > 0.2))
    assert torch.equal(scale_nms(b, s, lab, 0.2), ref)
    # two pedestrians 0.8 m apart (0.6 m boxes) do not overlap, but do at 1.5x; two cones do at 3.5x
    peds = torch.tensor([[0, 0, 0, 0.6, 0.6, 1.7, 0, 0, 0], [0.8, 0, 0, 0.6, 0.6, 1.7, 0, 0, 0]], dtype=torch.float64)
    sc = torch.tensor([0.9, 0.8], dtype=torch.float64)
    assert nms_rotated(peds, sc, 0.0).tolist() == [0, 1]
    assert scale_nms(peds, sc, torch.tensor([8, 8]), 0.01).tolist() == [0]
    with pytest.raises(ValueError, match="labels"):
        scale_nms(peds, sc, torch.tensor([8, 10]), 0.2)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 25), seed=st.integers(0, 10**6), thr=st.floats(0.0, 0.9))
def test_property_greedy_keep_matches_the_loop(n, seed, thr):
    g = torch.Generator().manual_seed(seed)
    sim = torch.rand(n, n, generator=g)
    sim = (sim + sim.T) / 2
    s = torch.rand(n, generator=g)
    order = torch.argsort(s, descending=True, stable=True)
    keep = greedy_keep(sim[order][:, order] > thr)
    ref = loop_nms(s, lambda k, i: bool(sim[k, i] > thr))
    assert torch.equal(order[keep], ref)
