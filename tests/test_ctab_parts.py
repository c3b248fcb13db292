"""CTAB's segmentation branch and losses: shapes, published parameter counts, loss formulas."""

from __future__ import annotations

import math

import pytest
import torch

from bevbridge.losses.dice import dice_loss
from bevbridge.losses.focal import gaussian_focal_loss, sigmoid_focal_loss
from bevbridge.losses.huw import UncertaintyWeighting
from bevbridge.models.heads.seg_decoder import BEVUpsample, SegDecoder


def millions(m: torch.nn.Module) -> float:
    return round(sum(p.numel() for p in m.parameters()) / 1e6, 2)


@pytest.mark.parametrize("in_affine", [True, False])
def test_published_parameter_counts(in_affine):
    """CTAB Sec. IV-B: SegDecoder 1.33M (C = 7), BEV Upsampling 0.30M."""
    assert millions(SegDecoder(7, in_affine=in_affine)) == 1.33
    assert millions(BEVUpsample(in_affine=in_affine)) == 0.30


def test_seg_branch_shapes():
    dec, up = SegDecoder(7), BEVUpsample()
    bev = torch.randn(2, 256, 32, 32)
    f = dec.features(bev)
    assert f.shape == (2, 128, 32, 32)
    logits = dec.classify(up(f))
    assert logits.shape == (2, 7, 200, 200)


def test_bev_upsample_starts_near_bilinear_and_keeps_extent():
    up = BEVUpsample(channels=4, out_size=(10, 10))
    x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(1, 4, 1, 1)
    u = torch.nn.functional.interpolate(x, size=(10, 10), mode="bilinear", align_corners=False)
    with torch.no_grad():
        up.norm2.weight.zero_()  # residual branch off -> exactly U
        up.norm2.bias.zero_()
    assert torch.allclose(up(x), u)


def test_sigmoid_focal_matches_formula():
    logits = torch.tensor([2.0, -1.0, 0.5])
    target = torch.tensor([1.0, 0.0, 0.0])
    p = logits.sigmoid()
    pt = torch.where(target == 1, p, 1 - p)
    at = torch.where(target == 1, torch.tensor(0.25), torch.tensor(0.75))
    ref = (-at * (1 - pt) ** 3 * pt.log()).mean()
    assert torch.allclose(sigmoid_focal_loss(logits, target, 0.25, 3.0), ref)


def test_gaussian_focal_positive_and_negative_terms():
    pred = torch.tensor([0.9, 0.2, 0.5])
    target = torch.tensor([1.0, 0.5, 0.0])
    pos = -math.log(0.9) * 0.1 ** 2
    neg = -math.log(0.8) * 0.2 ** 2 * 0.5 ** 4 + -math.log(0.5) * 0.5 ** 2
    assert gaussian_focal_loss(pred, target, avg_factor=1.0).item() == pytest.approx(pos + neg, rel=1e-5)


def test_dice_is_zero_for_perfect_and_one_for_disjoint():
    g = torch.zeros(1, 2, 8, 8)
    g[0, 0, :4] = 1
    perfect = torch.where(g > 0, 30.0, -30.0)
    assert dice_loss(perfect, g).item() == pytest.approx(0.0, abs=1e-6)
    disjoint = torch.where(g > 0, -30.0, 30.0)
    assert dice_loss(disjoint[:, :1], g[:, :1]).item() == pytest.approx(1.0, abs=0.02)


def test_huw_formula_clamp_and_gradients():
    huw = UncertaintyWeighting(("det", "seg"))
    with torch.no_grad():
        huw.log_sigma["det"].fill_(0.5)
        huw.log_sigma["seg"].fill_(3.0)  # clamped to 1.5 in the forward pass
    out = huw({"det": torch.tensor(2.0), "seg": torch.tensor(40.0)})
    assert out["loss_det"].item() == pytest.approx(2.0 / (2 * math.exp(1.0)) + 0.5)
    assert out["loss_seg"].item() == pytest.approx(40.0 / (2 * math.exp(3.0)) + 1.5)
    sum(out.values()).backward()
    assert huw.log_sigma["det"].grad.item() == pytest.approx(-2.0 / math.exp(1.0) + 1.0)
    assert huw.log_sigma["seg"].grad.item() == 0.0  # beyond the clamp
    assert huw.sigmas()["huw/sigma_seg"] == pytest.approx(math.exp(1.5))
    with pytest.raises(ValueError, match="expects losses"):
        huw({"det": torch.tensor(1.0)})
