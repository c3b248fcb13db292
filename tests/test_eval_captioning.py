"""m@IoU=k captioning metrics: IoU modes, GT-to-prediction matching, the formula, and real pycocoevalcap scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bevbridge.eval import captioning
from bevbridge.eval.box_iou import box_iou, rotated_iou_3d
from bevbridge.eval.captioning import CaptionMeter, JavaNotFoundError, m_at_iou, require_java, score_captions
from bevbridge.geometry import box_corners

CAPTIONS = [
    "a red car is parked on the left side of the road",
    "a pedestrian is walking across the street in front of the ego car",
    "a white truck is driving ahead in the same lane",
    "a bicycle is leaning against the wall near the shop",
]


def _box(x=0.0, y=0.0, z=0.0, l=4.0, w=2.0, h=1.5, yaw=0.0):  # noqa: E741
    return [x, y, z, l, w, h, yaw]


# ------------------------------------------------------------------------------------------------------ IoU modes
def test_iou_known_values():
    a = np.array([_box()])
    cases = {  # box -> (3d IoU, scale IoU)
        "same": (_box(), 1.0, 1.0),
        "half along heading": (_box(x=2.0), 1 / 3, 1.0),  # overlap 2 x 2 x 1.5 = half a box
        "half in height": (_box(z=0.75), 1 / 3, 1.0),
        "far away": (_box(x=50.0), 0.0, 1.0),
        "square turned 90 deg": (None, 1.0, 1.0),
        "half the length": (_box(l=2.0), 0.5, 0.5),
    }
    for name, (b, iou3d, iouscale) in cases.items():
        if b is None:
            a2, b = np.array([_box(l=2.0, w=2.0)]), _box(l=2.0, w=2.0, yaw=math.pi / 2)
        else:
            a2 = a
        assert box_iou(a2, np.array([b]), "3d")[0, 0] == pytest.approx(iou3d, abs=1e-9), name
        assert box_iou(a2, np.array([b]), "scale")[0, 0] == pytest.approx(iouscale, abs=1e-9), name
    with pytest.raises(ValueError, match="IoU mode"):
        box_iou(a, a, "bev")


def _monte_carlo_iou(a: np.ndarray, b: np.ndarray, n: int = 400_000, seed: int = 0) -> float:
    """IoU estimated by sampling the union's bounding box: independent of shapely and of the corner ordering."""
    rng = np.random.default_rng(seed)
    corners = np.concatenate([box_corners(a[None])[0], box_corners(b[None])[0]])
    lo, hi = corners.min(0), corners.max(0)
    pts = lo + rng.random((n, 3)) * (hi - lo)

    def inside(box):
        d = pts - box[:3]
        c, s = math.cos(box[6]), math.sin(box[6])
        u, v = d[:, 0] * c + d[:, 1] * s, -d[:, 0] * s + d[:, 1] * c
        return (np.abs(u) <= box[3] / 2) & (np.abs(v) <= box[4] / 2) & (np.abs(d[:, 2]) <= box[5] / 2)

    ia, ib = inside(a), inside(b)
    return (ia & ib).sum() / max((ia | ib).sum(), 1)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_rotated_iou_matches_monte_carlo_and_is_rigid_invariant(seed):
    rng = np.random.default_rng(seed)
    a = np.array(_box(0, 0, 0, *rng.uniform(1, 5, 3), rng.uniform(-math.pi, math.pi)))
    b = np.array(_box(*rng.uniform(-2, 2, 2), rng.uniform(-1, 1), *rng.uniform(1, 5, 3),
                      rng.uniform(-math.pi, math.pi)))
    iou = rotated_iou_3d(a[None], b[None])[0, 0]
    assert iou == pytest.approx(_monte_carlo_iou(a, b), abs=0.01)
    assert rotated_iou_3d(b[None], a[None])[0, 0] == pytest.approx(iou)
    # moving both boxes by one rigid motion leaves the IoU unchanged
    t, phi = rng.uniform(-30, 30, 3), rng.uniform(-math.pi, math.pi)
    R = np.array([[math.cos(phi), -math.sin(phi)], [math.sin(phi), math.cos(phi)]])
    moved = [np.concatenate([R @ x[:2] + t[:2], [x[2] + t[2]], x[3:6], [x[6] + phi]]) for x in (a, b)]
    assert rotated_iou_3d(moved[0][None], moved[1][None])[0, 0] == pytest.approx(iou, abs=1e-9)


