"""BridgeTA's distillation losses (papers/bridgeta.txt): the per-level distance (Eq. 8), the dual teacher-TA /
TA-student path with its optimal weight (Eqs. 5-7, used by Eqs. 9-11) and the Bernoulli KL of the auxiliary
logit terms (Eq. 12).

Every level X (feature, decoded, logit) compares tensors ``[B, C_X, H_X, W_X]`` of equal shape.

Dual path. With ``a = ||R_S - R_TA||``, ``b = ||R_TA - R_T||``, Eq. 6 ``f(eps) = (1 + eps) a^2 + (1 + 1/eps) b^2``
is smallest at ``eps* = b / a`` (Eq. 7), where ``f(eps*) = (a + b)^2``: the tightest Young bound on
``||R_S - R_T||^2``. Because ``f'(eps*) = 0``, the gradient of ``f(eps*(theta), theta)`` equals that of
``f(eps, theta)`` with eps held at eps*: eps* is computed without gradient (``optimal_eps``), which changes nothing
and avoids differentiating ``b / a`` (unbounded at ``a = 0``). a^2 and b^2 are the level's Eq. 8 losses; any common
normalisation (per cell, per batch) cancels in b / a.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["level_l2", "optimal_eps", "dual_path", "bernoulli_kl", "EPS_RANGE"]

# eps* is kept in this range so the loss stays finite when one path's distance is exactly 0 (then the other path's
# term is kept at weight 1 + 1e-6; the exact limit is weight 1).
EPS_RANGE = (1e-6, 1e6)


def level_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Eq. 8: ``1 / (H W) * sum_ij ||a_ij - b_ij||^2``, the squared L2 over channels of each cell averaged over the
    H x W cells (NOT a mean over channels too), averaged over the batch. ``a, b [B, C, H, W]`` -> scalar."""
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"Eq. 8 compares [B, C, H, W] tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return (a - b).pow(2).sum(1).mean()


def optimal_eps(l_ta2s: torch.Tensor, l_t2ta: torch.Tensor) -> torch.Tensor:
    """Eq. 7: ``eps* = b / a = sqrt(L_t2ta / L_ta2s)``, without gradient, clamped to :data:`EPS_RANGE`."""
    a2 = l_ta2s.detach().double().clamp(min=1e-300)
    return (l_t2ta.detach().double() / a2).sqrt().clamp(*EPS_RANGE).to(l_ta2s.dtype)


def dual_path(l_ta2s: torch.Tensor, l_t2ta: torch.Tensor, eps: float | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. 9-11 (the right side of Eq. 5): ``(1 + eps) L_ta2s + (1 + 1/eps) L_t2ta`` and the eps used.

    ``eps=None``: eps* of Eq. 7 (then the loss equals ``(sqrt(L_ta2s) + sqrt(L_t2ta))^2``); a number: that fixed
    eps (the ablation of Fig. 5).
    """
    if eps is None:
        e = optimal_eps(l_ta2s, l_t2ta)
    else:
        if not eps > 0:
            raise ValueError(f"the dual-path weight eps must be > 0 (Eq. 4), got {eps}")
        e = l_ta2s.new_tensor(float(eps))
    return (1 + e) * l_ta2s + (1 + 1 / e) * l_t2ta, e


def bernoulli_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 12's ``KL(P || Q)`` for per-pixel sigmoid logits: each (class, cell) is a Bernoulli variable, so
    ``KL = p log(p / q) + (1 - p) log((1 - p) / (1 - q))`` with ``p = sigmoid(p_logits)``, ``q = sigmoid(q_logits)``;
    summed over classes, averaged over cells and batch (as Eq. 8 treats channels). In Eq. 12 P is the head's output on
    its own model's features (the target) and Q the same head's output on the student's. Computed from log-sigmoids,
    so it is finite for any logits. ``[B, N_c, H, W]`` each -> scalar."""
    if p_logits.shape != q_logits.shape:
        raise ValueError(f"KL between logits of different shapes {tuple(p_logits.shape)}, {tuple(q_logits.shape)}")
    p = p_logits.sigmoid()
    kl = p * (F.logsigmoid(p_logits) - F.logsigmoid(q_logits)) + \
        (1 - p) * (F.logsigmoid(-p_logits) - F.logsigmoid(-q_logits))
    return kl.sum(1).mean()
