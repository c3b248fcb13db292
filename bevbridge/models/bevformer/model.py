"""BEVFormer (v1) and BEVFormer v2 (papers/bevformer_v2.txt, its architecture figure), one model by options.

    images [B, N, 3, H, W] --timm backbone--> C3..C5 --FPN--> P_l [B, N, 256, H/s_l, W/s_l]
    history (v1, temporal.mode "tsa"): past keyframes, oldest first, no gradient: BEV_{t-k} = Encoder(P^{t-k},
        warp(BEV_{t-k-1}))  -> B'_{t-1} = warp(BEV_{t-1}) into the key frame              (temporal_align.py)
    CAN bus: 18 values from ego poses and timestamps -> MLP, added to the BEV queries          (can_bus.py)
    BEV encoder: BEV queries --[TSA -> LN ->] SCA -> LN -> FFN -> LN, x layers--> BEV [B, H*W, 256]   (encoder.py)
    v2 temporal encoder (temporal.mode "fusion"): past BEVs (no gradient) warped to the key frame, concatenated
        with the key frame's -> residual blocks -> Linear + LayerNorm -> BEV                   (temporal_encoder.py)
    v2 perspective head (DD3D-style, FPN levels strides 8..128) -> L_pers                     (perspective_*.py)
        -> NMS + top-k 3D proposals -> centres -> reference points of hybrid object queries  (proposals.py)
    decoder: object queries (+ proposals) --[MHSA -> LN -> deformable attn on BEV -> LN -> FFN -> LN] x 6 with
        iterative box refinement--> class + box per layer                       (decoder.py, detr_head.py)
    loss: lambda_bev * L_bev (Hungarian, focal + L1/SmoothL1, every layer) + lambda_pers * L_pers

History is rebuilt from the Batch's past frames for every sample (no state carried between samples, so batches are
order-free and DDP-safe), unlike the released code, which at test time reuses the previous sample's BEV (an
unbounded history) and in training builds it the same way as here (``queue_length`` frames, no gradient, eval mode).

For TOD3Cap/MTA built on BEVFormer-tiny: ``forward`` returns ``"bev"`` [B, 256, H, W] and ``"det"`` with the
decoder's object-query embeddings ``"query_feats"`` [L, B, Nq, 256]; :meth:`BEVFormerModel.match` gives the
Hungarian assignment (which query matched which GT box) of the last layer.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from bevbridge.data.batch import DETECTION_CLASSES, Batch
from bevbridge.models.bevformer.can_bus import can_bus_from_poses
from bevbridge.models.bevformer.config import BEVFormerConfig
from bevbridge.models.bevformer.decoder import BEVDecoder
from bevbridge.models.bevformer.detr_head import DETRHead
from bevbridge.models.bevformer.encoder import BEVEncoder
from bevbridge.models.bevformer.perspective_head import PerspectiveHead
from bevbridge.models.bevformer.perspective_loss import PerspectiveLoss
from bevbridge.models.bevformer.proposals import ProposalQueries
from bevbridge.models.bevformer.temporal_align import past_to_current, warp_bev
from bevbridge.models.bevformer.temporal_encoder import TemporalFusion
from bevbridge.models.contract import DataNeeds, Prediction
from bevbridge.models.image.backbone import ImageBackbone
from bevbridge.models.image.fpn import FPN

__all__ = ["BEVFormerModel"]


class BEVFormerModel(nn.Module):
    """See the module docstring; follows the contract of bevbridge/models/contract.py."""

    kind = "bevformer"

    def __init__(self, cfg: BEVFormerConfig):
        super().__init__()
        self.cfg = cfg
        self.grid = cfg.grid.to_grid()
        im, enc = cfg.image, cfg.encoder
        if im.fpn_channels != enc.embed_dims:
            raise ValueError(f"model.image.fpn_channels ({im.fpn_channels}) must equal model.encoder.embed_dims "
                             f"({enc.embed_dims})")
        self.image_backbone = ImageBackbone(im.backbone, tuple(im.out_indices), im.pretrained_path,
                                            frozen_stages=im.frozen_stages, norm_eval=im.norm_eval,
                                            size_divisor=im.size_divisor)
        self.image_neck = FPN(self.image_backbone.channels, im.fpn_channels, im.fpn_levels)
        self.encoder = BEVEncoder(self.grid, enc, im.bev_levels, tuple(im.input_size))
        t = cfg.temporal
        self.temporal_fusion = None
        if t is not None and t.mode == "fusion":
            self.temporal_fusion = TemporalFusion(enc.embed_dims, t.num_past_frames + 1, t.fusion_channels,
                                                  t.fusion_blocks)
        self.perspective_head = self.perspective_loss = self.proposals = None
        if cfg.perspective is not None:
            self.perspective_head = PerspectiveHead(cfg.perspective, enc.embed_dims, len(DETECTION_CLASSES))
            self.perspective_loss = PerspectiveLoss(cfg.perspective, DETECTION_CLASSES, tuple(im.input_size))
            if cfg.two_stage is not None:
                self.proposals = ProposalQueries(cfg.two_stage, self.grid, enc.z_range, enc.embed_dims)
        self.decoder = BEVDecoder(cfg.decoder, enc.embed_dims)
        self.head = DETRHead(self.grid, enc.z_range, cfg.head, cfg.decoder, enc.embed_dims, len(DETECTION_CLASSES))
        self.aux_decoder = self.aux_head = None
        if cfg.aux_bev_head:  # Table 2's "BEV & BEV" control: a second, independent decoder + head
            self.aux_decoder = BEVDecoder(cfg.decoder, enc.embed_dims)
            self.aux_head = DETRHead(self.grid, enc.z_range, cfg.head, cfg.decoder, enc.embed_dims,
                                     len(DETECTION_CLASSES))

    def data_needs(self) -> DataNeeds:
        return self.cfg.data_needs()

    # ------------------------------------------------------------------------------------------------ images
    def padded_hw(self, hw: tuple[int, int]) -> tuple[int, int]:
        d = self.cfg.image.size_divisor
        return (-(-hw[0] // d) * d, -(-hw[1] // d) * d)

    def image_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``[B, N, 3, H, W]`` -> the FPN levels, each ``[B, N, C, h_l, w_l]``, finest first."""
        B, N = images.shape[:2]
        return [f.view(B, N, *f.shape[1:]) for f in self.image_neck(self.image_backbone(images))]

    # --------------------------------------------------------------------------------------------------- BEV
    def _encode(self, feats, K, sensor2ego, ida, bda, cam_mask, hw, can_bus=None, history=None, has_history=None):
        n = self.cfg.image.bev_levels
        return self.encoder(feats[:n], K, sensor2ego, ida, bda, cam_mask, self.padded_hw(hw), can_bus, history,
                            has_history)

    def _to_map(self, bev: torch.Tensor) -> torch.Tensor:
        """``[B, H*W, C]`` -> ``[B, C, H, W]``."""
        H, W = self.grid.shape
        return bev.transpose(1, 2).reshape(bev.shape[0], -1, H, W)

    def _to_seq(self, bev: torch.Tensor) -> torch.Tensor:
        return bev.flatten(2).transpose(1, 2)

    @contextlib.contextmanager
    def _history_mode(self):
        """Past frames run as the released code runs them: eval mode (no dropout, BN statistics) and no gradient."""
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was)

    def _can_bus(self, batch: Batch, T: int) -> torch.Tensor | None:
        """``[B, 1 + T, 18]`` (key frame, then past frames) or None when the CAN-bus signal is off."""
        if not self.cfg.encoder.can_bus:
            return None
        p = batch.past
        if T and (p is None or p.timestamps is None):
            raise ValueError("model.encoder.can_bus needs the past frames' timestamps (PastFrames.timestamps)")
        return can_bus_from_poses(batch.ego2global, batch.timestamps, p.ego2key[:, :T] if T else None,
                                  p.timestamps[:, :T] if T else None, p.valid[:, :T] if T else None)

    def _past_frames(self, batch: Batch, T: int):
        p = batch.past
        if p is None or p.images.shape[1] < T:
            raise ValueError(f"model.temporal.num_past_frames={T} but the batch holds "
                             f"{0 if p is None else p.images.shape[1]} past frames (data.num_past_frames)")
        return p

    def _tsa_history(self, batch: Batch, can: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """B'_{t-1} in the (augmented) key frame ``[B, H*W, C]`` and which samples have one ``[B]``.

        Past frames are encoded oldest first; each attends (TSA) to the previous one warped into its frame. Frames
        that do not exist (``valid`` False: a scene's start) are skipped, so a sample's chain starts at its oldest
        existing frame (``PastFrames.valid`` is False only for the oldest frames of a scene).
        """
        T = self.cfg.temporal.num_past_frames
        p = self._past_frames(batch, T)
        B = batch.images.shape[0]
        exists = p.valid[:, :T].bool().cumprod(1).bool()  # [B, T]
        prev: torch.Tensor | None = None
        has = torch.zeros(B, dtype=torch.bool, device=batch.images.device)
        hw = tuple(batch.images.shape[-2:])
        with self._history_mode():
            for t in reversed(range(T)):
                idx = exists[:, t].nonzero()[:, 0]
                if idx.numel() == 0:
                    continue
                sel = lambda x: x[idx, t]  # noqa: E731
                history = has_t = None
                if prev is not None:
                    to_t = torch.linalg.inv(sel(p.ego2key).double()) @ p.ego2key[idx, t + 1].double()
                    history = self._to_seq(warp_bev(self._to_map(prev[idx]), to_t, self.grid))
                    has_t = has[idx]
                feats = self.image_features(sel(p.images))
                mask = None if batch.cam_mask is None else batch.cam_mask[idx]
                bev = self._encode(feats, sel(p.K), sel(p.sensor2ego), sel(p.ida), None, mask, hw,
                                   None if can is None else can[idx, t + 1], history, has_t)
                prev = bev.new_zeros(B, *bev.shape[1:]) if prev is None else prev.clone()
                prev[idx] = bev
                has = has.clone()
                has[idx] = True
        if prev is None:
            return None, has
        to_key = past_to_current(p.ego2key[:, 0].double(), batch.bda.double())
        return self._to_seq(warp_bev(self._to_map(prev), to_key, self.grid)), has

    def _fused_history(self, batch: Batch, bev: torch.Tensor) -> torch.Tensor:
        """v2's temporal encoder: every past frame's BEV (no gradient, its own ego frame) warped into the augmented
        key frame, concatenated after the key frame's ``bev [B, H*W, C]`` and fused -> ``[B, H*W, C]``. A scene's
        missing frames are the nearest existing frame repeated by the data layer (``PastFrames.valid``), warped by
        its own pose, as the public code repeats frames."""
        T = self.cfg.temporal.num_past_frames
        p = self._past_frames(batch, T)
        B, N = batch.images.shape[:2]
        fold = lambda x: x[:, :T].flatten(0, 1)  # noqa: E731  [B, T, ...] -> [B*T, ...]
        hw = tuple(batch.images.shape[-2:])
        with self._history_mode():
            mask = None if batch.cam_mask is None else batch.cam_mask[:, None].expand(B, T, N).flatten(0, 1)
            feats = self.image_features(fold(p.images))
            past = self._encode(feats, fold(p.K), fold(p.sensor2ego), fold(p.ida), None, mask, hw)
        to_key = past_to_current(p.ego2key[:, :T].double(), batch.bda.double()).flatten(0, 1)
        past = warp_bev(self._to_map(past), to_key, self.grid).view(B, T, -1, *self.grid.shape).unbind(1)
        return self.temporal_fusion([self._to_map(bev), *past])

    def bev_features(self, batch: Batch, feats: list[torch.Tensor]) -> torch.Tensor:
        """The key frame's BEV ``[B, H*W, C]`` (with its temporal part)."""
        t = self.cfg.temporal
        T = 0 if t is None else t.num_past_frames
        if T:
            self._past_frames(batch, T)
        tsa = t is not None and t.mode == "tsa"
        can = self._can_bus(batch, T if tsa else 0)
        history = has = None
        if tsa:
            history, has = self._tsa_history(batch, can)
        hw = tuple(batch.images.shape[-2:])
        bev = self._encode(feats, batch.K, batch.sensor2ego, batch.ida, batch.bda, batch.cam_mask, hw,
                           None if can is None else can[:, 0], history, has)
        return self._fused_history(batch, bev) if self.temporal_fusion is not None else bev

    # --------------------------------------------------------------------------------------------- contract
    def forward(self, batch: Batch) -> dict:
        if batch.images is None:
            raise ValueError("BEVFormer needs camera images: the batch has none (data.cameras is empty?)")
        feats = self.image_features(batch.images)
        bev = self.bev_features(batch, feats)
        out: dict = {"bev": self._to_map(bev)}
        proposals = None
        if self.perspective_head is not None:
            n = len(self.cfg.perspective.strides)
            out["pers"] = self.perspective_head([f.flatten(0, 1) for f in feats[:n]])
            if self.proposals is not None:
                proposals = self.proposals(out["pers"], self.perspective_loss, batch.K, batch.sensor2ego, batch.ida,
                                           batch.bda, batch.cam_mask)
                out["proposals"] = {k: proposals[k] for k in ("boxes", "scores", "reference")}
        out["det"] = self.head(bev, self.decoder, proposals)
        if self.aux_head is not None and self.training:
            out["aux_det"] = self.aux_head(bev, self.aux_decoder)
        return out

    def loss(self, outputs: dict, batch: Batch) -> dict[str, torch.Tensor]:
        """lambda_bev * L_bev + lambda_pers * L_pers (L_pers: the perspective loss, or the control's second BEV
        head); every term logged (``bev/*``, ``pers/*``, ``aux/*``)."""
        det = self.head.loss(outputs["det"], batch.gt_boxes, batch.gt_labels)
        l_bev = det["cls"] + det["bbox"]
        terms = {"bev/cls": det["cls"].detach(), "bev/bbox": det["bbox"].detach(),
                 "bev/cls_last": det["cls_last"], "bev/bbox_last": det["bbox_last"]}
        total = self.cfg.lambda_bev * l_bev
        out = {"loss_bev": l_bev.detach()}
        if "pers" in outputs:
            pers = self.perspective_loss(outputs["pers"], batch.gt_boxes, batch.gt_labels, batch.K,
                                         batch.sensor2ego, batch.ida, batch.bda, batch.cam_mask)
            l_pers = sum(v for k, v in pers.items() if k != "num_pos")
            terms.update({f"pers/{k}": v.detach() for k, v in pers.items()})
            total = total + self.cfg.lambda_pers * l_pers
            out["loss_pers"] = l_pers.detach()
        if "aux_det" in outputs:
            aux = self.aux_head.loss(outputs["aux_det"], batch.gt_boxes, batch.gt_labels)
            l_aux = aux["cls"] + aux["bbox"]
            terms.update({"aux/cls": aux["cls"].detach(), "aux/bbox": aux["bbox"].detach()})
            total = total + self.cfg.lambda_pers * l_aux
            out["loss_aux_bev"] = l_aux.detach()
        return {"loss": total, **out, **terms}

    def match(self, outputs: dict, batch: Batch, layer: int = -1) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Hungarian assignment of the decoder's (first-group) object queries to the batch's GT boxes, per sample
        ``(query_idx, gt_idx)``: ``outputs["det"]["query_feats"][layer, b, query_idx]`` are the embeddings of the
        queries matched to ``batch.gt_boxes[b][gt_idx]`` (the same matching the loss uses for that layer)."""
        return self.head.assign(outputs["det"], batch.gt_boxes, batch.gt_labels, layer, group=0)

    @torch.no_grad()
    def predict(self, outputs: dict, batch: Batch) -> list[Prediction]:
        """Boxes per sample in the batch's (augmented) ego frame (models/contract.py), top ``head.max_num``."""
        return [Prediction(token=batch.tokens[i], boxes=b, scores=s, labels=lab)
                for i, (b, s, lab) in enumerate(self.head.predict(outputs["det"]))]

    def scalars(self) -> dict[str, float]:
        return {}
