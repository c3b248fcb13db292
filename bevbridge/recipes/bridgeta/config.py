"""BridgeTA's schema (``model: {kind: bridgeta, ...}``): the camera-only student, the frozen LiDAR-camera teacher,
the teacher assistant and the distillation terms (papers/bridgeta.txt; bevbridge/recipes/bridgeta/recipe.py).

``student`` and ``teacher`` are full ``kind: bevfusion`` sections (bevbridge/models/bevfusion/config.py); the
teacher's trained weights come from ``teacher.init_from`` (a run folder or weights file of
configs/bridgeta/bevfusion_lc_seg*.yaml). Choices the paper leaves open are options here, with our default:

- lambda_1..3 of Eq. 14: not given. Default 1 each (``distill.lambda_*``).
- How the assistant is trained: not stated. Default: with its own segmentation loss (``assistant.seg_weight: 1``)
  plus the teacher-TA and TA-student terms; it starts as a copy of the teacher's fuser, decoder and head
  (``assistant.init: teacher``), since it shares their architecture and input channels.
- Whether the student's camera BEV reaching the assistant is detached: not stated; the FLD text says the student
  "implicitly adapts its own Camera features to better align with the LiDAR modality for more effective fusion",
  i.e. the assistant's losses reach the student's camera branch. Default: not detached
  (``assistant.detach_student_bev: false``).
- Eq. 11 writes L_t2s where Eqs. 9-10 have L_ta2s. Default ``ta2s`` (the dual path of Eq. 5, for which eps* is
  derived); ``distill.lld_student_path: t2s`` follows Eq. 11 literally (eps* then = ||L^TA - L^T|| / ||L^S - L^T||).
- eps: ``distill.eps: null`` is eps* (Eq. 7) per level and step; a number is the fixed-eps ablation (Fig. 5).

Table 4's rows are switches: ``assistant.enabled: false`` (w/o TA: the direct teacher-student term at each level,
and only the teacher's auxiliary KL), ``distill.fld``/``dld``/``lld_base``/``lld_aux``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from bevbridge.models.bevfusion.config import BEVFusionConfig
from bevbridge.models.config_common import ModelConfig
from bevbridge.models.contract import DataNeeds

__all__ = ["AssistantConfig", "DistillConfig", "BridgeTAConfig"]


@dataclass
class AssistantConfig:
    """The teacher assistant (Fig. 2, dark green): ConvFuser(F_cam^S, F_lidar^T) + the teacher's decoder and head
    architecture; training only."""

    enabled: bool = True  # false: Table 4's "Ours w/o TA"
    init: Literal["teacher", "random"] = "teacher"  # start as a copy of the teacher's fuser, decoder and head
    seg_weight: float = 1.0  # its own segmentation loss (0: trained by the distillation terms only)
    detach_student_bev: bool = False  # cut the assistant's gradient into the student's camera branch


@dataclass
class DistillConfig:
    """Which levels are distilled (Table 4) and how (Eqs. 8-14)."""

    fld: bool = True  # feature level: (F_fus^T, F_fus^TA, F_cam^S), Eq. 9
    dld: bool = True  # decoded level: F_dec of each, Eq. 10
    lld_base: bool = True  # logit level, dual-path regression, Eq. 11
    lld_aux: bool = True  # logit level, cross-head Bernoulli KL, Eq. 12
    lambda_fld: float = 1.0  # lambda_1 of Eq. 14
    lambda_dld: float = 1.0  # lambda_2
    lambda_lld: float = 1.0  # lambda_3 (on L_LLD = L_base + L_aux, Eq. 13)
    eps: float | None = None  # null: eps* (Eq. 7); a number: fixed eps
    lld_student_path: Literal["ta2s", "t2s"] = "ta2s"  # the student term of Eq. 11 (see the module docstring)

    def __post_init__(self) -> None:
        if self.eps is not None and not self.eps > 0:
            raise ValueError(f"distill.eps must be > 0 or null (eps*), got {self.eps}")
        for name in ("lambda_fld", "lambda_dld", "lambda_lld"):
            if getattr(self, name) < 0:
                raise ValueError(f"distill.{name} must be >= 0, got {getattr(self, name)}")


@dataclass(kw_only=True)
class BridgeTAConfig(ModelConfig):
    """BridgeTA: distil a frozen LiDAR-camera teacher into a camera-only student through a teacher assistant.

    The deployable model is ``student`` (``bevbridge eval <student config> --ckpt <bridgeta run>``).
    """

    kind: Literal["bridgeta"]  # required: it chooses this schema
    student: BEVFusionConfig
    teacher: BEVFusionConfig
    assistant: AssistantConfig = field(default_factory=AssistantConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        s, t = self.student, self.teacher
        if s.lidar is not None:
            raise ValueError("model.student must be camera-only (student.lidar: null): BridgeTA deploys without LiDAR")
        if t.lidar is None:
            raise ValueError("model.teacher needs a LiDAR branch (teacher.lidar): the assistant fuses its LiDAR BEV")
        # the paper aligns the teacher's channels and decoder to the student's: every level compares equal shapes
        if t.decoder_in_channels() != s.camera.context_channels:
            raise ValueError(f"model.teacher.fuser.out_channels ({t.fuser.out_channels}) must equal the student's "
                             f"camera BEV channels (student.camera.context_channels = {s.camera.context_channels})")
        for name in ("grid", "decoder", "head"):
            if getattr(s, name) != getattr(t, name):
                raise ValueError(f"model.teacher.{name} must equal model.student.{name} (BridgeTA aligns the "
                                 f"teacher's grid, decoder and head to the student's)")

    def data_needs(self) -> DataNeeds:
        """What student and teacher read together (images, the teacher's LiDAR, the map targets); the tasks are
        the student's."""
        return self.student.data_needs().union(self.teacher.data_needs())
