"""BEVFormer's 3D DETR head (``BEVFormerHead``): object queries, the decoder's branches, Hungarian loss, NMS-free decoding.

Object queries: ``query_embedding [groups * num_query, 2C]`` split into (positional, content) halves; their initial
reference points are ``sigmoid(Linear(C, 3)(positional))`` in the unit cube of the BEV range (x, y over the grid,
z over the encoder's z range). Per decoder layer l a classification branch ((Linear, LayerNorm, ReLU) x 2 +
Linear(C, 10)) and a regression branch ((Linear, ReLU) x 2 + Linear(C, 10)), separate per layer with box
refinement. The box code (metres, DESIGN.md frame)::

    (cx, cy, log l, log w, cz, log h, sin yaw, cos yaw, vx, vy)
    cx, cy = grid.unit_to_xy(sigmoid(delta[0:2] + logit(ref_xy)));  cz = zmin + sigmoid(delta[4] + logit(ref_z)) * (zmax - zmin)

Loss per decoder layer (auxiliary loss on every layer, summed): each group's queries are matched to the boxes on their
own (``matcher.py``); sigmoid focal loss (alpha 0.25, gamma 2) over all queries x classes and L1 (tiny) or SmoothL1
(v2) on the matched codes times ``code_weights`` (velocity 0.2), both summed and divided by the number of matched
queries (at least 1; averaged over processes as ``sync_cls_avg_factor``), then weighted (tiny: 2.0 and 0.25). Rows
of a target with a non-finite entry do not count in the box loss (as released). With group DETR the groups' losses
are averaged. Decoding (``NMSFreeCoder``): top ``max_num`` (query, class) scores of the last layer, first group.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.distributed as dist
from torch import nn

from bevbridge.geometry import BEVGrid
from bevbridge.losses.focal import sigmoid_focal_loss
from bevbridge.models.bevformer.config import DecoderConfig, DETRHeadConfig
from bevbridge.models.bevformer.decoder import BEVDecoder, inverse_sigmoid
from bevbridge.models.bevformer.matcher import HungarianMatcher

__all__ = ["encode_boxes", "decode_boxes", "DETRHead"]

CODE_SIZE = 10


def _up(x: torch.Tensor) -> torch.Tensor:
    """float32 (or float64 when given): losses never run in half precision."""
    return x if x.dtype == torch.float64 else x.float()


def encode_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """``[..., 9]`` boxes (x, y, z, l, w, h, yaw, vx, vy) -> ``[..., 10]`` codes (BEVFormer's normalize_bbox)."""
    x, y, z, l, w, h, yaw, vx, vy = boxes.unbind(-1)
    return torch.stack([x, y, l.log(), w.log(), z, h.log(), yaw.sin(), yaw.cos(), vx, vy], -1)


def decode_boxes(code: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`encode_boxes` (yaw from atan2 of the sine and cosine entries)."""
    cx, cy, ll, lw, cz, lh, s, c, vx, vy = code.unbind(-1)
    return torch.stack([cx, cy, cz, ll.exp(), lw.exp(), lh.exp(), torch.atan2(s, c), vx, vy], -1)


def _branches(C: int, num_classes: int, num_fcs: int) -> tuple[nn.Module, nn.Module]:
    cls: list[nn.Module] = []
    reg: list[nn.Module] = []
    for _ in range(num_fcs):
        cls += [nn.Linear(C, C), nn.LayerNorm(C), nn.ReLU(inplace=True)]
        reg += [nn.Linear(C, C), nn.ReLU()]
    cls.append(nn.Linear(C, num_classes))
    reg.append(nn.Linear(C, CODE_SIZE))
    nn.init.constant_(cls[-1].bias, -math.log((1 - 0.01) / 0.01))  # prior probability 0.01
    return nn.Sequential(*cls), nn.Sequential(*reg)


class DETRHead(nn.Module):
    """Queries + decoder branches + loss + decoding (see the module docstring).

    Args:
        grid: the BEV grid (x, y range of the unit square). ``z_range``: (zmin, zmax) of the unit z.
        cfg: the head section; ``dec``: the decoder section (layers, queries, groups). ``embed_dims``: C.
        num_classes: 10 (DETECTION_CLASSES).
    """

    def __init__(self, grid: BEVGrid, z_range: tuple[float, float], cfg: DETRHeadConfig, dec: DecoderConfig,
                 embed_dims: int, num_classes: int = 10):
        super().__init__()
        self.grid, self.z_range, self.cfg = grid, tuple(z_range), cfg
        self.num_query, self.groups, self.num_classes, self.C = dec.num_query, dec.groups, num_classes, embed_dims
        self.query_embedding = nn.Embedding(dec.num_query * dec.groups, 2 * embed_dims)
        self.reference_points = nn.Linear(embed_dims, 3)
        nn.init.xavier_uniform_(self.reference_points.weight)
        nn.init.zeros_(self.reference_points.bias)
        cls, reg = _branches(embed_dims, num_classes, cfg.num_reg_fcs)
        L = dec.layers
        if cfg.box_refine:
            self.cls_branches = nn.ModuleList(copy.deepcopy(cls) for _ in range(L))
            self.reg_branches = nn.ModuleList(copy.deepcopy(reg) for _ in range(L))
        else:  # one branch shared by every layer (the released code's non-refine setting)
            self.cls_branches = nn.ModuleList([cls] * L)
            self.reg_branches = nn.ModuleList([reg] * L)
        self.register_buffer("code_weights", torch.tensor(cfg.code_weights, dtype=torch.float64), persistent=False)
        if len(cfg.code_weights) != CODE_SIZE:
            raise ValueError(f"model.head.code_weights needs {CODE_SIZE} entries, got {len(cfg.code_weights)}")
        self.matcher = HungarianMatcher(cfg.cost_cls, cfg.cost_reg, cfg.focal_alpha, cfg.focal_gamma,
                                        cfg.bbox_loss, cfg.smooth_l1_beta)

    # ------------------------------------------------------------------------------------------------ forward
    def forward(self, bev: torch.Tensor, decoder: BEVDecoder, proposals: dict | None = None) -> dict:
        """``bev [B, H*W, C]`` -> ``{"cls_scores" [L, B, Nq, 10], "box_codes" [L, B, Nq, 10] (metres),
        "query_feats" [L, B, Nq, C] (decoder outputs), "references" [L, B, Nq, 3], "groups", "queries_per_group"}``.

        ``proposals``: ``{"query_pos", "query" [B, K, C], "reference" [B, K, 3]}`` placed before the learned queries
        of every group (two-stage hybrid queries). Training uses every group, evaluation the first.
        """
        B = bev.shape[0]
        G = self.groups if self.training else 1
        emb = self.query_embedding.weight[: G * self.num_query].clone()  # not a view of the parameter (see BEVQueries)
        pos, content = emb.split(self.C, -1)
        ref = self.reference_points(pos).sigmoid()
        pos, content, ref = (t.view(1, G, self.num_query, -1).expand(B, -1, -1, -1) for t in (pos, content, ref))
        if proposals is not None:
            def cat(extra: torch.Tensor, learned: torch.Tensor) -> torch.Tensor:
                return torch.cat([extra[:, None].expand(-1, G, -1, -1).to(learned.dtype), learned], 2)
            pos, content = cat(proposals["query_pos"], pos), cat(proposals["query"], content)
            ref = cat(proposals["reference"], ref)
        per_group = pos.shape[2]
        pos, content, ref = (t.reshape(B, G * per_group, -1) for t in (pos, content, ref))
        hs, refs = decoder(content, pos.to(bev.dtype), ref, bev, self.grid.shape,
                           self.reg_branches if self.cfg.box_refine else None, G)
        cls = torch.stack([self.cls_branches[i](hs[i]) for i in range(len(hs))])
        delta = torch.stack([self.reg_branches[i](hs[i]) for i in range(len(hs))])
        return {"cls_scores": cls, "box_codes": self._to_metres(delta, refs), "query_feats": hs, "references": refs,
                "groups": G, "queries_per_group": per_group}

    def _to_metres(self, delta: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Regression outputs relative to the reference points -> box codes in metres."""
        xy = self.grid.unit_to_xy((delta[..., 0:2] + inverse_sigmoid(ref[..., 0:2].to(delta.dtype))).sigmoid())
        zmin, zmax = self.z_range
        z = (delta[..., 4:5] + inverse_sigmoid(ref[..., 2:3].to(delta.dtype))).sigmoid() * (zmax - zmin) + zmin
        return torch.cat([xy, delta[..., 2:4], z, delta[..., 5:]], -1)

    # --------------------------------------------------------------------------------------------------- loss
    def assign(self, out: dict, gt_boxes: list[torch.Tensor], gt_labels: list[torch.Tensor], layer: int = -1,
               group: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Hungarian matching of one decoder layer's queries of one group: per sample ``(query_idx, gt_idx)``,
        query indices into the sample's ``Nq`` queries (``out["query_feats"][layer, b, query_idx]`` are the matched
        queries' embeddings; ``gt_idx`` indexes ``gt_boxes[b]``)."""
        n = out["queries_per_group"]
        sl = slice(group * n, (group + 1) * n)
        result = []
        for b, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels)):
            qi, gi = self.matcher(out["cls_scores"][layer, b, sl], out["box_codes"][layer, b, sl], labels,
                                  encode_boxes(_up(boxes)))
            result.append((qi + group * n, gi))
        return result

    def loss(self, out: dict, gt_boxes: list[torch.Tensor], gt_labels: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"cls": weighted focal loss, "bbox": weighted box loss}`` summed over decoder layers, plus
        ``"cls_last"``/``"bbox_last"`` (the last layer's, detached) and ``"matches"`` is not returned here: see
        :meth:`assign`."""
        cfg = self.cfg
        L, B, Nq, C = out["cls_scores"].shape
        G = out["groups"]
        num_pos = sum(len(b) for b in gt_boxes) * G
        avg = torch.tensor(float(num_pos), device=out["cls_scores"].device, dtype=_up(out["cls_scores"]).dtype)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(avg)
            avg = avg / dist.get_world_size()
        avg = avg.clamp(min=1.0)
        gt_codes = [encode_boxes(_up(b)) for b in gt_boxes]
        total_cls = total_box = out["cls_scores"].new_zeros(())
        per_layer = []
        for layer in range(L):
            q_idx, b_idx, lab, tgt = [], [], [], []
            for g in range(G):
                for b, (qi, gi) in enumerate(self.assign(out, gt_boxes, gt_labels, layer, g)):
                    q_idx.append(qi), b_idx.append(torch.full_like(qi, b))
                    lab.append(gt_labels[b][gi]), tgt.append(gt_codes[b][gi])
            qi, bi, labels = torch.cat(q_idx), torch.cat(b_idx), torch.cat(lab).long()
            logits = _up(out["cls_scores"][layer])
            target = torch.zeros_like(logits)
            target[bi, qi, labels] = 1.0
            l_cls = sigmoid_focal_loss(logits, target, cfg.focal_alpha, cfg.focal_gamma,
                                       reduction="sum") / avg
            if len(bi):
                pred = _up(out["box_codes"][layer][bi, qi])
                tgt = torch.cat(tgt).to(pred.dtype)
                ok = torch.isfinite(tgt).all(-1, keepdim=True).float()
                diff = (pred - torch.nan_to_num(tgt)).abs()
                if cfg.bbox_loss == "smooth_l1":
                    beta = cfg.smooth_l1_beta
                    diff = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
                l_box = (diff * self.code_weights.to(diff.dtype) * ok).sum() / avg
            else:
                l_box = out["box_codes"][layer].sum() * 0
            l_cls, l_box = torch.nan_to_num(l_cls), torch.nan_to_num(l_box)
            per_layer.append((l_cls.detach(), l_box.detach()))
            total_cls = total_cls + cfg.cls_weight * l_cls
            total_box = total_box + cfg.bbox_weight * l_box
        return {"cls": total_cls, "bbox": total_box, "cls_last": per_layer[-1][0], "bbox_last": per_layer[-1][1]}

    # ------------------------------------------------------------------------------------------------ decoding
    @torch.no_grad()
    def predict(self, out: dict) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per sample ``(boxes [k, 9], scores [k], labels [k])`` from the last layer's first group, by score."""
        cfg = self.cfg
        n = out["queries_per_group"]
        cls = out["cls_scores"][-1, :, :n].float().sigmoid()  # [B, n, C]
        codes = out["box_codes"][-1, :, :n].float()
        results = []
        for b in range(cls.shape[0]):
            k = min(cfg.max_num, cls[b].numel())
            scores, idx = cls[b].flatten().topk(k)
            labels = idx % self.num_classes
            boxes = decode_boxes(codes[b][torch.div(idx, self.num_classes, rounding_mode="floor")])
            keep = torch.ones_like(scores, dtype=torch.bool)
            if cfg.score_threshold is not None:
                keep &= scores > cfg.score_threshold
            if cfg.post_center_range:
                r = boxes.new_tensor(cfg.post_center_range)
                keep &= ((boxes[:, :3] >= r[:3]) & (boxes[:, :3] <= r[3:])).all(-1)
            results.append((boxes[keep], scores[keep], labels[keep]))
        return results

