"""Two-stage hybrid object queries from perspective proposals (papers/bevformer_v2.txt Sec. 3.4, "Two-Stage Detection
Pipeline"; the public v2 code has ``as_two_stage=False``: this is our reading of the paper, every open choice
documented and configurable in ``TwoStageConfig``).

    per location of every camera: score = max_c sigmoid(cls_c) x sigmoid(centerness) [x sigmoid(conf3d_c)]
    top ``pre_nms`` over all cameras of a sample -> 3D boxes (perspective head decoding, augmented ego frame)
    -> rotated BEV NMS across cameras (class-agnostic: a reference point per object) -> ``num_proposals`` slots:
       boxes kept by NMS with score > ``score_threshold`` first (by score), then the best of the rest
    -> the boxes' 3D centres, normalised over the BEV range (x, y by ``BEVGrid.xy_to_unit``, z over the pillar
       range) = reference points of the proposal queries; query content and positional embedding from
       LayerNorm(Linear(sine embedding of the reference point)) (Deformable DETR's two-stage ``pos_trans``)

The selection runs without gradient (the reference points are detached, as Deformable DETR's two-stage proposals);
the embedding layers train through the decoder. The decoder then refines these references like any other.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bevbridge.geometry import BEVGrid
from bevbridge.models.bevformer.config import TwoStageConfig
from bevbridge.models.bevformer.perspective_loss import PerspectiveLoss
from bevbridge.ops.nms import nms_rotated

__all__ = ["ProposalQueries", "centres_to_reference", "sine_embedding"]


def centres_to_reference(centres: torch.Tensor, grid: BEVGrid, z_range: tuple[float, float]) -> torch.Tensor:
    """``[..., 3]`` metres (augmented ego frame) -> reference points ``[..., 3]`` in [0, 1]: (x, y) through the BEV
    grid (a centre at a cell's centre lands on that cell's reference point, ``unit_cell_centres``), z over the
    pillar range; clamped into the unit cube."""
    zmin, zmax = z_range
    xy = grid.xy_to_unit(centres[..., :2])
    z = (centres[..., 2:3] - zmin) / (zmax - zmin)
    return torch.cat([xy, z], -1).clamp(0.0, 1.0)


def sine_embedding(ref: torch.Tensor, num_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """``[..., k]`` coordinates in [0, 1] -> ``[..., k * num_feats]`` (sin, cos interleaved per frequency), as
    Deformable DETR's ``get_proposal_pos_embed`` (scale 2 pi)."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=ref.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos = ref.float()[..., None] * (2 * math.pi) / dim_t  # [..., k, F]
    pos = torch.stack([pos[..., 0::2].sin(), pos[..., 1::2].cos()], -1).flatten(-2)
    return pos.flatten(-2)


class ProposalQueries(nn.Module):
    """``forward(pers_out, pers_loss, K, sensor2ego, ida, bda, cam_mask) -> {"query_pos", "query" [B, k, C],
    "reference" [B, k, 3], "boxes" [B, k, 9], "scores" [B, k]}`` (see the module docstring)."""

    def __init__(self, cfg: TwoStageConfig, grid: BEVGrid, z_range: tuple[float, float], embed_dims: int):
        super().__init__()
        self.cfg, self.grid, self.z_range, self.C = cfg, grid, tuple(z_range), embed_dims
        self.num_feats = embed_dims // 2
        self.pos_trans = nn.Linear(3 * self.num_feats, 2 * embed_dims)
        self.pos_trans_norm = nn.LayerNorm(2 * embed_dims)

    @torch.no_grad()
    def select(self, out: dict, pers: PerspectiveLoss, K: torch.Tensor, sensor2ego: torch.Tensor, ida: torch.Tensor,
               bda: torch.Tensor, cam_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(boxes [B, k, 9]`` in the augmented ego frame, ``scores [B, k])``, k = ``num_proposals``."""
        cfg = self.cfg
        B, N = K.shape[:2]
        M, Lt, _ = out["cls"].shape
        prob, cls = out["cls"].float().sigmoid().max(-1)  # [M, Lt]
        score = prob * out["ctrness"].float().sigmoid()
        if cfg.use_conf3d:
            k = cls if out["conf"].shape[2] > 1 else torch.zeros_like(cls)
            score = score * torch.gather(out["conf"].float(), 2, k[..., None])[..., 0].sigmoid()
        if cam_mask is not None:
            score = torch.where(cam_mask.reshape(M, 1).bool(), score, torch.full_like(score, -1.0))
        pre = min(max(cfg.pre_nms, cfg.num_proposals), N * Lt)
        if cfg.num_proposals > N * Lt:
            raise ValueError(f"model.two_stage.num_proposals ({cfg.num_proposals}) exceeds the perspective head's "
                             f"{N * Lt} locations per sample")
        top_s, top = score.view(B, N * Lt).topk(pre, dim=1)  # [B, pre]
        m = (torch.arange(B, device=K.device)[:, None] * N + torch.div(top, Lt, rounding_mode="floor")).flatten()
        loc = (top % Lt).flatten()
        f = lambda x: x.reshape(M, *x.shape[2:]).float()  # noqa: E731  [B, N, ...] -> [M, ...]
        bda_m = bda.float()[:, None].expand(B, N, 4, 4).reshape(M, 4, 4)
        fl = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in out.items()}
        parts = pers.parts(fl, m, loc, cls.flatten()[m * Lt + loc], f(K), f(ida))
        boxes = pers.boxes(parts, m, f(K), f(sensor2ego), f(ida), bda_m).view(B, pre, 9)
        boxes = torch.nan_to_num(boxes)
        boxes[..., 3:6] = boxes[..., 3:6].clamp(min=1e-3)
        rank = []
        for b in range(B):  # per sample: NMS needs each sample's own candidate set
            keep = nms_rotated(boxes[b], top_s[b], cfg.nms_threshold)
            first = torch.zeros(pre, dtype=torch.bool, device=K.device)
            first[keep] = True
            first &= top_s[b] > cfg.score_threshold
            rank.append(top_s[b] + 2.0 * first)  # scores <= 1: tier 1 (kept, above threshold) before tier 2
        order = torch.stack(rank).argsort(dim=1, descending=True, stable=True)[:, : cfg.num_proposals]
        return torch.gather(boxes, 1, order[..., None].expand(-1, -1, 9)), torch.gather(top_s, 1, order)

    def embed(self, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference points ``[B, k, 3]`` -> ``(query_pos, query)`` each ``[B, k, C]``."""
        e = self.pos_trans_norm(self.pos_trans(sine_embedding(reference, self.num_feats)))
        return e[..., : self.C], e[..., self.C:]

    def forward(self, out: dict, pers: PerspectiveLoss, K, sensor2ego, ida, bda, cam_mask) -> dict:
        # the selection is geometry (determinants, inverses, decoding through K and sensor2ego): float32 whatever
        # the autocast around the forward (under bf16 autocast, torch.linalg.det of a matmul's bf16 output raised)
        with torch.autocast(device_type=K.device.type, enabled=False):
            boxes, scores = self.select(out, pers, K, sensor2ego, ida, bda, cam_mask)
        ref = centres_to_reference(boxes[..., :3], self.grid, self.z_range)
        pos, query = self.embed(ref)
        return {"query_pos": pos, "query": query, "reference": ref, "boxes": boxes, "scores": scores}
