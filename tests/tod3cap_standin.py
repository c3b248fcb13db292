"""A stand-in for BEVFormer-tiny with the detector interface of bevbridge/models/tod3cap/detector.py: small, fast,
differentiable, its outputs shaped like BEVFormer's (BEV [B, C, 50, 50], L decoder layers x Nq queries, 10 class
logits and 10-d box codes per query). Matching pairs GT j with query j (deterministic), so tests know which query
describes which object."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from bevbridge.models.contract import DataNeeds, Prediction
from bevbridge.models.tod3cap.config import CaptionConfig, LMConfig, QFormerConfig
from bevbridge.models.tod3cap.detector import decode_box_codes


class StandInDetector(nn.Module):
    kind = "standin"

    def __init__(self, channels: int = 32, bev_hw: tuple[int, int] = (50, 50), num_query: int = 16, layers: int = 2,
                 num_classes: int = 10, image_size: tuple[int, int] = (36, 64)):
        super().__init__()
        self.embed_dims, self.layers, self.image_size = channels, layers, image_size
        self.bev = nn.Parameter(torch.randn(channels, *bev_hw) * 0.1)
        self.img = nn.Linear(3, channels)
        self.queries = nn.Parameter(torch.randn(num_query, channels))
        self.mix = nn.Linear(channels, channels)
        self.cls = nn.Linear(channels, num_classes)
        self.reg = nn.Linear(channels, 10)

    def data_needs(self) -> DataNeeds:
        return DataNeeds(images=True, image_size=self.image_size, box_range=(-40.0, -40.0, 40.0, 40.0),
                         tasks=("detection",))

    def forward(self, batch) -> dict:
        x = self.img(batch.images.float().mean((1, 3, 4)) / 255.0)  # [B, C]
        bev = self.bev[None] + x[:, :, None, None]
        q = self.queries[None] + x[:, None]
        feats = []
        for _ in range(self.layers):
            q = q + torch.tanh(self.mix(q))
            feats.append(q)
        hs = torch.stack(feats)  # [L, B, Nq, C]
        return {"bev": bev, "det": {"cls_scores": self.cls(hs), "box_codes": self.reg(hs), "query_feats": hs,
                                    "queries_per_group": hs.shape[2]}}

    def match(self, out: dict, batch, layer: int = -1):
        nq = out["det"]["queries_per_group"]
        res = []
        for b in batch.gt_boxes:
            k = min(len(b), nq)
            idx = torch.arange(k, device=b.device)
            res.append((idx, idx))
        return res

    def loss(self, out: dict, batch) -> dict:
        det = out["det"]
        total = det["cls_scores"].new_zeros(())
        for b, (q, g) in enumerate(self.match(out, batch)):
            logits = det["cls_scores"][-1, b]
            target = torch.zeros_like(logits)
            target[q, batch.gt_labels[b][g]] = 1.0
            total = total + F.binary_cross_entropy_with_logits(logits, target)
            if len(q):
                total = total + (det["box_codes"][-1, b, q, :2] - batch.gt_boxes[b][g, :2]).abs().mean() * 0.01
        return {"loss": total, "cls_and_box": total.detach()}

    @torch.no_grad()
    def predict(self, out: dict, batch) -> list[Prediction]:
        det = out["det"]
        scores, labels = det["cls_scores"][-1].sigmoid().max(-1)
        boxes = decode_box_codes(det["box_codes"][-1].float())
        return [Prediction(token=batch.tokens[b], boxes=boxes[b], scores=scores[b], labels=labels[b])
                for b in range(len(batch.tokens))]

    def scalars(self) -> dict[str, float]:
        return {}


@dataclass
class StandInTOD3CapConfig:
    """The keys TOD3CapModel reads, without the BEVFormer detector section."""

    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    det_weight: float = 10.0
    caption_weight: float = 1.0


def small_tod3cap_config(lm_path: str | None, **kw) -> StandInTOD3CapConfig:
    """A captioner small enough for unit tests (the LM is whatever ``lm_path`` holds; None: SmolLM2)."""
    q = QFormerConfig(dim=32, depth=3, heads=4, query_len=4, bev_stride=10,
                      object_token=kw.pop("object_token", "box+query"))
    lm = LMConfig(path=lm_path, adapter=kw.pop("adapter", "prompts"), adapter_layers=kw.pop("adapter_layers", 2),
                  max_caption_tokens=24)
    cap = CaptionConfig(objects_per_sample=kw.pop("objects_per_sample", 3), topk=kw.pop("topk", 4),
                        max_new_tokens=kw.pop("max_new_tokens", 8), temperature=kw.pop("temperature", 0.1))
    return StandInTOD3CapConfig(qformer=q, lm=lm, caption=cap, **kw)


@dataclass
class StandInMTAConfig(StandInTOD3CapConfig):
    """TOD3Cap's keys plus MTA's (recipes/mta/config.py)."""

    bla: "BLAConfig" = None  # type: ignore[assignment]
    dca: "DCAConfig" = None  # type: ignore[assignment]
    bla_weight: float = 1.0
    dca_weight: float = 0.01


def small_mta_config(lm_path: str | None, bla: bool = True, dca: bool = True, layer: int = 2, **kw
                     ) -> StandInMTAConfig:
    from bevbridge.recipes.mta.config import BLAConfig, DCAConfig

    base = small_tod3cap_config(lm_path, **kw)
    return StandInMTAConfig(**{f: getattr(base, f) for f in ("qformer", "lm", "caption", "det_weight",
                                                              "caption_weight")},
                            bla=BLAConfig(enabled=bla, layer=layer), dca=DCAConfig(enabled=dca, num_prompts=4, dim=16))
