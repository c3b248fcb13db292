"""BEVFormer's temporal self-attention (TSA, Eq. 5 of BEVFormer; ``TemporalSelfAttention``).

    TSA(Q_p, {Q, B'_{t-1}}) = 1/2 * sum_{V in {B'_{t-1}, Q}} DeformAttn(Q_p, p, V)

B'_{t-1} is the previous BEV aligned to the current frame by ego motion (``temporal_align.warp_bev``). The sampling
offsets and attention weights of both members of the queue come from one Linear on ``[B'_{t-1}(p) ; Q_p + pos_p]``
(2C inputs), the softmax runs over each member's L*P points, the two results are averaged, projected, and added to
the query (dropout 0.1). Without history (the first frame of a scene) the queue is {Q, Q} (the current layer's
query twice), as released. Parameters at C = 256, 8 heads, 1 level, 4 points: 230,080.

Deviations from the released code, documented: the offsets read ``[B'_{t-1} ; Q]`` of the *same* sample (the
released ``torch.cat([value[:bs], query])`` takes the first ``bs`` entries of a sample-interleaved queue, which is
right only for batch size 1); both members use the cell centres as reference points because B' is warped whole
(the released code rotates B' and shifts the reference points of the history member instead).
"""

from __future__ import annotations

import torch
from torch import nn

from bevbridge.geometry import unit_cell_centres
from bevbridge.models.bevformer.sca import _msda_init
from bevbridge.ops.msda import ms_deform_attn

__all__ = ["TemporalSelfAttention"]


class TemporalSelfAttention(nn.Module):
    """``forward(query [B, HW, C], history [B, HW, C] | None, has_history [B] bool, query_pos [B, HW, C],
    bev_query [B, HW, C]) -> [B, HW, C]``: the queue is {history, bev_query} where ``has_history``, else
    {query, query}; ``bev_query`` is the encoder's input (the released code pairs B' with it in every layer)."""

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, num_points: int = 4, bev_hw: tuple[int, int] = (50, 50),
                 dropout: float = 0.1, num_bev_queue: int = 2):
        super().__init__()
        if num_bev_queue != 2:
            raise ValueError("TemporalSelfAttention: the queue is {B'_{t-1}, Q} (num_bev_queue = 2)")
        self.h, self.P, self.Qn, self.C = num_heads, num_points, num_bev_queue, embed_dims
        self.bev_hw = tuple(bev_hw)
        self.sampling_offsets = nn.Linear(embed_dims * num_bev_queue, num_bev_queue * num_heads * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims * num_bev_queue, num_bev_queue * num_heads * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.dropout = nn.Dropout(dropout)
        _msda_init(self.sampling_offsets, self.attention_weights, num_heads, num_bev_queue, num_points)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        H, W = self.bev_hw
        self.register_buffer("ref_2d", unit_cell_centres(H, W, dtype=torch.float64), persistent=False)  # [HW, 2]
        self.register_buffer("spatial_shapes", torch.tensor([[H, W]]), persistent=False)
        self.register_buffer("level_start_index", torch.tensor([0]), persistent=False)

    def forward(self, query: torch.Tensor, history: torch.Tensor | None, has_history: torch.Tensor | None,
                query_pos: torch.Tensor | None = None, bev_query: torch.Tensor | None = None) -> torch.Tensor:
        B, HW, C = query.shape
        h, P, Qn = self.h, self.P, self.Qn
        if HW != self.ref_2d.shape[0]:
            raise ValueError(f"TSA built for a {self.bev_hw} BEV got {HW} queries")
        identity = query
        if history is None or bev_query is None:
            queue = torch.stack([query, query], 1)
        else:
            sel = has_history.view(B, 1, 1, 1).bool()
            queue = torch.where(sel, torch.stack([history, bev_query], 1), torch.stack([query, query], 1))
        q = query if query_pos is None else query + query_pos
        mix = torch.cat([queue[:, 0], q], -1)  # [B, HW, 2C]
        value = self.value_proj(queue).view(B * Qn, HW, h, C // h)
        off = self.sampling_offsets(mix).view(B, HW, h, Qn, 1, P, 2)
        w = self.attention_weights(mix).view(B, HW, h, Qn, P).softmax(-1).view(B, HW, h, Qn, 1, P)
        off = off.permute(0, 3, 1, 2, 4, 5, 6).reshape(B * Qn, HW, h, 1, P, 2)
        w = w.permute(0, 3, 1, 2, 4, 5).reshape(B * Qn, HW, h, 1, P)
        H, W = self.bev_hw
        loc = self.ref_2d.to(off.dtype)[None, :, None, None, None, :] + off / off.new_tensor([W, H])
        out = ms_deform_attn(value, self.spatial_shapes, self.level_start_index, loc, w)  # [B*Qn, HW, C]
        out = out.view(B, Qn, HW, C).mean(1)
        return self.dropout(self.output_proj(out)) + identity
