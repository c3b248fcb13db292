"""AdamW parameter groups, lr scaling, schedules (warmup + cosine, cyclic), EMA."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from bevbridge.config import from_dict
from bevbridge.engine.ema import ModelEMA
from bevbridge.engine.optim import build_optimizer, param_groups, scaled_lr
from bevbridge.engine.schedule import Schedule
from bevbridge.config.schema import OptimConfig, ScheduleConfig
from tests.engine_tiny import TinyModel


def _groups_by_name(model, **cfg):
    return {g["name"]: g for g in param_groups(model, OptimConfig(**cfg))}


def test_param_groups_by_prefix_and_no_decay():
    """Would catch: the multiplier applied to the wrong parameters, 1-D parameters decayed, frozen ones included."""
    model = TinyModel()
    model.norm.weight.requires_grad_(False)  # frozen: left out
    groups = _groups_by_name(model, lr_mult={"image_backbone.": 0.1}, weight_decay=0.05)
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert ids["image_backbone."] == {id(model.image_backbone.weight)}
    assert ids["image_backbone./no_decay"] == {id(model.image_backbone.bias)}
    assert ids["default"] == {id(model.head.weight)}
    assert ids["default/no_decay"] == {id(model.head.bias), id(model.norm.bias), id(model.gate)}  # gate: a scalar
    assert groups["image_backbone."]["lr_mult"] == groups["image_backbone./no_decay"]["lr_mult"] == 0.1
    assert groups["default"]["lr_mult"] == 1.0
    assert groups["image_backbone."]["weight_decay"] == groups["default"]["weight_decay"] == 0.05
    assert groups["default/no_decay"]["weight_decay"] == groups["image_backbone./no_decay"]["weight_decay"] == 0.0
    n_trainable = sum(p.requires_grad for p in model.parameters())
    assert sum(len(g["params"]) for g in groups.values()) == n_trainable


def test_longest_prefix_wins_and_weight_decay_multiplier():
    """Would catch: the first (shorter) prefix taking precedence, or wd_mult ignored."""
    model = TinyModel()
    groups = param_groups(model, OptimConfig(lr_mult={"image_backbone.": 0.1, "image_backbone.weight": 2.0},
                                             wd_mult={"head.": 0.0}, weight_decay=0.05))
    by_param = {id(p): g for g in groups for p in g["params"]}
    assert by_param[id(model.image_backbone.weight)]["lr_mult"] == 2.0
    assert by_param[id(model.image_backbone.bias)]["lr_mult"] == 0.1
    assert by_param[id(model.head.weight)]["weight_decay"] == 0.0  # wd x 0
    assert by_param[id(model.norm.weight)]["weight_decay"] == 0.0  # 1-D
    assert len({g["name"] for g in groups}) == len(groups)  # names are distinct


def test_a_prefix_that_matches_nothing_is_an_error_naming_it():
    """Would catch: a typo in optim.lr_mult silently training everything at the full rate."""
    with pytest.raises(ValueError, match=r"optim.lr_mult: prefix 'img_backbone.' matches no trainable parameter"):
        param_groups(TinyModel(), OptimConfig(lr_mult={"img_backbone.": 0.1}))
    model = TinyModel()
    model.head.requires_grad_(False)  # frozen parameters do not count as a match
    with pytest.raises(ValueError, match="'head.'"):
        param_groups(model, OptimConfig(wd_mult={"head.": 0.5}))


def test_decay_1d_params_restores_decay_everywhere():
    groups = _groups_by_name(TinyModel(), decay_1d_params=True, lr_mult={"image_backbone.": 0.5})
    assert set(groups) == {"image_backbone.", "default"}


def test_optimizer_lr_per_group_and_linear_scaling_rule():
    cfg = OptimConfig(lr=4e-4, lr_mult={"image_backbone.": 0.1}, base_batch=32)
    assert scaled_lr(cfg, 64) == pytest.approx(8e-4)
    assert scaled_lr(OptimConfig(lr=4e-4), 64) == 4e-4  # no base_batch: used as given
    opt = build_optimizer(TinyModel(), cfg, scaled_lr(cfg, 16))
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["image_backbone."] == pytest.approx(2e-5) and lrs["default"] == pytest.approx(2e-4)


def test_ctab_cosine_schedule_peak_and_warmup():
    # CTAB: AdamW peak 4e-4, 500 warmup iterations, cosine (mmcv linear warmup from 1/3)
    cfg = ScheduleConfig(kind="cosine", warmup_steps=500, warmup_ratio=1 / 3, min_lr_ratio=1e-3)
    s = Schedule(cfg, 10_000)
    opt = torch.optim.AdamW([{"params": [nn.Parameter(torch.zeros(1))], "base_lr": 4e-4}], lr=4e-4)
    assert s.apply(opt, 0) == pytest.approx(1 / 3) and opt.param_groups[0]["lr"] == pytest.approx(4e-4 / 3)
    s.apply(opt, 250)
    cos250 = 0.5 * (1 + math.cos(math.pi * 250 / 10_000)) * (1 - 1e-3) + 1e-3
    assert opt.param_groups[0]["lr"] == pytest.approx(4e-4 * cos250 * (1 / 3 + 2 / 3 * 0.5))
    s.apply(opt, 500)  # warmup over: the cosine value itself, just below the 4e-4 peak
    assert 3.9e-4 < opt.param_groups[0]["lr"] <= 4e-4
    assert s.lr_factor(10_000) == pytest.approx(1e-3)
    assert s.lr_factor(5_500) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.55)) * (1 - 1e-3) + 1e-3)
    factors = [s.lr_factor(i) for i in range(500, 10_001, 100)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))  # non-increasing after warmup


def test_cyclic_schedule_follows_bevdet_one_cycle():
    cfg = ScheduleConfig(kind="cyclic", warmup_steps=0)  # target (10, 1e-4), momentum (0.85/0.95, 1), up 0.4
    s = Schedule(cfg, 1000)
    assert s.lr_factor(0) == pytest.approx(1.0)
    assert s.lr_factor(400) == pytest.approx(10.0)  # top at 40 %
    assert s.lr_factor(200) == pytest.approx(5.5)  # cosine half way: (1 + 10) / 2
    assert s.lr_factor(999) == pytest.approx(1e-4, abs=1e-4)
    assert max(s.lr_factor(i) for i in range(1000)) == pytest.approx(10.0)
    assert s.momentum_factor(0) == pytest.approx(1.0) and s.momentum_factor(400) == pytest.approx(0.85 / 0.95)
    opt = torch.optim.AdamW([{"params": [nn.Parameter(torch.zeros(1))], "base_lr": 1e-4}], lr=1e-4,
                            betas=(0.95, 0.99))
    s.apply(opt, 400)
    assert opt.param_groups[0]["betas"][0] == pytest.approx(0.85) and opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    s.apply(opt, 0)
    assert opt.param_groups[0]["betas"][0] == pytest.approx(0.95)


@settings(max_examples=50, deadline=None)
@given(kind=st.sampled_from(["cosine", "cyclic", "constant"]), total=st.integers(1, 5000),
       warmup=st.integers(0, 600), step=st.integers(0, 6000))
def test_schedule_factors_are_finite_and_bounded(kind, total, warmup, step):
    s = Schedule(ScheduleConfig(kind=kind, warmup_steps=warmup), total)
    f = s.lr_factor(step)
    assert math.isfinite(f) and 0.0 <= f <= 10.0 + 1e-9
    assert 0.0 < s.momentum_factor(step) <= 1.0 + 1e-12


def test_schedule_config_is_validated():
    from bevbridge.config import ConfigError

    with pytest.raises(ConfigError, match="cyclic_step_ratio_up"):
        from_dict(ScheduleConfig, {"cyclic_step_ratio_up": 1.5})


def test_ema_follows_the_megvii_ramp():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.999, ramp=2000.0, updates=0)
    w0 = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model.train()(torch.randn(4, 3))  # moves BN running stats and num_batches_tracked
    ema.update(model)
    d = 0.999 * (1 - math.exp(-1 / 2000))
    torch.testing.assert_close(ema.shadow["0.weight"], d * w0 + (1 - d) * model[0].weight.detach())
    assert ema.shadow["1.num_batches_tracked"] == 1  # integer buffers are copied
    ema_late = ModelEMA(model, updates=10560)  # RCBEVDet's init_updates: the ramp is flat
    assert ema_late.current_decay() == pytest.approx(0.999 * (1 - math.exp(-10560 / 2000)))
    current = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.applied_to(model):
        torch.testing.assert_close(model[0].weight, ema.shadow["0.weight"])
    assert all(torch.equal(current[k], v) for k, v in model.state_dict().items())  # restored
