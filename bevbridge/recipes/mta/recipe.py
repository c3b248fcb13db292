"""MTA (papers/mta.txt): TOD3Cap trained with BEV-language (BLA) and detection-captioning (DCA) alignment.

    captioner = TOD3Cap (bevbridge/models/tod3cap/model.py)      -- the deployable model (``deployable_attr``)
    training only: BLA head + frozen text encoder, DCA prompts + projections       (recipes/mta/alignment.py)
    L = alpha L_det + beta L_LM + lambda_1 L_BLA + lambda_2 L_DCA                   (Eq. 8)

Both alignment heads read what TOD3Cap computes anyway in training (the matched objects' Q-Former states, their
class/box outputs and the LM's teacher-forced caption logits) and add nothing to its inference: ``predict`` is the
captioner's, and checkpoints also hold ``deployable.safetensors`` under TOD3Cap's own keys, so
``bevbridge eval configs/mta/tod3cap.yaml --ckpt <an MTA run>`` evaluates the deployed model
(tests/test_mta_recipe.py checks its parameters, detections and greedy captions do not depend on BLA/DCA).
The captioner is built first, so it starts from the same random initialisation as a TOD3Cap run with the same seed.
"""

from __future__ import annotations

import torch
from torch import nn

from bevbridge.data.batch import DETECTION_CLASSES, Batch
from bevbridge.losses.align import clip_loss, squared_l2
from bevbridge.models.contract import DataNeeds, Prediction
from bevbridge.models.freeze import freeze
from bevbridge.models.tod3cap.detector import Objects, gather_objects
from bevbridge.models.tod3cap.model import TOD3CapModel
from bevbridge.recipes.mta.alignment import BLAHead, DCAHead

__all__ = ["MTA"]


class MTA(nn.Module):
    """See the module docstring; follows bevbridge/models/contract.py and names its deployable model.

    Args:
        cfg: the ``model`` section (MTAConfig: TOD3Cap's keys + ``bla``, ``dca``, ``bla_weight``, ``dca_weight``).
        detector: passed on to TOD3CapModel (None: BEVFormer from ``cfg.detector``).
    """

    kind = "mta"
    deployable_attr = "captioner"

    def __init__(self, cfg, detector: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.captioner = TOD3CapModel(cfg.tod3cap() if hasattr(cfg, "tod3cap") else cfg, detector)
        head = self.captioner.caption_head
        self.text_encoder = self.bla = self.dca = None
        if cfg.bla.enabled:
            from bevbridge.models.language.text_encoder import TextEncoder

            text = TextEncoder(cfg.bla.text_encoder)
            self.text_encoder = freeze(text, in_checkpoint=False)
            self.bla = BLAHead(cfg.qformer.dim, text.dim, cfg.bla.layer, cfg.qformer.depth)
        if cfg.dca.enabled:
            self.dca = DCAHead(len(DETECTION_CLASSES), head.info.hidden_size, cfg.dca.num_prompts, cfg.dca.dim)

    def data_needs(self) -> DataNeeds:
        return self.captioner.data_needs()

    def forward(self, batch: Batch) -> dict:
        out = self.captioner(batch)
        cap = out.get("cap", {})
        if not self.training or "logits" not in cap:
            return out
        align: dict = {}
        if self.bla is not None:
            align["bla_pred"] = self.bla(cap["hidden"])
            align["bla_target"] = self.text_encoder(cap["captions"])
        if self.dca is not None:
            emb = gather_objects(out["det"], Objects(cap["sample"], cap["query"]))
            embedding = self.captioner.caption_head.language.lm.get_input_embeddings().weight
            align["p_det"], align["p_cap"] = self.dca(emb["cls_logits"], emb["box_code"], cap["logits"],
                                                      cap["mask"], embedding)
        out["align"] = align
        return out

    def loss(self, outputs: dict, batch: Batch) -> dict[str, torch.Tensor]:
        """Eq. 8: TOD3Cap's ``alpha L_det + beta L_LM`` plus ``lambda_1 L_BLA + lambda_2 L_DCA`` (each term logged
        as ``loss_bla`` / ``loss_dca``; the weights are in :meth:`scalars`)."""
        losses = self.captioner.loss(outputs, batch)
        total = losses["loss"]
        align = outputs.get("align")
        if self.bla is not None:
            l_bla = squared_l2(align["bla_pred"], align["bla_target"]) if align else self._zero(self.bla)
            total = total + self.cfg.bla_weight * l_bla
            losses["loss_bla"] = l_bla.detach()
        if self.dca is not None:
            l_dca = clip_loss(align["p_det"], align["p_cap"], self.cfg.dca.temperature) if align else \
                self._zero(self.dca)
            total = total + self.cfg.dca_weight * l_dca
            losses["loss_dca"] = l_dca.detach()
        losses["loss"] = total
        return losses

    @staticmethod
    def _zero(module: nn.Module) -> torch.Tensor:
        """A zero reaching every parameter of ``module`` (a batch without captioned objects)."""
        return sum(p.sum() for p in module.parameters()) * 0.0

    @torch.no_grad()
    def predict(self, outputs: dict, batch: Batch) -> list[Prediction]:
        return self.captioner.predict(outputs, batch)

    def scalars(self) -> dict[str, float]:
        c = self.cfg
        return {**self.captioner.scalars(), "eq8/alpha": c.det_weight, "eq8/beta": c.caption_weight,
                "eq8/lambda1": c.bla_weight if self.bla is not None else 0.0,
                "eq8/lambda2": c.dca_weight if self.dca is not None else 0.0}
