"""MTA's two training-only alignment heads (papers/mta.txt Secs. 3.2 and 3.3).

BLA, BEV-language alignment (Eq. 3): the Q-Former's object token after block l (of L = 8; l = 4, "the middle layer",
Table 5) goes through a trainable MLP Phi^Omega into the text encoder's space and is pulled towards the frozen text
embedding T(o) of the object's ground-truth caption: ``L_BLA = mean_objects ||Phi(q_l) - T(o)||_2^2``
(bevbridge/losses/align.py). The paper's T is a CLIP text encoder; ours defaults to MiniLM
(bevbridge/models/language/text_encoder.py), whose embeddings are unit vectors like CLIP's normalised ones.

DCA, detection-captioning alignment (Eqs. 4-7): N learnable prompt tokens P [N, D] form a shared space.
- Detection side (Eqs. 4-5): the matched query's class output (sigmoid scores, [K]) and box output (its 10-d box code,
  scaled to about unit range by :data:`BOX_CODE_SCALE`) are projected by MLPs Phi^cls, Phi^box to D/2 each and
  concatenated, ``x_det = [Phi^cls(c), Phi^box(b)] [D]``, then attention-pooled over the prompts:
  ``p_det = softmax(x_det P^T) P``.
- Caption side (Eq. 6): the LM's teacher-forced caption logits ``[T, V]`` become one vector by taking the softmax
  over the vocabulary at each caption position, averaging over the caption's tokens (EOS included, padding not), and
  mapping the expected token distribution through the LM's frozen input embedding matrix ``E [V, H]`` (the expected
  token embedding; linear, so the mean can be taken first): ``x_cap = Phi^cap(mean_t softmax(theta_t) E)``, an MLP
  H -> D; pooled the same way, ``p_cap = softmax(x_cap P^T) P``.
- Eq. 7: ``L_DCA = CLIP(p_det, p_cap)`` over the batch's captioned objects (temperature tau).

N, D and tau are not in the paper: N = 16 prompts, D = 256, tau = 0.07 (CLIP's initial temperature), all configurable.
Gradients of DCA reach the detector's class and box branches, the Q-Former/adapters through the caption logits, and
the prompts and projections; none of this exists at inference (the deployed model is TOD3Cap).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BLAHead", "DCAHead", "attention_pool", "BOX_CODE_SCALE"]

# x, y, log l, log w, z, log h, sin, cos, vx, vy: metres / 50, z / 5, velocities / 10 -> about unit range
BOX_CODE_SCALE = (50.0, 50.0, 1.0, 1.0, 5.0, 1.0, 1.0, 1.0, 10.0, 10.0)


def _mlp(i: int, hidden: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, hidden), nn.GELU(), nn.Linear(hidden, o))


def attention_pool(x: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """Eqs. 5-6: ``softmax(x P^T) P`` for ``x [N, D]``, ``P [M, D]`` (softmax over the M prompts) -> ``[N, D]``."""
    return torch.softmax(x @ prompts.t(), dim=-1) @ prompts


class BLAHead(nn.Module):
    """Phi^Omega of Eq. 3: ``hidden [L, N, D]`` (object token after each Q-Former block) -> ``[N, text_dim]`` from
    block ``layer`` (1-based).

    The MLP starts with a LayerNorm and its last layer is zero-initialised (choices; the paper says only "an MLP"):
    the Q-Former's residual stream is not normalised (TOD3Cap's box token carries metres, tens in size), and without
    these the first BLA losses were ~800 (sum over 384 dimensions) against ~150 for 10 L_det, so clipping scaled the
    detector's gradients down for the first steps. So L_BLA starts at ||T(o)||^2 = 1 (unit text embeddings).
    """

    def __init__(self, dim: int, text_dim: int, layer: int, depth: int):
        super().__init__()
        if not 1 <= layer <= depth:
            raise ValueError(f"model.bla.layer must lie in [1, {depth}] (the Q-Former's blocks), got {layer}")
        self.layer = layer
        self.mlp = nn.Sequential(nn.LayerNorm(dim), *_mlp(dim, dim, text_dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mlp(hidden[self.layer - 1])


class DCAHead(nn.Module):
    """Eqs. 4-6 (see the module docstring). ``forward(cls_logits [N, K], box_code [N, 10], cap_logits [N, T, V],
    cap_mask [N, T], embedding [V, H]) -> (p_det [N, D], p_cap [N, D])``."""

    def __init__(self, num_classes: int, lm_hidden: int, num_prompts: int, dim: int):
        super().__init__()
        self.prompts = nn.Parameter(torch.randn(num_prompts, dim) * dim ** -0.5)
        self.cls_proj = _mlp(num_classes, dim, dim // 2)
        self.box_proj = _mlp(len(BOX_CODE_SCALE), dim, dim - dim // 2)
        self.cap_proj = _mlp(lm_hidden, dim, dim)
        self.register_buffer("box_scale", torch.tensor(BOX_CODE_SCALE), persistent=False)

    def detection(self, cls_logits: torch.Tensor, box_code: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.cls_proj(cls_logits.sigmoid()), self.box_proj(box_code / self.box_scale)], -1)
        return attention_pool(x, self.prompts)

    def caption(self, cap_logits: torch.Tensor, cap_mask: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        m = cap_mask.to(cap_logits.dtype).unsqueeze(-1)
        probs = (torch.softmax(cap_logits, -1) * m).sum(1) / m.sum(1).clamp(min=1.0)  # [N, V]
        x = self.cap_proj(probs @ embedding.to(probs.dtype))
        return attention_pool(x, self.prompts)

    def forward(self, cls_logits, box_code, cap_logits, cap_mask, embedding):
        return self.detection(cls_logits, box_code), self.caption(cap_logits, cap_mask, embedding)
