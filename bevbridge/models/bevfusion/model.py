"""BEVFusion map segmentation (Liu et al. 2023), camera-only or LiDAR-camera: BridgeTA's student and teacher
(papers/bridgeta.txt, Fig. 2; the student in blue, the teacher in green).

    images [B, 6, 3, 256, 704] --Swin-T (stages 2-4)--> GeneralizedLSSFPN --> [B*6, 256, 32, 88] (stride 8)
        --plain depth net (1x1 conv: 118 depth logits + 80 context) + LSS splat on 0.4 m (256x256)
        --BEV downsample x2--> F_cam [B, 80, 128, 128]                                     (camera branch)
    teacher only: LiDAR points --pillars + SECOND + SECOND-FPN--> F_lidar [B, 384, 128, 128]  (LiDAR branch)
                  ConvFuser(F_cam, F_lidar) --> F_fus [B, 80, 128, 128]                      (aligned to F_cam)
    F = F_cam (student) or F_fus (teacher) --GeneralizedResNet + LSSFPN--> F_dec [B, 256, 128, 128]
    F_dec --BEVGridTransform onto +-50 m at 0.5 m + classifier--> logits [B, 6, 200, 200]
    loss: sigmoid focal (gamma 2) per class, summed over the 6 classes (BEVFusion's head)

``forward`` returns every level BridgeTA distils: ``bev`` (F_cam or F_fus: the feature level), ``decoded`` (F_dec),
``seg_logits``; the fusion model also ``camera_bev`` and ``lidar_bev`` (the teacher assistant fuses the teacher's
``lidar_bev`` with the student's ``bev``). One class for both models: ``cfg.lidar`` set adds the LiDAR branch and
the fuser (bevbridge/models/bevfusion/config.py).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from bevbridge.data.batch import Batch
from bevbridge.models.bevfusion.config import LIDAR_COLUMNS, BEVFusionConfig
from bevbridge.models.bevfusion.decoder import BEVDecoder
from bevbridge.models.bevfusion.fuser import ConvFuser
from bevbridge.models.bevfusion.lidar_branch import LidarPillarBranch
from bevbridge.models.bevfusion.seg_head import BEVSegHead
from bevbridge.models.contract import DataNeeds, Prediction
from bevbridge.models.image.backbone import ImageBackbone
from bevbridge.models.image.neck import GeneralizedLSSFPN
from bevbridge.models.lift.lss import LSSViewTransform

__all__ = ["BEVFusionSeg", "build_decoder", "build_head"]


def build_decoder(cfg: BEVFusionConfig) -> BEVDecoder:
    """The BEV decoder of ``cfg`` (reading F_cam or F_fus); BridgeTA's assistant builds its decoder with it too."""
    d = cfg.decoder
    return BEVDecoder(cfg.decoder_in_channels(), type=d.type, channels=tuple(d.channels), blocks=tuple(d.blocks),
                      strides=tuple(d.strides), out_channels=tuple(d.out_channels),
                      upsample_strides=tuple(d.upsample_strides))


def build_head(cfg: BEVFusionConfig, in_channels: int) -> BEVSegHead:
    """The segmentation head of ``cfg`` on ``in_channels`` decoded channels."""
    h = cfg.head
    return BEVSegHead(in_channels, tuple(h.classes), cfg.grid.to_grid(), h.grid.to_grid(),
                      focal_alpha=h.focal_alpha, focal_gamma=h.focal_gamma)


