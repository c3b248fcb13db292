"""BridgeTA's distillation losses (bevbridge/losses/distill.py) against float64 computations written out here."""

from __future__ import annotations

import math

import pytest
import torch

from bevbridge.losses.distill import EPS_RANGE, bernoulli_kl, dual_path, level_l2, optimal_eps


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def eq8_by_hand(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Eq. 8 with explicit loops: per sample (1 / (H W)) sum_i sum_j ||a_ij - b_ij||^2, then the batch mean."""
    B, C, H, W = a.shape
    per_sample = []
    for n in range(B):
        s = 0.0
        for i in range(H):
            for j in range(W):
                s += float(sum((a[n, c, i, j] - b[n, c, i, j]) ** 2 for c in range(C)))
        per_sample.append(s / (H * W))
    return torch.tensor(sum(per_sample) / B, dtype=torch.float64)


def test_eq8_against_loops():
    """Eq. 8 against a loop over samples, cells and channels. Catches a reduction over the wrong dimension."""
    a, b = rand(2, 3, 4, 5, seed=1), rand(2, 3, 4, 5, seed=2)
    assert torch.allclose(level_l2(a, b), eq8_by_hand(a, b), rtol=1e-12)


@pytest.mark.parametrize("C", [1, 6, 80])
def test_constant_offset_over_c_channels_gives_c_delta_squared(C):
    """A constant offset delta in every channel of every cell: Eq. 8 = C delta^2 (a squared L2 over channels averaged
    over cells). Catches an MSE that also averages over channels (delta^2) or sums over cells (H W C delta^2)."""
    delta = 0.37
    a = rand(2, C, 7, 9, seed=C)
    assert math.isclose(float(level_l2(a + delta, a)), C * delta ** 2, rel_tol=1e-12)


def test_shapes_must_match():
    with pytest.raises(ValueError, match="Eq. 8"):
        level_l2(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, 3))


def levels(seed=0, shape=(2, 4, 5, 6)):
    """Student, assistant and teacher representations with the assistant between the other two."""
    t = rand(*shape, seed=seed)
    s = t + 1.5 * rand(*shape, seed=seed + 1)
    ta = t + 0.5 * (s - t) + 0.3 * rand(*shape, seed=seed + 2)
    return s, ta, t


def test_dual_path_with_eps_star_is_the_square_of_the_summed_distances():
    """With eps* = b / a (Eq. 7), (1 + eps*) a^2 + (1 + 1/eps*) b^2 = (a + b)^2, where a^2 = L_ta2s, b^2 = L_t2ta.
    Catches eps* inverted (a / b) or computed from squared distances (b^2 / a^2)."""
    s, ta, t = levels()
    la, lb = level_l2(s, ta), level_l2(ta, t)
    loss, eps = dual_path(la, lb)
    assert torch.allclose(eps, lb.sqrt() / la.sqrt(), rtol=1e-12)
    assert torch.allclose(loss, (la.sqrt() + lb.sqrt()) ** 2, rtol=1e-12)


@pytest.mark.parametrize("eps", [None, 0.1, 1.0, 7.0])
def test_young_bound_holds_and_eps_star_is_the_tightest(eps):
    """Eq. 5: the direct teacher-student distance never exceeds the dual path, for any eps > 0; eps* gives the
    smallest bound over a sweep (Eq. 6-7). Catches the two paths' weights swapped (then eps* is not the minimum)."""
    s, ta, t = levels(seed=3)
    la, lb, direct = level_l2(s, ta), level_l2(ta, t), level_l2(s, t)
    bound, _ = dual_path(la, lb, eps)
    assert direct <= bound * (1 + 1e-12)
    best, _ = dual_path(la, lb)
    for e in torch.logspace(-3, 3, 61, dtype=torch.float64):
        assert best <= (1 + e) * la + (1 + 1 / e) * lb + 1e-12


def test_detached_eps_star_gives_the_attached_gradient():
    """f is stationary at eps* (df/deps = 0), so the gradient with eps* detached equals the one with eps* = b/a kept
    in the graph. Catches a loss that is not stationary in eps (e.g. (1 + eps) b^2 + (1 + 1/eps) a^2)."""
    s, ta, t = levels(seed=5)
    s1, ta1 = s.clone().requires_grad_(), ta.clone().requires_grad_()
    loss, _ = dual_path(level_l2(s1, ta1), level_l2(ta1, t))
    g_detached = torch.autograd.grad(loss, (s1, ta1))
    s2, ta2 = s.clone().requires_grad_(), ta.clone().requires_grad_()
    la, lb = level_l2(s2, ta2), level_l2(ta2, t)
    e = (lb / la).sqrt()  # attached
    g_attached = torch.autograd.grad((1 + e) * la + (1 + 1 / e) * lb, (s2, ta2))
    for gd, ga in zip(g_detached, g_attached):
        assert torch.allclose(gd, ga, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("which", ["a", "b", "both"])
def test_dual_path_is_finite_when_a_distance_vanishes(which):
    """a -> 0 (student on the assistant) makes b / a unbounded; the loss and its gradients stay finite and equal the
    limit (a + b)^2 to 1e-6. Catches a division by zero (inf * 0 = nan)."""
    s, ta, t = levels(seed=7)
    if which in ("a", "both"):
        s = ta.clone()
    if which in ("b", "both"):
        ta = t.clone()
        if which == "both":
            s = t.clone()
    s, ta = s.requires_grad_(), ta.requires_grad_()
    la, lb = level_l2(s, ta), level_l2(ta, t)
    loss, eps = dual_path(la, lb)
    loss.backward()
    assert torch.isfinite(loss) and EPS_RANGE[0] <= float(eps) <= EPS_RANGE[1]
    assert torch.isfinite(s.grad).all() and torch.isfinite(ta.grad).all()
    limit = float((la.sqrt() + lb.sqrt()).detach() ** 2)
    assert math.isclose(float(loss.detach()), limit, rel_tol=1e-5, abs_tol=1e-300)


def test_fixed_eps_and_float32():
    """A fixed eps is used as given; in float32 eps* agrees with float64."""
    la, lb = torch.tensor(4.0), torch.tensor(1.0)
    loss, e = dual_path(la, lb, 2.0)
    assert float(e) == 2.0 and float(loss) == 3 * 4 + 1.5 * 1
    assert math.isclose(float(optimal_eps(la, lb)), 0.5, rel_tol=1e-7)
    with pytest.raises(ValueError, match="eps"):
        dual_path(la, lb, 0.0)


def test_bernoulli_kl_against_its_formula():
    """Eq. 12 per pixel: p log(p/q) + (1-p) log((1-p)/(1-q)) summed over classes, averaged over cells and batch,
    P = sigmoid of the first argument. Catches the direction swapped (KL(Q||P)), a softmax over classes, a mean over
    classes."""
    p_logits, q_logits = 2 * rand(2, 6, 4, 5, seed=11), 2 * rand(2, 6, 4, 5, seed=12)
    p, q = p_logits.sigmoid(), q_logits.sigmoid()
    ref = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).sum(1).mean()
    got = bernoulli_kl(p_logits, q_logits)
    assert torch.allclose(got, ref, rtol=1e-12)
    assert not torch.allclose(bernoulli_kl(q_logits, p_logits), ref, rtol=1e-3)
    assert float(bernoulli_kl(p_logits, p_logits)) == 0.0


def test_bernoulli_kl_is_finite_for_saturated_logits():
    """Logits of +-60 (probabilities 1 - 1e-26 in float64, exactly 1 in float32): no log(0)."""
    p = torch.tensor([60.0, -60.0, 60.0]).view(1, 3, 1, 1)
    q = torch.tensor([-60.0, 60.0, 60.0]).view(1, 3, 1, 1)
    kl = bernoulli_kl(p, q)
    assert torch.isfinite(kl) and math.isclose(float(kl), 120.0, rel_tol=1e-3)
