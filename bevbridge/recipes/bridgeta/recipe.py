"""BridgeTA (papers/bridgeta.txt, Fig. 2-4): a frozen LiDAR-camera teacher, a teacher assistant and dual-path
multi-level distillation into the camera-only student, which is the deployed model.

    student (BEVFusion-C):  images --> F_cam^S --decoder--> F_dec^S --head--> L^{S_S}
    teacher (frozen):       images + LiDAR --> F_lidar^T, F_fus^T --decoder--> F_dec^T --head--> L^{T_T}
    assistant:              ConvFuser(F_cam^S, F_lidar^T) = F_fus^TA --decoder--> F_dec^TA --head--> L^{TA_TA}
    cross heads (Fig. 4):   L^{S_T} = teacher head(F_dec^S),  L^{S_TA} = assistant head(F_dec^S)

    L_FLD  = (1 + eps*) L_ta2s^F + (1 + 1/eps*) L_t2ta^F      on (F_fus^T, F_fus^TA, F_cam^S)    Eq. 9
    L_DLD  = the same on (F_dec^T, F_dec^TA, F_dec^S)                                            Eq. 10
    L_base = the same on (L^{T_T}, L^{TA_TA}, L^{S_S})                                            Eq. 11
    L_aux  = KL(L^{T_T} || L^{S_T}) + KL(L^{TA_TA} || L^{S_TA})    (per-pixel Bernoulli KL)       Eq. 12
    L_LLD  = L_base + L_aux                                                                       Eq. 13
    L      = L_seg + lambda_1 L_FLD + lambda_2 L_DLD + lambda_3 L_LLD  (+ the assistant's L_seg)  Eq. 14

Each L_X is Eq. 8 (bevbridge/losses/distill.py); eps* = ||R_TA - R_T|| / ||R_S - R_TA|| per level (Eq. 7).
Without the assistant (Table 4, "Ours w/o TA") each level is the direct term Eq. 8(R_S, R_T) and L_aux keeps the
teacher's KL only. The targets of the KL terms (the heads' outputs on their own features) are not differentiated;
the student's gradient reaches it through the frozen teacher head and through the assistant head, whose weights the
cross path does not update. Choices the paper leaves open: bevbridge/recipes/bridgeta/config.py.

In eval mode (evaluation, ``bevbridge summary``) only the student runs: BridgeTA's inference cost is the student's
(Table 3). Every step logs the Fig. 5 gaps ``gap/feature``, ``gap/decoded``, ``gap/logit`` (Eq. 8 between teacher
and student), whatever the distillation switches.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from bevbridge.data.batch import Batch
from bevbridge.losses.distill import bernoulli_kl, dual_path, level_l2
from bevbridge.models.bevfusion.model import BEVFusionSeg
from bevbridge.models.contract import DataNeeds, Prediction
from bevbridge.models.freeze import freeze
from bevbridge.recipes.bridgeta.assistant import TeacherAssistant, head_with_fixed_weights
from bevbridge.recipes.bridgeta.config import BridgeTAConfig

__all__ = ["BridgeTA", "LEVELS"]

log = logging.getLogger(__name__)

# (level name, output key, switch in DistillConfig, its lambda, short name of the loss entry)
LEVELS = (("feature", "bev", "fld", "lambda_fld"), ("decoded", "decoded", "dld", "lambda_dld"),
          ("logit", "seg_logits", "lld_base", "lambda_lld"))


class BridgeTA(nn.Module):
    """See the module docstring; follows the contract of bevbridge/models/contract.py and recipes/__init__.py."""

    kind = "bridgeta"
    deployable_attr = "student"

    def __init__(self, cfg: BridgeTAConfig):
        super().__init__()
        self.cfg = cfg
        self.student = BEVFusionSeg(cfg.student)
        self.teacher = freeze(BEVFusionSeg(cfg.teacher))  # eval mode for good, no gradient, not optimised
        self.assistant = None
        if cfg.assistant.enabled:
            self.assistant = TeacherAssistant(cfg.teacher, self.teacher.lidar_branch.out_channels)

    def after_init_weights(self) -> None:
        """Called by the builder once ``init_from`` weights are loaded (engine/build.py): the assistant starts as a
        copy of the trained teacher's fuser, decoder and head (``assistant.init: teacher``)."""
        if self.cfg.teacher.init_from is None:
            log.warning("model.teacher.init_from is not set: BridgeTA distils an UNTRAINED teacher (train "
                        "configs/bridgeta/bevfusion_lc_seg*.yaml first and point teacher.init_from at its run)")
        if self.assistant is not None and self.cfg.assistant.init == "teacher":
            self.assistant.copy_from(self.teacher)

    def data_needs(self) -> DataNeeds:
        return self.cfg.data_needs()

    # --------------------------------------------------------------------------------------------------- forward
    def forward(self, batch: Batch) -> dict:
        s = self.student(batch)
        if not self.training:
            return {"student": s}  # inference: the student alone (Table 3)
        with torch.no_grad():
            t = self.teacher(batch)
        out: dict = {"student": s, "teacher": t}
        d, a = self.cfg.distill, self.cfg.assistant
        if self.assistant is not None:
            cam = s["bev"].detach() if a.detach_student_bev else s["bev"]
            out["assistant"] = self.assistant(cam, t["lidar_bev"])
        if d.lld_aux and d.lambda_lld > 0:
            out["student_via_teacher_head"] = self.teacher.head(s["decoded"])  # L^{S_T}: frozen head, grad to S
            if self.assistant is not None:
                out["student_via_assistant_head"] = head_with_fixed_weights(self.assistant.head, s["decoded"])
        return out

    def loss(self, outputs: dict, batch: Batch) -> dict[str, torch.Tensor]:
        s = outputs["student"]
        terms = self.student.loss(s, batch)
        total = terms.pop("loss")
        if "teacher" not in outputs:  # eval-mode outputs: the student's loss only
            return {"loss": total, **terms}
        t, ta = outputs["teacher"], outputs.get("assistant")
        d, a = self.cfg.distill, self.cfg.assistant
        if ta is not None and a.seg_weight > 0:
            ta_seg = self.assistant.head.loss(ta["seg_logits"], batch.gt_masks, prefix="ta_seg")["ta_seg"]
            total = total + a.seg_weight * ta_seg
            terms["loss_ta_seg"] = ta_seg.detach()
        for level, key, switch, lam_name in LEVELS:
            terms[f"gap/{level}"] = level_l2(s[key].detach(), t[key]).detach()  # Fig. 5: ||R_S - R_T||^2 (Eq. 8)
            lam = getattr(d, lam_name)
            if not getattr(d, switch) or lam == 0:
                continue
            if ta is None:  # w/o TA: the direct teacher-student path
                level_loss = level_l2(s[key], t[key])
            else:
                l_t2ta = level_l2(ta[key], t[key])
                student_ref = t[key] if (level == "logit" and d.lld_student_path == "t2s") else ta[key]
                l_s = level_l2(s[key], student_ref)
                level_loss, eps = dual_path(l_s, l_t2ta, d.eps)
                terms.update({f"eps/{level}": eps.detach(), f"dist/{level}_t2ta": l_t2ta.detach(),
                              f"dist/{level}_student": l_s.detach()})
            name = {"feature": "loss_fld", "decoded": "loss_dld", "logit": "loss_lld_base"}[level]
            terms[name] = (lam * level_loss).detach()
            total = total + lam * level_loss
        if "student_via_teacher_head" in outputs:  # Eq. 12, targets not differentiated
            aux = bernoulli_kl(t["seg_logits"], outputs["student_via_teacher_head"])
            if "student_via_assistant_head" in outputs:
                aux = aux + bernoulli_kl(ta["seg_logits"].detach(), outputs["student_via_assistant_head"])
            terms["loss_lld_aux"] = (d.lambda_lld * aux).detach()
            total = total + d.lambda_lld * aux
        return {"loss": total, **terms}

    @torch.no_grad()
    def predict(self, outputs: dict, batch: Batch) -> list[Prediction]:
        """The deployable student's predictions."""
        return self.student.predict(outputs["student"], batch)

    def scalars(self) -> dict[str, float]:
        return {}
