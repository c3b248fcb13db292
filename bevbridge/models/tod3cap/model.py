"""TOD3Cap (papers/mta.txt Sec. 3.1; MTA's baseline): BEVFormer-tiny detection + dense captioning of its objects.

    images --BEVFormer-tiny (the detector)--> BEV [B, C, H, W], decoder queries, boxes, scores     (detector.py)
    training: Hungarian-matched queries, up to 8 per sample --CaptionHead--> L_LM on their GT captions (caption_head.py)
    inference: the top-64 (query, class) detections --CaptionHead, batched generation--> one caption each
    loss = alpha * L_det + beta * L_LM      (MTA Eq. 8 without its alignment terms; alpha, beta = 10, 1)

TOD3Cap's staged schedule is three configs over this one model (configs/mta/): detection only (BEVFormer-tiny's own
config), captioning only (``model.freeze: [detector]``, ``det_weight: 0``: the detector is frozen and its loss not
computed), then joint. ``predict`` returns the detector's own detections (so detection metrics are the detector's)
plus the captioned top-k boxes in ``Prediction.caption_boxes`` with ``Prediction.captions``.
"""

from __future__ import annotations

import zlib

import torch
from torch import nn

from bevbridge.data.batch import Batch
from bevbridge.models.contract import DataNeeds, Prediction
from bevbridge.models.tod3cap.caption_head import CaptionHead, caption_loss
from bevbridge.models.tod3cap.detector import decode_box_codes, gather_objects, matched_objects, top_objects

__all__ = ["TOD3CapModel"]


class TOD3CapModel(nn.Module):
    """See the module docstring; follows bevbridge/models/contract.py.

    Args:
        cfg: the ``model`` section (TOD3CapConfig). ``detector``: the detector module; None builds BEVFormer from
        ``cfg.detector`` (tests pass a stand-in with the same interface, bevbridge/models/tod3cap/detector.py).
    """

    kind = "tod3cap"

    def __init__(self, cfg, detector: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        if detector is None:
            from bevbridge.models.bevformer.model import BEVFormerModel

            detector = BEVFormerModel(cfg.detector)
        self.detector = detector
        C = detector.cfg.encoder.embed_dims if hasattr(detector, "cfg") else detector.embed_dims
        self.caption_head = CaptionHead(cfg.qformer, cfg.lm, cfg.caption, bev_channels=C, query_channels=C)
        self.greedy = False  # eval-time decoding: model.caption's sampling, or greedy when True

    def data_needs(self) -> DataNeeds:
        from dataclasses import replace

        return replace(self.detector.data_needs(), captions=True, tasks=("detection", "captioning"))

    # ------------------------------------------------------------------------------------------------ forward
    def forward(self, batch: Batch) -> dict:
        """The detector's outputs; in training also ``"cap"``: the matched objects, their Q-Former states and the
        LM's teacher-forced logits on their ground-truth captions."""
        out = self.detector(batch)
        if self.training:
            out["cap"] = self.caption_matched(out, batch)
        return out

    def caption_matched(self, out: dict, batch: Batch) -> dict:
        if batch.captions is None:
            raise ValueError("TOD3Cap training needs ground-truth captions: the batch has none (data.captions)")
        with torch.no_grad():
            matches = self.detector.match(out, batch)
        objs = matched_objects(matches, self.cfg.caption.objects_per_sample)
        cap: dict = {"sample": objs.sample, "query": objs.query, "gt": objs.gt}
        if len(objs) == 0:
            return cap
        emb = gather_objects(out["det"], objs)
        visual, hidden = self.caption_head.encode(out["bev"], emb["box_code"], emb["query"], objs.sample)
        captions = [batch.captions[b][g] for b, g in zip(objs.sample.tolist(), objs.gt.tolist())]
        cap.update(self.caption_head.teacher_forced(visual, captions), hidden=hidden, captions=captions)
        return cap

    # --------------------------------------------------------------------------------------------------- loss
    def loss(self, outputs: dict, batch: Batch) -> dict[str, torch.Tensor]:
        """``alpha * L_det + beta * L_LM`` (``det_weight``, ``caption_weight``); with ``det_weight`` 0 the detection
        loss is not computed (the captioning stage)."""
        cfg = self.cfg
        terms: dict[str, torch.Tensor] = {}
        total = outputs["bev"].new_zeros((), dtype=torch.float32)
        if cfg.det_weight > 0:
            det = self.detector.loss(outputs, batch)
            total = total + cfg.det_weight * det["loss"]
            terms["loss_det"] = det["loss"].detach()
            terms.update({f"det/{k}": v.detach() for k, v in det.items() if k != "loss"})
        cap = outputs["cap"]
        if "logits" in cap:
            l_lm = caption_loss(cap["logits"], cap["targets"], cap["mask"], cap["sample"], len(batch))
        else:  # no matched object in the batch: a zero that still reaches every caption parameter
            l_lm = sum(p.sum() for p in self.caption_head.parameters() if p.requires_grad) * 0.0
        total = total + cfg.caption_weight * l_lm
        terms["loss_lm"] = l_lm.detach()
        terms["num_captioned"] = torch.tensor(float(len(cap["sample"])))
        return {"loss": total, **terms}

    # ------------------------------------------------------------------------------------------------ predict
    @torch.no_grad()
    def predict(self, outputs: dict, batch: Batch) -> list[Prediction]:
        preds = self.detector.predict(outputs, batch)
        det = outputs["det"]
        objs = top_objects(det, self.cfg.caption.topk)
        emb = gather_objects(det, objs)
        visual, _ = self.caption_head.encode(outputs["bev"], emb["box_code"], emb["query"], objs.sample)
        gen = torch.Generator(device=visual.device)
        gen.manual_seed(zlib.crc32("|".join(batch.tokens).encode()) ^ self.cfg.caption.seed)
        captions = self.caption_head.generate(visual, greedy=self.greedy, generator=gen)
        boxes = decode_box_codes(emb["box_code"].float())
        for b, p in enumerate(preds):
            sel = (objs.sample == b).nonzero()[:, 0]
            p.caption_boxes = boxes[sel]
            p.captions = [captions[i] for i in sel.tolist()]
            p.extras["caption_scores"] = objs.score[sel]
            p.extras["caption_labels"] = objs.label[sel]
        return preds

    def scalars(self) -> dict[str, float]:
        out = dict(self.detector.scalars())
        adapter = self.caption_head.language.adapter
        if hasattr(adapter, "gates"):
            out["adapter_gate_abs"] = float(torch.tanh(adapter.gates.detach()).abs().mean())
        return out
