"""CTAB (papers/ctab.txt, Fig. 1): an RCBEVDet-style radar-camera BEV detector with a segmentation branch, the
Cross-Task Attention Bridge and homoscedastic uncertainty weighting.

    images [B, N, 3, 256, 704] --ResNet-50 (stages 3, 4)--> FPN --> [B*N, 512, 16, 44]
        --camera-aware depth net + LSS (118 depth bins x 80 ctx)--> [B, 80, 128, 128]   (key frame, with gradient)
        past frames: the same, lifted into the key frame WITHOUT gradient (BEVDepth4D); each frame -> pre-process
        concat (T + 1) x 80 --BEV ResNet + FPN_LSS--> F_cam [B, 256, 128, 128]
    radar points (8 sweeps x 5 radars) --pillars 0.2 m--> RadarBEVNet (dual stream) --RCS-aware scatter
        --> [B, 64, 512, 512] --SECOND + SECOND-FPN--> F_radar [B, 384, 128, 128]
    CAMF(F_cam, F_radar) --> F_bev [B, 256, 128, 128]                                   (Sec. III-A)
    detection path: F_det = F_bev;   segmentation path: F_seg = SegDecoder.features(F_bev) [B, 128, 128, 128]
    CTAB(F_det, F_seg) --> (F'_det, F'_seg)                                               (Sec. III-D, Eqs. 2-7)
    CenterHead(F'_det) --> boxes;   SegDecoder.classify(BEVUpsample(F'_seg)) --> logits [B, C, 200, 200]
    loss: HUW(L_det, L_seg) (Eq. 8), L_det = heatmap focal + L1 + depth BCE, L_seg = 20 focal + 20 dice

One class, three rows of Table II: ``seg=None`` is RCBEVDet (detection only), ``bridge=None`` the MTL baseline
(A), both set MTL + CTAB (B). Without radar in a batch (a dropped sensor) the radar branch sees an empty point set,
i.e. a radar that returned nothing; dropped cameras contribute nothing to the camera BEV (``cam_mask``).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from bevbridge.data.batch import DETECTION_CLASSES, Batch
from bevbridge.losses.dice import dice_loss
from bevbridge.losses.focal import sigmoid_focal_loss
from bevbridge.losses.huw import UncertaintyWeighting
from bevbridge.models.bev.bev_resnet import BEVResNet, FPNLSS
from bevbridge.models.bev.second import SECOND, SECONDFPN
from bevbridge.models.contract import DataNeeds, Prediction
from bevbridge.models.ctab.bridge import CrossTaskAttentionBridge
from bevbridge.models.ctab.config import CTABConfig
from bevbridge.models.fusion.camf import CAMF
from bevbridge.models.heads.center_head import CenterHead
from bevbridge.models.heads.seg_decoder import BEVUpsample, SegDecoder
from bevbridge.models.image.backbone import ImageBackbone
from bevbridge.models.image.neck import FPNToOneLevel
from bevbridge.models.lift.depth_targets import depth_loss, depth_targets
from bevbridge.models.lift.lss import LSSViewTransform
from bevbridge.models.radar.radar_bev_net import RadarBEVNet
from bevbridge.models.radar.rcs_scatter import RCSAwareScatter
from bevbridge.ops.voxelize import voxelize

__all__ = ["CTABModel"]


class CTABModel(nn.Module):
    """See the module docstring; follows the contract of bevbridge/models/contract.py."""

    kind = "ctab"

    def __init__(self, cfg: CTABConfig):
        super().__init__()
        self.cfg = cfg
        self.grid = cfg.grid.to_grid()
        im, dp, rd = cfg.image, cfg.depth, cfg.radar
        # camera branch
        self.image_backbone = ImageBackbone(im.backbone, im.out_indices, im.pretrained_path, im.frozen)
        self.image_neck = FPNToOneLevel(self.image_backbone.channels, im.neck_channels)
        self.lss = LSSViewTransform(self.grid, im.input_size, im.downsample, im.neck_channels, dp.context_channels,
                                    dp.depth_range, dp.z_range, dp.aspp_mid_channels)
        C = dp.context_channels
        self.pre_process = BEVResNet(C, [C], [dp.pre_process_blocks], [1])
        self.bev_backbone = BEVResNet(C * (dp.num_past_frames + 1), list(dp.bev_channels))
        self.bev_neck = FPNLSS(dp.bev_channels[-1] + dp.bev_channels[0], dp.bev_out_channels)
        # radar branch
        self.radar_grid = dataclasses.replace(self.grid, res=rd.pillar_size)
        if rd.enabled:
            self.radar_encoder = RadarBEVNet(self.radar_grid, rd.z_range, len(rd.features), rd.feat_channels, rd.heads)
            self.radar_scatter = RCSAwareScatter(rd.feat_channels[-1], self.radar_grid, rd.features.index("rcs") - len(rd.features),
                                                 rd.max_radius)
            self.radar_backbone = SECOND(rd.feat_channels[-1], rd.second_channels, rd.second_layers)
            # SECOND stage i is 2^(i+1) times coarser than the pillar grid; each is resampled to the BEV grid
            up = tuple(self.grid.W * 2 ** (i + 1) / self.radar_grid.W for i in range(len(rd.second_channels)))
            self.radar_neck = SECONDFPN(rd.second_channels, rd.fpn_channels, up)
            self.camf = CAMF(dp.bev_out_channels, sum(rd.fpn_channels), cfg.camf.dim, cfg.camf.heads, cfg.camf.points,
                             self.grid.shape, cfg.camf.fuser_blocks)
            for branch in (self.radar_encoder, self.radar_scatter, self.radar_backbone, self.radar_neck,
                           self.camf.radar_reduce):
                for m in branch.modules():
                    if rd.bn_momentum is not None and isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.momentum = rd.bn_momentum
        bev_channels = cfg.camf.dim if rd.enabled else dp.bev_out_channels
        # heads
        h = cfg.head
        self.center_head = CenterHead(
            bev_channels, h.tasks, DETECTION_CLASSES, self.grid, share_conv_channels=h.share_conv_channels,
            init_bias=h.init_bias, heatmap_weight=h.heatmap_weight, bbox_weight=h.bbox_weight,
            code_weights=h.code_weights, gaussian_overlap=h.gaussian_overlap, min_radius=h.min_radius,
            max_objs=h.max_objs, score_threshold=h.score_threshold, nms=h.nms, nms_threshold=h.nms_threshold,
            pre_max_size=h.pre_max_size, post_max_size=h.post_max_size, scale_factors=h.scale_factors,
            circle_radii=h.circle_radii, post_center_range=h.post_center_range,
            sync_num_positives=h.sync_num_positives)
        self.seg_decoder = self.bev_upsample = self.ctab = self.huw = None
        if cfg.seg is not None:
            s = cfg.seg
            self.seg_decoder = SegDecoder(len(s.classes), bev_channels, s.channels, s.num_blocks, s.in_affine)
            self.bev_upsample = BEVUpsample(s.channels, (s.out_size, s.out_size), s.in_affine)
            if cfg.bridge is not None:
                b = cfg.bridge
                self.ctab = CrossTaskAttentionBridge(bev_channels, s.channels, b.dim, b.heads, b.points, b.gate_init,
                                                     b.gn_groups)
            if cfg.huw:
                self.huw = UncertaintyWeighting(("det", "seg"), cfg.huw_max_log_sigma)

    def data_needs(self) -> DataNeeds:
        return self.cfg.data_needs()

    # -------------------------------------------------------------------------------------------------- branches
    def _lift(self, images, K, sensor2ego, ida, bda, cam_mask) -> tuple[torch.Tensor, torch.Tensor]:
        B, N = images.shape[:2]
        feats = self.image_neck(self.image_backbone(images))
        feats = feats.view(B, N, *feats.shape[1:])
        return self.lss(feats, K, sensor2ego, ida, bda, cam_mask)

    def camera_bev(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(F_cam [B, 256, H, W], key-frame depth [B, N, D, h, w])``."""
        if batch.images is None:
            raise ValueError("CTAB needs camera images: the batch has none (data.cameras is empty?)")
        bev, depth = self._lift(batch.images, batch.K, batch.sensor2ego, batch.ida, batch.bda, batch.cam_mask)
        frames = [self.pre_process(bev)[0]]
        T = self.cfg.depth.num_past_frames
        if T:
            p = batch.past
            if p is None or p.images.shape[1] < T:
                raise ValueError(f"model.depth.num_past_frames={T} but the batch holds "
                                 f"{0 if p is None else p.images.shape[1]} past frames (data.num_past_frames)")
            with torch.no_grad():
                B = bev.shape[0]
                fold = lambda x: x[:, :T].flatten(0, 1)  # noqa: E731  [B, T, ...] -> [B*T, ...]
                s2k = p.ego2key[:, :T, None] @ p.sensor2ego[:, :T]  # camera -> key ego
                bda = batch.bda[:, None].expand(-1, T, -1, -1).flatten(0, 1)
                mask = None if batch.cam_mask is None else batch.cam_mask[:, None].expand(-1, T, -1).flatten(0, 1)
                past_bev, _ = self._lift(fold(p.images), fold(p.K), s2k.flatten(0, 1), fold(p.ida), bda, mask)
                past = self.pre_process(past_bev)[0].view(B, T, *past_bev.shape[1:]).unbind(1)
            frames += list(past)
        x = torch.cat(frames, 1)
        return self.bev_neck(self.bev_backbone(x)), depth

    def radar_bev(self, batch: Batch, like: torch.Tensor) -> torch.Tensor:
        """``F_radar [B, 384, H, W]`` from the padded radar points (an empty set when radar is missing)."""
        rd = self.cfg.radar
        B = like.shape[0]
        if batch.radar is not None:
            if tuple(batch.radar_features) != tuple(rd.features):
                raise ValueError(f"radar features {batch.radar_features} != model.radar.features {rd.features}")
            points, mask = batch.radar, batch.radar_mask
        else:
            points = like.new_zeros(B, 1, len(rd.features))
            mask = torch.zeros(B, 1, dtype=torch.bool, device=like.device)
        vox = voxelize(points.float(), self.radar_grid, rd.z_range, 1, rd.max_points_per_pillar, mask=mask)
        pillar_feat, pillar_mean = self.radar_encoder(vox, B)
        canvas = self.radar_scatter(pillar_feat, pillar_mean, vox.coors, B)
        return self.radar_neck(self.radar_backbone(canvas))

    # --------------------------------------------------------------------------------------------------- forward
    def forward(self, batch: Batch) -> dict:
        cam, depth = self.camera_bev(batch)
        fused = self.camf(cam, self.radar_bev(batch, cam)) if self.cfg.radar.enabled else cam
        out: dict = {"depth": depth}
        det_feat = fused
        if self.seg_decoder is not None:
            seg_feat = self.seg_decoder.features(fused)
            if self.ctab is not None:
                det_feat, seg_feat = self.ctab(det_feat, seg_feat)
            out["seg_logits"] = self.seg_decoder.classify(self.bev_upsample(seg_feat))
        out["det"] = self.center_head(det_feat)
        return out

    def loss(self, outputs: dict, batch: Batch) -> dict[str, torch.Tensor]:
        det = self.center_head.loss(outputs["det"], batch.gt_boxes, batch.gt_labels)
        terms: dict[str, torch.Tensor] = {"det/heatmap": det["heatmap"].detach(), "det/bbox": det["bbox"].detach()}
        l_det = det["heatmap"] + det["bbox"]
        if batch.lidar is not None and self.cfg.depth.loss_weight > 0:
            im = self.cfg.image
            tgt = depth_targets(batch.lidar, batch.lidar_mask, batch.K, batch.sensor2ego, batch.ida, batch.bda,
                                im.input_size, im.downsample, self.cfg.depth.depth_range,
                                tuple(outputs["depth"].shape[-2:]), cam_mask=batch.cam_mask)
            l_depth = depth_loss(outputs["depth"], tgt, self.cfg.depth.loss_weight)
            terms["det/depth"] = l_depth.detach()
            l_det = l_det + l_depth
        if self.seg_decoder is None:
            return {"loss": l_det, "loss_det": l_det.detach(), **terms}
        if batch.gt_masks is None:
            raise ValueError("the segmentation branch needs batch.gt_masks (map targets are off in the data config)")
        s = self.cfg.seg
        logits, gt = outputs["seg_logits"].float(), batch.gt_masks.float()
        if gt.shape != logits.shape:
            raise ValueError(f"segmentation target {tuple(gt.shape)} != prediction {tuple(logits.shape)}")
        focal = sigmoid_focal_loss(logits, gt, s.focal_alpha, s.focal_gamma)
        dice = dice_loss(logits, gt, reduction=s.dice_reduction)
        l_seg = s.focal_weight * focal + s.dice_weight * dice
        terms.update({"seg/focal": focal.detach(), "seg/dice": dice.detach()})
        if self.huw is not None:  # Eq. 8
            weighted = self.huw({"det": l_det, "seg": l_seg})
            terms.update({"det/total": l_det.detach(), "seg/total": l_seg.detach()})
            return {"loss": weighted["loss_det"] + weighted["loss_seg"],
                    **{k: v.detach() for k, v in weighted.items()}, **terms}
        return {"loss": l_det + l_seg, "loss_det": l_det.detach(), "loss_seg": l_seg.detach(), **terms}

    @torch.no_grad()
    def predict(self, outputs: dict, batch: Batch) -> list[Prediction]:
        """Boxes and segmentation probabilities per sample, in the batch's (augmented) ego frame (models/contract.py)."""
        dets = self.center_head.predict(outputs["det"])
        seg = outputs.get("seg_logits")
        preds = []
        for i, (boxes, scores, labels) in enumerate(dets):
            preds.append(Prediction(token=batch.tokens[i], boxes=boxes, scores=scores, labels=labels,
                                    seg_probs=None if seg is None else seg[i].float().sigmoid()))
        return preds

    def scalars(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.ctab is not None:
            out.update(self.ctab.gates())
        if self.huw is not None:
            out.update(self.huw.sigmas())
        return out
