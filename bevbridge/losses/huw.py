"""Homoscedastic uncertainty weighting (Kendall et al.), CTAB Eq. 8."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["UncertaintyWeighting"]


class UncertaintyWeighting(nn.Module):
    """``L = sum_t  L_t / (2 sigma_t^2) + log sigma_t`` over the named tasks (CTAB Eq. 8: det and seg).

    The learnable parameter per task is ``log sigma_t`` (initialised to 0, i.e. sigma = 1) and it is clamped to at
    most ``max_log_sigma`` = 1.5 in the forward pass, as the paper states ("log sigma clamped at 1.5"); the paper
    does not state a lower clamp, so ``min_log_sigma`` defaults to None (configurable).
    """

    def __init__(self, tasks: tuple[str, ...] = ("det", "seg"), max_log_sigma: float | None = 1.5,
                 min_log_sigma: float | None = None):
        super().__init__()
        self.tasks = tuple(tasks)
        self.log_sigma = nn.ParameterDict({t: nn.Parameter(torch.zeros(())) for t in self.tasks})
        self.max_log_sigma = max_log_sigma
        self.min_log_sigma = min_log_sigma

    def clamped(self, task: str) -> torch.Tensor:
        return self.log_sigma[task].clamp(min=self.min_log_sigma, max=self.max_log_sigma)

    def forward(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{task: L_t}`` -> ``{"loss_<task>": weighted term incl. its log sigma}``; their sum is Eq. 8."""
        if set(losses) != set(self.tasks):
            raise ValueError(f"UncertaintyWeighting expects losses for {self.tasks}, got {tuple(losses)}")
        out = {}
        for t in self.tasks:
            log_sigma = self.clamped(t)
            out[f"loss_{t}"] = losses[t] * 0.5 * torch.exp(-2 * log_sigma) + log_sigma
        return out

    def sigmas(self) -> dict[str, float]:
        """``{"huw/sigma_<task>": sigma}`` (after the clamp), for logging."""
        return {f"huw/sigma_{t}": float(self.clamped(t).detach().exp()) for t in self.tasks}
