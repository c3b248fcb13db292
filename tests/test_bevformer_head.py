"""BEVFormer's DETR head: Hungarian matching against brute force, the box code, the loss and NMS-free decoding."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from bevbridge.geometry import BEVGrid
from bevbridge.models.bevformer.config import DecoderConfig, DETRHeadConfig
from bevbridge.models.bevformer.decoder import inverse_sigmoid
from bevbridge.models.bevformer.detr_head import DETRHead, decode_boxes, encode_boxes
from bevbridge.models.bevformer.matcher import HungarianMatcher, match_cost

GRID = BEVGrid.square(51.2, 2.048)


def random_problem(Q: int, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(Q, 10, generator=g, dtype=torch.float64) * 2
    code = torch.randn(Q, 10, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, 10, (n,), generator=g)
    gt = torch.randn(n, 10, generator=g, dtype=torch.float64) * 3
    return logits, code, labels, gt


def numpy_cost(logits, code, labels, gt, w_cls=2.0, w_reg=0.25, alpha=0.25, gamma=2.0, smooth=None):
    """The focal + L1 (or SmoothL1) assignment cost, written out in numpy float64 (mmdet's FocalLossCost and
    BBox3DL1Cost / SmoothL1Cost)."""
    p = 1 / (1 + np.exp(-logits.numpy()))
    pos = -np.log(p + 1e-12) * alpha * (1 - p) ** gamma
    neg = -np.log(1 - p + 1e-12) * (1 - alpha) * p ** gamma
    c = (pos - neg)[:, labels.numpy()]
    d = np.abs(code.numpy()[:, None, :8] - gt.numpy()[None, :, :8])
    if smooth is not None:
        d = np.where(d < smooth, 0.5 * d * d / smooth, d - 0.5 * smooth)
    return w_cls * c + w_reg * d.sum(-1)


@pytest.mark.parametrize("reg", ["l1", "smooth_l1"])
def test_match_cost_is_the_focal_plus_box_cost(reg):
    """A cost on the wrong class column, velocity included in the box cost, or a missing alpha fails."""
    logits, code, labels, gt = random_problem(7, 4, 0)
    got = match_cost(logits, code, labels, gt, reg=reg, reg_weight=0.75 if reg == "smooth_l1" else 0.25)
    want = numpy_cost(logits, code, labels, gt, w_reg=0.75 if reg == "smooth_l1" else 0.25,
                      smooth=1.0 if reg == "smooth_l1" else None)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("Q,n,seed", [(5, 3, 0), (6, 4, 1), (4, 4, 2), (7, 2, 3), (5, 1, 4)])
def test_hungarian_matcher_equals_brute_force(Q, n, seed):
    """The matcher's assignment has the minimum total cost over every injective map of boxes to queries (a
    transposed cost matrix, or rows/cols returned swapped, picks another assignment)."""
    logits, code, labels, gt = random_problem(Q, n, seed)
    qi, gi = HungarianMatcher()(logits, code, labels, gt)
    C = numpy_cost(logits, code, labels, gt)
    best = min(itertools.permutations(range(Q), n), key=lambda perm: sum(C[perm[j], j] for j in range(n)))
    assert sorted(zip(gi.tolist(), qi.tolist())) == sorted((j, best[j]) for j in range(n))
    assert len(set(qi.tolist())) == n == len(set(gi.tolist()))


def test_matcher_with_no_boxes():
    qi, gi = HungarianMatcher()(torch.randn(5, 10), torch.randn(5, 10), torch.zeros(0, dtype=torch.long),
                                torch.zeros(0, 10))
    assert qi.numel() == gi.numel() == 0


def test_box_code_round_trip():
    """(x, y, z, l, w, h, yaw, vx, vy) -> (cx, cy, log l, log w, cz, log h, sin, cos, vx, vy) -> the same box; the
    centre z sits in slot 4 (refined with the reference's z) and yaw survives the +-pi wrap."""
    boxes = torch.tensor([[10.0, -5.0, 0.8, 4.6, 1.9, 1.7, 3.0, 2.0, -1.0],
                          [-30.0, 40.0, -1.2, 0.5, 2.5, 1.0, -3.1, 0.0, 0.0]], dtype=torch.float64)
    code = encode_boxes(boxes)
    assert code[0, 4] == 0.8 and torch.allclose(code[0, 2], torch.tensor(math.log(4.6), dtype=torch.float64))
    torch.testing.assert_close(decode_boxes(code), boxes)


def make_head(groups=1, **kw) -> DETRHead:
    dec = DecoderConfig(layers=2, num_query=6, groups=groups, heads=2, ffn_channels=16)
    return DETRHead(GRID, (-5.0, 3.0), DETRHeadConfig(**kw), dec, 8).double()


def test_zero_regression_lands_on_the_reference_point():
    """With zero box deltas the predicted centre is the reference point mapped through the grid (x over
    [xmin, xmax], y over [ymin, ymax], z over the pillar range): an x/y swap or a missing inverse sigmoid fails."""
    head = make_head()
    ref = torch.tensor([[[0.25, 0.75, 0.5], [0.5, 0.5, 0.125]]], dtype=torch.float64)[None]  # [L=1, B=1, 2, 3]
    out = head._to_metres(torch.zeros(1, 1, 2, 10, dtype=torch.float64), ref)
    torch.testing.assert_close(out[0, 0, :, :2], torch.tensor([[-25.6, 25.6], [0.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(out[0, 0, :, 4], torch.tensor([-1.0, -4.0], dtype=torch.float64))
    torch.testing.assert_close(inverse_sigmoid(ref).sigmoid(), ref)


def fake_outputs(head: DETRHead, B: int, groups: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    L, n = 2, head.num_query
    return {"cls_scores": torch.randn(L, B, groups * n, 10, generator=g, dtype=torch.float64),
            "box_codes": torch.randn(L, B, groups * n, 10, generator=g, dtype=torch.float64),
            "query_feats": torch.randn(L, B, groups * n, 8, generator=g, dtype=torch.float64),
            "groups": groups, "queries_per_group": n}


def test_loss_is_focal_over_all_queries_plus_weighted_box_loss_on_matches():
    """The loss equals an independent computation from the matcher's assignment: focal summed over every query and
    class / #matches, L1 x code weights (velocity 0.2) / #matches, weights 2.0 and 0.25, summed over layers. A GT
    row with a NaN velocity is left out of the box loss. Catches a mean instead of the avg factor, unmatched queries
    pushed to a class, code weights ignored."""
    head = make_head()
    out = fake_outputs(head, 2, 1)
    boxes = [torch.tensor([[5.0, 3.0, 0.0, 4.0, 2.0, 1.5, 0.3, 1.0, 0.0],
                           [-9.0, 1.0, 1.0, 1.0, 1.0, 1.0, -2.0, float("nan"), 0.0]], dtype=torch.float64),
             torch.tensor([[0.0, 0.0, 0.0, 0.5, 0.5, 1.8, 1.0, 0.0, 0.0]], dtype=torch.float64)]
    labels = [torch.tensor([0, 5]), torch.tensor([8])]
    got = head.loss(out, boxes, labels)
    w = torch.tensor([1.0] * 8 + [0.2, 0.2], dtype=torch.float64)
    cls_total = box_total = 0.0
    for layer in range(2):
        target = torch.zeros(2, 6, 10, dtype=torch.float64)
        box = 0.0
        for b, (qi, gi) in enumerate(head.assign(out, boxes, labels, layer)):
            target[b, qi, labels[b][gi]] = 1
            for q, j in zip(qi.tolist(), gi.tolist()):
                t = encode_boxes(boxes[b][j])
                if torch.isfinite(t).all():
                    box += float(((out["box_codes"][layer, b, q] - t).abs() * w).sum())
        p = out["cls_scores"][layer].sigmoid()
        ce = -(target * p.log() + (1 - target) * (1 - p).log())
        pt = target * p + (1 - target) * (1 - p)
        focal = (ce * (1 - pt) ** 2 * (0.25 * target + 0.75 * (1 - target))).sum()
        cls_total += 2.0 * float(focal) / 3
        box_total += 0.25 * box / 3
    assert abs(float(got["cls"]) - cls_total) < 1e-9 and abs(float(got["bbox"]) - box_total) < 1e-9


def test_group_detr_matches_each_group_on_its_own():
    """With 3 groups every GT box is matched once per group, inside that group's queries, and the average factor
    counts every group's matches (so the loss is the mean of the groups' losses)."""
    head = make_head(groups=3)
    out = fake_outputs(head, 1, 3, seed=4)
    boxes = [torch.tensor([[5.0, 3.0, 0.0, 4.0, 2.0, 1.5, 0.3, 1.0, 0.0]], dtype=torch.float64)]
    labels = [torch.tensor([2])]
    for g in range(3):
        (qi, gi), = head.assign(out, boxes, labels, group=g)
        assert qi.item() // 6 == g and gi.tolist() == [0]
    per_group = []
    for g in range(3):
        sub = {**out, "cls_scores": out["cls_scores"][:, :, g * 6:(g + 1) * 6],
               "box_codes": out["box_codes"][:, :, g * 6:(g + 1) * 6], "groups": 1}
        per_group.append(head.loss(sub, boxes, labels))
    got = head.loss(out, boxes, labels)
    for k in ("cls", "bbox"):
        assert abs(float(got[k]) - sum(float(p[k]) for p in per_group) / 3) < 1e-9


def test_nms_free_decoding_takes_the_top_query_class_pairs():
    """Top-k over (query, class) of the last layer's first group: the highest-scoring pair comes first with its
    query's box; pairs outside the post-centre range are dropped."""
    head = make_head(max_num=4, groups=2)
    out = fake_outputs(head, 1, 1)
    out["cls_scores"][-1, 0] = -10.0
    out["cls_scores"][-1, 0, 3, 7] = 5.0
    out["cls_scores"][-1, 0, 1, 2] = 4.0
    out["cls_scores"][-1, 0, 5, 0] = 3.0
    out["box_codes"][-1, 0, 5, 0] = 100.0  # outside post_center_range
    boxes, scores, labels = head.predict(out)[0]
    assert labels[:2].tolist() == [7, 2] and len(scores) == 3
    torch.testing.assert_close(boxes[0], decode_boxes(out["box_codes"][-1, 0, 3]).float())