# ------------------------------------------------------------------------------------------------------ matching
def test_each_gt_is_matched_to_its_best_prediction_in_either_mode():
    gt = np.array([_box(), _box(x=20.0, l=1.0, w=1.0, h=2.0)])
    preds = np.array([
        _box(x=0.5),                            # overlaps GT 0 well (3d), same size
        _box(x=-40.0, l=1.0, w=1.0, h=2.0),     # far away, but exactly GT 1's size
        _box(x=20.2, l=1.1, w=1.0, h=2.0),      # on GT 1, slightly longer
    ])
    meter3d, meterscale = CaptionMeter("3d"), CaptionMeter("scale")
    for m in (meter3d, meterscale):
        m.update(gt, ["car caption", "pedestrian caption"], preds, ["p0", "p1", "p2"])
    assert [m.candidate for m in meter3d.matches] == ["p0", "p2"]
    assert meter3d.matches[0].iou == pytest.approx(3.5 / 4.5)
    # the size-only IoU cannot tell where a box is: TOD3Cap's scale IoU picks the far-away box of the right size
    assert [m.candidate for m in meterscale.matches] == ["p0", "p1"]
    assert meterscale.matches[1].iou == pytest.approx(1.0)
    empty = CaptionMeter()
    empty.update(gt, ["a", "b"], np.zeros((0, 7)), [])
    assert [(m.candidate, m.iou) for m in empty.matches] == [(None, 0.0), (None, 0.0)]
    with pytest.raises(ValueError, match="one caption per box"):
        empty.update(gt, ["a"], preds, ["p0", "p1", "p2"])
    with pytest.raises(ValueError, match="empty reference"):
        empty.update(gt, ["a", "  "], preds, ["p0", "p1", "p2"])


def test_formula_averages_over_all_gt_with_unmatched_counting_zero(monkeypatch):
    """m@IoU=k = (1/N) sum_i m_i 1{IoU_i > k} (MTA Sec. 4.1), checked with stand-in per-object scores."""
    per_object = np.array([0.9, 0.6, 0.3, 0.7])
    monkeypatch.setattr(captioning, "score_captions",
                        lambda refs, cands: {name: per_object.copy() for name in captioning.CAPTION_METRICS})
    meter = CaptionMeter("3d")
    gt = np.array([_box(), _box(x=10.0), _box(x=20.0), _box(x=30.0)])
    preds = np.array([_box(), _box(x=10.0 + 4 * 0.4), _box(x=20.0 + 4 * 0.7)])  # IoUs 1, 0.6/1.4, 0.3/1.7, 0
    meter.update(gt, CAPTIONS, preds, CAPTIONS[:3])
    ious = [m.iou for m in meter.matches]
    assert ious == pytest.approx([1.0, 0.6 / 1.4, 0.3 / 1.7, 0.0])
    r = meter.compute()
    assert r["CIDEr@0.25"] == pytest.approx((0.9 + 0.6) / 4)  # IoU 0.176 and 0 do not count
    assert r["CIDEr@0.5"] == pytest.approx(0.9 / 4)
    assert r["recall@0.25"] == 0.5 and r["recall@0.5"] == 0.25 and r["num_gt"] == 4
    other = CaptionMeter("3d").merge(meter)
    assert len(other) == 4


def test_missing_java_is_named_with_the_install_command(monkeypatch):
    monkeypatch.setattr(captioning.shutil, "which", lambda name: None)
    with pytest.raises(JavaNotFoundError, match="openjdk-17-jre-headless"):
        require_java()
    with pytest.raises(JavaNotFoundError, match="java"):
        score_captions([["a car"]], ["a car"])


# ---------------------------------------------------------------------------------------- real pycocoevalcap (Java)
# METEOR loads its paraphrase tables in a JVM for every run (~10-20 s here), so these are marked slow.
@pytest.fixture(scope="module")
def scores():
    """One scorer run: objects 0-3 captioned perfectly, 4-7 with each other's captions, 8 empty, 9 missing."""
    require_java()
    refs = [[c] for c in CAPTIONS] * 2 + [[CAPTIONS[0]], [CAPTIONS[1]]]
    cands = CAPTIONS + CAPTIONS[1:] + CAPTIONS[:1] + ["", None]
    return score_captions(refs, cands)


@pytest.mark.slow
def test_identical_captions_score_the_maximum(scores):
    assert scores["BLEU-4"][:4] == pytest.approx(1.0, abs=1e-6)
    assert scores["METEOR"][:4] == pytest.approx(1.0, abs=1e-6)
    assert scores["ROUGE-L"][:4] == pytest.approx(1.0)
    assert scores["CIDEr"][:4] == pytest.approx(10.0)  # CIDEr-D is scaled by 10


@pytest.mark.slow
def test_shuffled_captions_score_worse_and_empty_ones_zero(scores):
    for name, s in scores.items():
        assert (s[4:8] < s[:4] - 0.2 * s[:4]).all(), (name, s)
        assert s[8] == 0.0 and s[9] == 0.0, name


@pytest.mark.slow
def test_m_at_iou_end_to_end_with_real_scorers():
    gt = [np.array([_box(), _box(x=10.0)]), np.array([_box(x=5.0)])]
    preds = [np.array([_box(), _box(x=10.0 + 4 * 0.4)]), np.array([_box(x=50.0)])]
    r = m_at_iou(gt, [CAPTIONS[:2], [CAPTIONS[2]]], preds, [CAPTIONS[:2], [CAPTIONS[2]]])
    # sample 0: IoU 1 and 0.43, identical captions; sample 1: unmatched (IoU 0) -> zero
    assert r["METEOR@0.25"] == pytest.approx(2 / 3, abs=1e-6) and r["METEOR@0.5"] == pytest.approx(1 / 3, abs=1e-6)
    assert r["CIDEr@0.25"] == pytest.approx(20 / 3) and r["CIDEr@0.5"] == pytest.approx(10 / 3)
    assert set(r) == {"num_gt", *(f"{m}@{k}" for m in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "recall")
                                  for k in ("0.25", "0.5"))}