class BEVFusionSeg(nn.Module):
    """See the module docstring; follows the contract of bevbridge/models/contract.py."""

    kind = "bevfusion"

    def __init__(self, cfg: BEVFusionConfig):
        super().__init__()
        self.cfg = cfg
        self.grid = cfg.grid.to_grid()
        cam = cfg.camera
        # camera branch
        self.image_backbone = ImageBackbone(cam.backbone, tuple(cam.out_indices), cam.pretrained_path,
                                            **dict(cam.timm_kwargs))
        self.image_neck = GeneralizedLSSFPN(self.image_backbone.channels, cam.neck_channels)
        splat_grid = dataclasses.replace(self.grid, res=self.grid.res / cam.bev_downsample)
        self.vtransform = LSSViewTransform(splat_grid, tuple(cam.input_size), self.image_backbone.strides[0],
                                           cam.neck_channels, cam.context_channels, tuple(cam.depth_range),
                                           tuple(cam.z_range), depth_net="plain", bev_downsample=cam.bev_downsample)
        # LiDAR branch + fuser (the fusion model only)
        self.lidar_branch = self.fuser = None
        if cfg.lidar is not None:
            li = cfg.lidar
            self.lidar_branch = LidarPillarBranch(
                self.grid, feature_columns=tuple(LIDAR_COLUMNS.index(f) for f in li.features),
                pillar_size=li.pillar_size, z_range=tuple(li.z_range), max_points_per_pillar=li.max_points_per_pillar,
                max_pillars=li.max_pillars, pfn_channels=li.pfn_channels, backbone_channels=tuple(li.backbone_channels),
                backbone_layers=tuple(li.backbone_layers), backbone_strides=tuple(li.backbone_strides),
                fpn_channels=tuple(li.fpn_channels), bn_momentum=li.bn_momentum)
            self.fuser = ConvFuser(cam.context_channels, self.lidar_branch.out_channels, cfg.fuser.out_channels)
        # decoder + head
        self.decoder = build_decoder(cfg)
        self.head = build_head(cfg, self.decoder.out_channels)

    def data_needs(self) -> DataNeeds:
        return self.cfg.data_needs()

    # -------------------------------------------------------------------------------------------------- branches
    def camera_bev(self, batch: Batch) -> torch.Tensor:
        """``F_cam [B, C_ctx, H, W]``; a camera with ``cam_mask`` False contributes nothing."""
        if batch.images is None:
            raise ValueError("BEVFusion needs camera images: the batch has none (data.cameras is empty?)")
        B, N = batch.images.shape[:2]
        feats = self.image_neck(self.image_backbone(batch.images))[0]
        feats = feats.view(B, N, *feats.shape[1:])
        bev, _ = self.vtransform(feats, batch.K, batch.sensor2ego, batch.ida, batch.bda, batch.cam_mask)
        return bev

    def lidar_bev(self, batch: Batch) -> torch.Tensor:
        """``F_lidar [B, C_lidar, H, W]`` from the padded LiDAR points."""
        if batch.lidar is None:
            raise ValueError("the LiDAR-camera model needs LiDAR points: the batch has none (data.lidar_sweeps is 0 "
                             "or data.drop_lidar is set?)")
        return self.lidar_branch(batch.lidar, batch.lidar_mask)

    # --------------------------------------------------------------------------------------------------- forward
    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        cam = self.camera_bev(batch)
        out: dict[str, torch.Tensor] = {}
        if self.fuser is not None:
            lidar = self.lidar_bev(batch)
            out.update(camera_bev=cam, lidar_bev=lidar)
            bev = self.fuser(cam, lidar)
        else:
            bev = cam
        decoded = self.decoder(bev)
        out.update(bev=bev, decoded=decoded, seg_logits=self.head(decoded))
        return out

    def loss(self, outputs: dict, batch: Batch) -> dict[str, torch.Tensor]:
        terms = self.head.loss(outputs["seg_logits"], batch.gt_masks)
        total = terms.pop("seg")
        return {"loss": total, "loss_seg": total.detach(), **terms}

    @torch.no_grad()
    def predict(self, outputs: dict, batch: Batch) -> list[Prediction]:
        """Sigmoid map probabilities per sample on the head's grid, in the batch's (augmented) ego frame."""
        probs = outputs["seg_logits"].float().sigmoid()
        return [Prediction(token=t, seg_probs=probs[i]) for i, t in enumerate(batch.tokens)]

    def scalars(self) -> dict[str, float]:
        return {}
