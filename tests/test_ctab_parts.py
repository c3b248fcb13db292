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
    """Both reductions: 0 for a perfect prediction, ~1 for a disjoint one."""
    g = torch.zeros(1, 2, 8, 8)
    g[0, 0, :4] = 1
    perfect = torch.where(g > 0, 30.0, -30.0)
    assert dice_loss(perfect, g).item() == pytest.approx(0.0, abs=1e-6)
    disjoint = torch.where(g > 0, -30.0, 30.0)
    assert dice_loss(disjoint[:, :1], g[:, :1]).item() == pytest.approx(1.0, abs=0.02)
    assert dice_loss(perfect, g, reduction="sample_class").item() == pytest.approx(0.0, abs=1e-6)


def test_dice_reduces_per_class_over_the_batch_and_leaves_out_absent_classes():
    """Against float64: one Dice per class with sums over batch and pixels, averaged over the classes with ground
    truth in the batch. Catches a per-(sample, class) reduction (a sample without the class adds a term stuck near 1
    with a vanishing gradient: a constant floor under L_seg that HUW reads as noise), a mean over absent classes, and
    the batch and class axes confused."""
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    g = torch.zeros(2, 3, 5, 6, dtype=torch.float64)
    g[0, 0, :2, :3] = 1  # class 0 only in sample 0
    g[1, 1, 3:, 2:] = 1  # class 1 only in sample 1; class 2 nowhere
    p = logits.sigmoid()
    want = [1 - (2 * (p[:, c] * g[:, c]).sum() + 1) / (p[:, c].sum() + g[:, c].sum() + 1) for c in (0, 1)]
    assert dice_loss(logits, g).item() == pytest.approx(float(sum(want) / 2), rel=1e-12)
    # the empty sample/class pairs and the absent class change nothing; in "sample_class" they add a floor
    assert dice_loss(logits[:, :2], g[:, :2]).item() == pytest.approx(dice_loss(logits, g).item(), rel=1e-12)
    pairs = [1 - (2 * (p[b, c] * g[b, c]).sum() + 1) / (p[b, c].sum() + g[b, c].sum() + 1)
             for b in range(2) for c in range(3)]
    assert dice_loss(logits, g, reduction="sample_class").item() == pytest.approx(float(sum(pairs) / 6), rel=1e-12)
    assert dice_loss(logits, g, reduction="sample_class") > dice_loss(logits, g)
    # a class present in the batch keeps a useful gradient however many samples lack it
    x = logits.clone().requires_grad_(True)
    dice_loss(x, g).backward()
    assert x.grad[0, 0][g[0, 0] > 0].abs().min() > 1e-3
    assert dice_loss(logits, torch.zeros_like(g)).item() == 0.0  # nothing to find: no Dice term


def test_huw_formula_clamp_and_gradients():
    """Eq. 8 per term, the bound at 1.5 by projection, and the true gradient at the bound. Catches the sign of
    log sigma, a 1/sigma instead of 1/(2 sigma^2) weight, and a clamp inside the loss whose zero gradient traps
    log sigma at the bound."""
    huw = UncertaintyWeighting(("det", "seg"))
    with torch.no_grad():
        huw.log_sigma["det"].fill_(0.5)
        huw.log_sigma["seg"].fill_(3.0)  # projected to 1.5 by the forward pass
    assert huw.sigmas()["huw/sigma_seg"] == pytest.approx(math.exp(1.5))
    out = huw({"det": torch.tensor(2.0), "seg": torch.tensor(40.0)})
    assert huw.log_sigma["seg"].item() == 1.5
    assert out["loss_det"].item() == pytest.approx(2.0 / (2 * math.exp(1.0)) + 0.5)
    assert out["loss_seg"].item() == pytest.approx(40.0 / (2 * math.exp(3.0)) + 1.5)
    sum(out.values()).backward()
    assert huw.log_sigma["det"].grad.item() == pytest.approx(-2.0 / math.exp(1.0) + 1.0)
    # at the bound the gradient is the true one: d/d log_sigma = 1 - L exp(-2 * 1.5)
    assert huw.log_sigma["seg"].grad.item() == pytest.approx(1.0 - 40.0 * math.exp(-3.0))
    with pytest.raises(ValueError, match="expects losses"):
        huw({"det": torch.tensor(1.0)})


def test_huw_log_sigma_recovers_from_the_bound_when_the_loss_falls():
    """The issue's scenario: a large segmentation loss drives log sigma to the 1.5 bound (its optimum 0.5 ln L lies
    beyond it); when the loss later falls, log sigma must come back down towards 0.5 ln L. A plain clamp in the
    forward pass leaves it at 1.5 for good (zero gradient, no weight decay)."""
    huw = UncertaintyWeighting(("det", "seg"))
    opt = torch.optim.SGD(huw.parameters(), lr=0.02)  # plain descent: what moves it is the gradient, not momentum
    for loss_seg, steps in ((400.0, 150), (1.0, 150)):
        for _ in range(steps):
            opt.zero_grad()
            out = huw({"det": torch.tensor(1.0), "seg": torch.tensor(loss_seg)})
            (out["loss_det"] + out["loss_seg"]).backward()
            opt.step()
        if loss_seg > 1:
            assert huw.clamped("seg").item() == pytest.approx(1.5)  # held at the bound
    assert huw.clamped("seg").item() < 0.3  # back down towards 0.5 ln 1 = 0
