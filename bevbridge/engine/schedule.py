"""Learning-rate (and momentum) schedules as pure functions of the optimizer step.

A schedule has no state but the step, so resuming is exact: the trainer calls :meth:`Schedule.apply` before every
optimizer step with the number of steps already taken. Each group's lr is ``group["base_lr"] x lr_factor(step)``
(``base_lr`` already holds the group's multiplier, engine/optim.py).

- ``cosine``: 0.5 (1 + cos(pi t)) annealing from 1 to ``min_lr_ratio`` over ``total_steps`` (mmcv's
  CosineAnnealing by iteration, the CTAB recipe: peak 4e-4 after 500 warmup iterations).
- ``cyclic``: BEVDet's/RCBEVDet's one-cycle policy (mmcv ``policy='cyclic'``): each of ``cyclic_times`` cycles
  rises by cosine from 1 to ``cyclic_lr_ratio[0]`` over its first ``cyclic_step_ratio_up`` fraction, then falls by
  cosine to ``cyclic_lr_ratio[1]``; beta1 moves the opposite way, from 1 to ``cyclic_momentum_ratio[0]`` and on to
  ``cyclic_momentum_ratio[1]`` (as multiples of the configured beta1).
- ``constant``: 1.

Warmup (any kind): the factor is multiplied by a linear ramp from ``warmup_ratio`` (step 0) to 1 (step
``warmup_steps``), as mmcv's linear warmup, which multiplies the regular lr by the same ramp.
"""

from __future__ import annotations

import math

import torch

from bevbridge.config.schema import ScheduleConfig

__all__ = ["Schedule"]


def _cos_anneal(start: float, end: float, t: float) -> float:
    """Cosine interpolation from ``start`` (t=0) to ``end`` (t=1)."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))


class Schedule:
    def __init__(self, cfg: ScheduleConfig, total_steps: int):
        self.cfg = cfg
        self.total_steps = max(int(total_steps), 1)

    def _warmup(self, step: int) -> float:
        w = self.cfg.warmup_steps
        if w <= 0 or step >= w:
            return 1.0
        return self.cfg.warmup_ratio + (1.0 - self.cfg.warmup_ratio) * step / w

    def _cycle(self, step: int) -> tuple[int, int, int]:
        """(position in the cycle, steps rising, cycle length)."""
        length = max(self.total_steps // self.cfg.cyclic_times, 1)
        up = int(round(self.cfg.cyclic_step_ratio_up * length))
        return min(step, self.total_steps - 1) % length, up, length

    def lr_factor(self, step: int) -> float:
        """Multiplier of each group's base lr before optimizer step number ``step`` (0-based)."""
        kind = self.cfg.kind
        if kind == "constant":
            f = 1.0
        elif kind == "cosine":
            t = min(step, self.total_steps) / self.total_steps
            f = _cos_anneal(1.0, self.cfg.min_lr_ratio, t)
        else:
            pos, up, length = self._cycle(step)
            top, end = self.cfg.cyclic_lr_ratio
            if pos < up:
                f = _cos_anneal(1.0, top, pos / up)
            else:
                f = _cos_anneal(top, end, (pos - up) / max(length - up, 1))
        return f * self._warmup(step)

    def momentum_factor(self, step: int) -> float:
        """Multiplier of beta1 (1 except for the cyclic schedule)."""
        if self.cfg.kind != "cyclic":
            return 1.0
        pos, up, length = self._cycle(step)
        low, end = self.cfg.cyclic_momentum_ratio
        if pos < up:
            return _cos_anneal(1.0, low, pos / up)
        return _cos_anneal(low, end, (pos - up) / max(length - up, 1))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's lr (and beta1) for step ``step``; returns the factor."""
        f = self.lr_factor(step)
        m = self.momentum_factor(step)
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * f
            if "betas" in g:
                g.setdefault("base_beta1", g["betas"][0])
                g["betas"] = (min(g["base_beta1"] * m, 0.9999), g["betas"][1])
        return f

    def state_dict(self) -> dict:
        return {"kind": self.cfg.kind, "total_steps": self.total_steps}
