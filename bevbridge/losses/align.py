"""MTA's alignment objectives (papers/mta.txt Eqs. 3 and 7).

- :func:`squared_l2`: BLA's ``||Phi(q_l) - T(o)||_2^2`` (Eq. 3), summed over the embedding dimensions (the squared
  norm as written) and averaged over the objects.
- :func:`clip_loss`: the symmetric InfoNCE of CLIP (Radford et al. 2021) between two sets of N paired embeddings
  (DCA, Eq. 7): both L2-normalised, logits ``a b^T / tau``, cross-entropy towards the diagonal in both directions,
  averaged. With all embeddings equal every logit is the same, and the loss is exactly ``log N``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["squared_l2", "clip_loss"]


def squared_l2(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean_i ||pred_i - target_i||^2`` over the rows of ``[N, D]`` tensors (0 for N = 0)."""
    if pred.shape != target.shape:
        raise ValueError(f"squared_l2: shapes differ, {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.shape[0] == 0:
        return pred.sum() * 0.0
    return (pred - target).pow(2).sum(-1).mean()


def clip_loss(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """CLIP's contrastive loss between ``a [N, D]`` and ``b [N, D]`` (row i of each is a pair); 0 for N < 2."""
    if a.shape != b.shape:
        raise ValueError(f"clip_loss: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.shape[0] < 2:
        return (a.sum() + b.sum()) * 0.0
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t() / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
