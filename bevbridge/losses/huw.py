"""Homoscedastic uncertainty weighting (Kendall et al.), CTAB Eq. 8."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["UncertaintyWeighting"]


class UncertaintyWeighting(nn.Module):
    """``L = sum_t  L_t / (2 sigma_t^2) + log sigma_t`` over the named tasks (CTAB Eq. 8: det and seg).

    The learnable parameter per task is ``log sigma_t`` (initialised to 0, i.e. sigma = 1). The paper clamps it at
    ``max_log_sigma`` = 1.5 ("log sigma clamped at 1.5") and states no lower bound (``min_log_sigma`` None,
    configurable). A clamp inside the loss would make the gradient exactly zero once log sigma passed 1.5, so it could
    never come back down when the task's loss later fell (it has no weight decay either). We bound it by projection
    instead: each forward pass first clamps the parameter itself into range (in place, without gradient; the same as
    clamping it after every optimizer step), then uses it as is. At the bound the gradient is the true one, so log
    sigma leaves the bound as soon as the loss makes that worthwhile (projected gradient descent).
    """

    def __init__(self, tasks: tuple[str, ...] = ("det", "seg"), max_log_sigma: float | None = 1.5,
                 min_log_sigma: float | None = None):
        super().__init__()
        self.tasks = tuple(tasks)
        self.log_sigma = nn.ParameterDict({t: nn.Parameter(torch.zeros(())) for t in self.tasks})
        self.max_log_sigma = max_log_sigma
        self.min_log_sigma = min_log_sigma

    def project_(self) -> None:
        """Clamp every log sigma into ``[min_log_sigma, max_log_sigma]`` in place (no gradient)."""
        if self.min_log_sigma is None and self.max_log_sigma is None:
            return
        with torch.no_grad():
            for p in self.log_sigma.values():
                p.clamp_(min=self.min_log_sigma, max=self.max_log_sigma)

    def clamped(self, task: str) -> torch.Tensor:
        """``log sigma_task`` within the bounds (a value; the parameter may lie outside until the next forward)."""
        return self.log_sigma[task].clamp(min=self.min_log_sigma, max=self.max_log_sigma)

    def forward(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{task: L_t}`` -> ``{"loss_<task>": weighted term incl. its log sigma}``; their sum is Eq. 8."""
        if set(losses) != set(self.tasks):
            raise ValueError(f"UncertaintyWeighting expects losses for {self.tasks}, got {tuple(losses)}")
        self.project_()
        out = {}
        for t in self.tasks:
            log_sigma = self.log_sigma[t]
            out[f"loss_{t}"] = losses[t] * 0.5 * torch.exp(-2 * log_sigma) + log_sigma
        return out

    def sigmas(self) -> dict[str, float]:
        """``{"huw/sigma_<task>": sigma}`` (within the bounds), for logging."""
        return {f"huw/sigma_{t}": float(self.clamped(t).detach().exp()) for t in self.tasks}
