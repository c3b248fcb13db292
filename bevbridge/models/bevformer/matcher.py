"""Hungarian matching of object queries to ground-truth boxes (DETR; BEVFormer's ``HungarianAssigner3D``).

The cost of assigning query q to box j (BEVFormer-tiny weights; v2 uses a SmoothL1 box cost of weight 0.75):

    C[q, j] = w_cls * (focal_pos(p_q,c_j) - focal_neg(p_q,c_j)) + w_reg * sum_{k<8} rho(b_q,k - g_j,k)

with p = sigmoid(logits), c_j the box's class, focal_pos = -alpha (1-p)^gamma log(p + 1e-12), focal_neg =
-(1-alpha) p^gamma log(1 - p + 1e-12) (mmdet's FocalLossCost), rho the L1 (or SmoothL1) distance between the
first 8 entries of the box codes (velocity excluded), and ``scipy.optimize.linear_sum_assignment`` minimising the
total cost (each box gets one query when there are at least as many queries as boxes).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

__all__ = ["HungarianMatcher", "match_cost"]


def match_cost(cls_logits: torch.Tensor, box_code: torch.Tensor, gt_labels: torch.Tensor, gt_code: torch.Tensor,
               *, cls_weight: float = 2.0, reg_weight: float = 0.25, alpha: float = 0.25, gamma: float = 2.0,
               reg: Literal["l1", "smooth_l1"] = "l1", beta: float = 1.0, reg_dims: int = 8) -> torch.Tensor:
    """``[Q, n]`` assignment costs of ``cls_logits [Q, C]``, ``box_code [Q, >=8]`` against ``gt_labels [n]``,
    ``gt_code [n, >=8]`` (see the module docstring)."""
    up = lambda x: x if x.dtype == torch.float64 else x.float()  # noqa: E731  never half precision
    p = up(cls_logits).sigmoid()
    eps = 1e-12
    neg = -(1 - p + eps).log() * (1 - alpha) * p.pow(gamma)
    pos = -(p + eps).log() * alpha * (1 - p).pow(gamma)
    cost_cls = (pos - neg)[:, gt_labels]
    d = (up(box_code)[:, None, :reg_dims] - up(gt_code)[None, :, :reg_dims]).abs()
    if reg == "smooth_l1":
        d = torch.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)
    return cls_weight * cost_cls + reg_weight * d.sum(-1)


class HungarianMatcher:
    """``matcher(cls_logits [Q, C], box_code [Q, 10], gt_labels [n], gt_code [n, 10]) -> (query_idx [k],
    gt_idx [k])`` (int64, on the inputs' device, sorted by query), k = min(Q, n)."""

    def __init__(self, cls_weight: float = 2.0, reg_weight: float = 0.25, alpha: float = 0.25, gamma: float = 2.0,
                 reg: Literal["l1", "smooth_l1"] = "l1", beta: float = 1.0):
        self.kw = dict(cls_weight=cls_weight, reg_weight=reg_weight, alpha=alpha, gamma=gamma, reg=reg, beta=beta)

    @torch.no_grad()
    def __call__(self, cls_logits: torch.Tensor, box_code: torch.Tensor, gt_labels: torch.Tensor,
                 gt_code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dev = cls_logits.device
        if gt_labels.numel() == 0:
            empty = torch.zeros(0, dtype=torch.long, device=dev)
            return empty, empty
        cost = match_cost(cls_logits, box_code, gt_labels, gt_code, **self.kw)
        cost = torch.nan_to_num(cost, nan=1e8, posinf=1e8, neginf=-1e8).cpu().numpy().astype(np.float64)
        rows, cols = linear_sum_assignment(cost)
        return (torch.as_tensor(rows, dtype=torch.long, device=dev), torch.as_tensor(cols, dtype=torch.long, device=dev))
