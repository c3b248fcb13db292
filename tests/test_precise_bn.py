"""Recomputing BatchNorm statistics for the current weights before evaluation (bevbridge/engine/precise_bn.py)."""

from __future__ import annotations

import torch
from torch import nn

from bevbridge.engine.precise_bn import recompute_bn_stats
from bevbridge.models.freeze import freeze


def test_recomputed_statistics_are_the_plain_average_over_the_batches():
    """Stale running statistics are replaced by the mean over the batches of each batch's mean and (unbiased)
    variance, computed here independently in float64; momentum and train/eval mode are restored; a frozen BatchNorm
    keeps its own statistics. Catches an exponential average that still remembers the stale values (momentum not
    switched to a plain average), statistics taken in eval mode (unchanged), frozen modules overwritten, and a
    model left in train mode for the evaluation that follows."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2))
    freeze(model[4])
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.running_mean.fill_(7.0)
            bn.running_var.fill_(9.0)
    model.eval()
    batches = [torch.randn(2, 3, 5, 5) * (i + 1) + i for i in range(3)]
    assert recompute_bn_stats(model, iter(batches)) == 3
    assert not model.training and model[1].momentum == 0.1
    with torch.no_grad():
        feats = [model[0](x).double() for x in batches]
    mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats]).mean(0)
    assert torch.allclose(model[1].running_mean.double(), mean, atol=1e-5)
    assert torch.allclose(model[1].running_var.double(), var, rtol=1e-4)
    assert torch.all(model[4].running_mean == 7.0) and torch.all(model[4].running_var == 9.0)  # frozen: untouched
