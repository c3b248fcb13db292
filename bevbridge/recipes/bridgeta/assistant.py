"""BridgeTA's teacher assistant (papers/bridgeta.txt, "Teacher Assistant (TA)", Fig. 2 dark green).

    F_cam^S [B, C_cam, H, W] (student) + F_lidar^T [B, C_lidar, H, W] (frozen teacher)
      --ConvFuser--> F_fus^TA [B, C_cam, H, W] --decoder--> F_dec^TA --head--> L^{TA_TA} [B, N_c, H_t, W_t]

No data input and no backbone of its own: it fuses the teacher's LiDAR BEV with the student's camera BEV and shares
the teacher's (= the student's) decoder and head architecture, so its three levels have the student's shapes.
Training only; it is not part of the deployed model.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from bevbridge.models.bevfusion.config import BEVFusionConfig
from bevbridge.models.bevfusion.fuser import ConvFuser
from bevbridge.models.bevfusion.model import BEVFusionSeg, build_decoder, build_head

__all__ = ["TeacherAssistant", "head_with_fixed_weights"]


class TeacherAssistant(nn.Module):
    """``forward(cam_bev, lidar_bev) -> {"bev", "decoded", "seg_logits"}`` (the assistant's feature, decoded and
    logit levels).

    Args:
        teacher_cfg: the teacher's config (the assistant copies its fuser, decoder and head architecture).
        lidar_channels: channels of the teacher's LiDAR BEV.
    """

    def __init__(self, teacher_cfg: BEVFusionConfig, lidar_channels: int):
        super().__init__()
        self.fuser = ConvFuser(teacher_cfg.camera.context_channels, lidar_channels, teacher_cfg.fuser.out_channels)
        self.decoder = build_decoder(teacher_cfg)
        self.head = build_head(teacher_cfg, self.decoder.out_channels)

    def forward(self, cam_bev: torch.Tensor, lidar_bev: torch.Tensor) -> dict[str, torch.Tensor]:
        bev = self.fuser(cam_bev, lidar_bev)
        decoded = self.decoder(bev)
        return {"bev": bev, "decoded": decoded, "seg_logits": self.head(decoded)}

    @torch.no_grad()
    def copy_from(self, teacher: BEVFusionSeg) -> None:
        """Start from the (trained) teacher's fuser, decoder and head: parameters and BatchNorm statistics."""
        for name in ("fuser", "decoder", "head"):
            getattr(self, name).load_state_dict(getattr(teacher, name).state_dict())


def head_with_fixed_weights(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``head(x)`` with the head's parameters treated as constants and its BatchNorm running statistics untouched:
    the gradient reaches ``x`` only (BridgeTA's cross-head path L^{S_TA}: the student's decoded BEV through the
    assistant's head, Fig. 4). In training mode BatchNorm normalises with the batch's statistics, as the head does on
    its own features; the running-statistics update goes to copies that are dropped."""
    params = {k: v.detach() for k, v in head.named_parameters()}
    buffers = {k: v.clone() for k, v in head.named_buffers()}
    return functional_call(head, {**params, **buffers}, (x,))
