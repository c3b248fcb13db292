"""The perspective supervision loss L_pers of BEVFormer v2 (DD3D's FCOS2D + FCOS3D losses) and the head's 3D decoding.

    L_pers = L_cls + L_box2d + L_ctr + 2.0 L_box3d + 1.0 L_conf3d + 0.2 L_vel        (weights: public v2 config)

- L_cls: sigmoid focal loss (alpha 0.25, gamma 2) over every location of every camera (dropped cameras excluded),
  summed and divided by the number of positives (averaged over processes, at least 1).
- L_box2d: GIoU loss of (l, t, r, b), weighted by the centerness targets and divided by their sum.
- L_ctr: BCE of the centerness, divided by the number of positives.
- L_box3d: DD3D's disentangled corner loss: for each group of the 3D box (projected centre, depth, size, yaw) the box
  is decoded with that group predicted and the others from the target, its 8 corners compared with the target's by
  SmoothL1 (beta 0.05) averaged over the 24 coordinates and capped at ``max_loss_per_group`` (DD3D's cap is a no-op
  through a discarded ``clamp``; here it applies); groups summed, weighted by the centerness targets / their sum.
- L_conf3d: BCE of the 3D confidence against exp(-corner loss of the fully predicted box / T) (no gradient through
  the target), weighted as L_box3d.
- L_vel: L1 of the allocentric velocity (non-finite targets skipped), weighted as L_box3d (NuscenesDD3D's speed
  loss, with a velocity vector instead of a speed: BEVFormer v2's 3D box includes velocity).
The head's attribute branch (NuscenesDD3D) is left out: nothing downstream uses attributes.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from bevbridge.geometry import box_corners
from bevbridge.losses.focal import sigmoid_focal_loss
from bevbridge.models.bevformer.config import PerspectiveHeadConfig
from bevbridge.models.bevformer.perspective_targets import assign_locations, decode_boxes, project_boxes

__all__ = ["PerspectiveLoss", "giou_loss_ltrb", "focal_length"]


def focal_length(K: torch.Tensor, ida: torch.Tensor) -> torch.Tensor:
    """``[...]`` focal length of the network input in pixels: ``|det(ida[:2, :2] K[:2, :2])|^0.5``. Both callers run
    it with autocast off (the loss, and the two-stage proposal selection: ``ProposalQueries.forward``)."""
    return torch.linalg.det(ida[..., :2, :2] @ K[..., :2, :2]).abs().sqrt()


def giou_loss_ltrb(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - GIoU`` of boxes given as distances (l, t, r, b) ``[..., 4]`` from the same point (FCOS's IOULoss)."""
    pl, pt, pr, pb = pred.unbind(-1)
    tl, tt, tr, tb = target.unbind(-1)
    pa, ta = (pl + pr) * (pt + pb), (tl + tr) * (tt + tb)
    inter = (torch.minimum(pl, tl) + torch.minimum(pr, tr)) * (torch.minimum(pt, tt) + torch.minimum(pb, tb))
    union = pa + ta - inter
    enclose = (torch.maximum(pl, tl) + torch.maximum(pr, tr)) * (torch.maximum(pt, tt) + torch.maximum(pb, tb))
    giou = inter / union.clamp(min=1e-7) - (enclose - union) / enclose.clamp(min=1e-7)
    return 1 - giou


def _avg(x: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x)
        x = x / dist.get_world_size()
    return x


class PerspectiveLoss(torch.nn.Module):
    """``loss(out, batch_geometry...) -> dict`` and ``decode(...)`` of the perspective head (no parameters).

    Args:
        cfg: the perspective section. ``class_names``: DETECTION_CLASSES (for the canonical sizes).
        image_hw: (H, W) of the unpadded network input.
    """

    def __init__(self, cfg: PerspectiveHeadConfig, class_names: tuple[str, ...], image_hw: tuple[int, int]):
        super().__init__()
        self.cfg, self.image_hw = cfg, tuple(image_hw)
        missing = [c for c in class_names if c not in cfg.canonical_sizes]
        if missing:
            raise ValueError(f"model.perspective.canonical_sizes has no size for {missing}")
        self.register_buffer("canonical", torch.tensor([cfg.canonical_sizes[c] for c in class_names]),
                             persistent=False)
        self.register_buffer("mean_depth", torch.tensor(cfg.mean_depth), persistent=False)
        self.register_buffer("std_depth", torch.tensor(cfg.std_depth), persistent=False)

    # ------------------------------------------------------------------------------------------------ decoding
    def depth(self, raw: torch.Tensor, levels: torch.Tensor, focal: torch.Tensor) -> torch.Tensor:
        """Metric depth from the head's scaled raw output (``[...]`` with matching ``levels`` and ``focal``)."""
        mean, std = self.mean_depth.to(raw.dtype)[levels], self.std_depth.to(raw.dtype)[levels]
        return (mean + std * raw) * focal.to(raw.dtype) / self.cfg.depth_focal_norm

    def parts(self, out: dict, m: torch.Tensor, loc: torch.Tensor, cls: torch.Tensor, K: torch.Tensor,
              ida: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predicted 3D box parts at locations ``(m, loc)`` ``[P]`` for classes ``cls`` ``[P]``: ``pix [P, 2]``,
        ``depth``, ``size [P, 3]``, ``alpha``, ``vel [P, 2]``, ``conf`` logits. ``K, ida [M, 3, 3]``."""
        k = cls if out["ctr"].shape[2] > 1 else torch.zeros_like(cls)
        pick = lambda name: out[name][m, loc, k]  # noqa: E731
        stride, level = out["strides"][loc], out["levels"][loc]
        pix = out["locations"][loc] + pick("ctr") * stride[:, None]
        depth = self.depth(out["depth_raw"][m, loc, k], level, focal_length(K[m], ida[m]))
        size = self.canonical.to(depth.dtype)[cls] * pick("size_raw").exp()
        yaw = pick("yaw")
        return {"pix": pix, "depth": depth, "size": size, "alpha": torch.atan2(yaw[:, 0], yaw[:, 1]),
                "vel": pick("vel"), "conf": out["conf"][m, loc, k]}

    def boxes(self, p: dict, m: torch.Tensor, K: torch.Tensor, s2e: torch.Tensor, ida: torch.Tensor,
              bda: torch.Tensor | None) -> torch.Tensor:
        """``[P, 9]`` boxes from :meth:`parts` (augmented ego frame when ``bda [M, 4, 4]`` is given)."""
        one = lambda x: x[:, None]  # noqa: E731  each location is its own "camera" row
        return decode_boxes(one(p["pix"]), one(p["depth"]), one(p["size"]), one(p["alpha"]), one(p["vel"]),
                            K[m], s2e[m], ida[m], None if bda is None else bda[m])[:, 0]

    # --------------------------------------------------------------------------------------------------- loss
    def forward(self, out: dict, gt_boxes: list[torch.Tensor], gt_labels: list[torch.Tensor], K: torch.Tensor,
                sensor2ego: torch.Tensor, ida: torch.Tensor, bda: torch.Tensor, cam_mask: torch.Tensor | None
                ) -> dict[str, torch.Tensor]:
        """Losses (weighted) of one batch: ``K, ida [B, N, 3, 3]``, ``sensor2ego [B, N, 4, 4]``, ``bda [B, 4, 4]``."""
        cfg = self.cfg
        B, N = K.shape[:2]
        dt = torch.float64 if out["cls"].dtype == torch.float64 else torch.float32
        Kf, s2e, idaf = K.reshape(B * N, 3, 3).to(dt), sensor2ego.reshape(B * N, 4, 4).to(dt), ida.reshape(B * N, 3, 3).to(dt)
        bdaf = bda.to(dt)[:, None].expand(B, N, 4, 4).reshape(B * N, 4, 4)
        n = max(max((len(b) for b in gt_boxes), default=0), 1)
        boxes = torch.zeros(B, n, 9, dtype=dt, device=K.device)
        boxes[..., 3:6] = 1.0
        labels = torch.zeros(B, n, dtype=torch.long, device=K.device)
        real = torch.zeros(B, n, dtype=torch.bool, device=K.device)
        for b, (bx, lb) in enumerate(zip(gt_boxes, gt_labels)):
            boxes[b, : len(bx)], labels[b, : len(bx)], real[b, : len(bx)] = bx.to(dt), lb, True
        rep = lambda x: x[:, None].expand(B, N, *x.shape[1:]).reshape(B * N, *x.shape[1:])  # noqa: E731
        boxes, labels, real = rep(boxes), rep(labels), rep(real)
        cams = torch.ones(B * N, dtype=torch.bool, device=K.device) if cam_mask is None else cam_mask.reshape(-1).bool()
        proj = project_boxes(boxes, Kf, s2e, idaf, bdaf, self.image_hw, cfg.min_depth, cfg.max_depth)
        proj["valid"] = proj["valid"] & real & cams[:, None]
        locs = out["locations"].to(dt)
        idx, ltrb = assign_locations(locs, out["strides"].to(dt), out["levels"], proj, cfg.sizes_of_interest,
                                     cfg.center_radius, self.image_hw)
        pos = idx >= 0
        num_pos = _avg(pos.sum().to(dt)).clamp(min=1.0)
        cls_logits = out["cls"].to(dt)
        target = torch.zeros_like(cls_logits)
        m, loc = pos.nonzero(as_tuple=True)
        j = idx[m, loc]
        cls = labels[m, j]
        target[m, loc, cls] = 1.0
        l_cls = sigmoid_focal_loss(cls_logits[cams], target[cams], cfg.focal_alpha, cfg.focal_gamma,
                                   reduction="sum") / num_pos
        zero = cls_logits.sum() * 0
        if m.numel() == 0:
            return {"cls": l_cls, "box2d": zero, "ctrness": zero, "box3d": zero, "conf3d": zero, "vel": zero}
        t = ltrb[m, loc]
        lr, tb = t[:, [0, 2]], t[:, [1, 3]]
        ctr_t = ((lr.amin(-1) / lr.amax(-1)) * (tb.amin(-1) / tb.amax(-1))).sqrt()
        w_sum = _avg(ctr_t.sum()).clamp(min=1e-6)
        stride = out["strides"].to(dt)[loc]
        l_box2d = (giou_loss_ltrb(out["box2d"].to(dt)[m, loc], t / stride[:, None]) * ctr_t).sum() / w_sum
        l_ctr = F.binary_cross_entropy_with_logits(out["ctrness"].to(dt)[m, loc], ctr_t, reduction="sum") / num_pos
        # 3D: the disentangled corner loss in the key ego frame
        pred = self.parts({k: (v.to(dt) if torch.is_tensor(v) and v.is_floating_point() else v)
                           for k, v in out.items()}, m, loc, cls, Kf, idaf)
        gt = {"pix": proj["centre_pix"][m, j], "depth": proj["depth"][m, j], "size": proj["size"][m, j],
              "alpha": proj["alpha"][m, j], "vel": proj["vel"][m, j]}
        corners = lambda p: box_corners(self.boxes(p, m, Kf, s2e, idaf, None))  # noqa: E731
        gt_c = corners(gt)

        def corner_loss(p: dict) -> torch.Tensor:
            return F.smooth_l1_loss(corners(p), gt_c, beta=cfg.smooth_l1_beta, reduction="none").mean((-1, -2))

        groups = [corner_loss({**gt, key: pred[key]}).clamp(max=cfg.max_loss_per_group)
                  for key in ("pix", "depth", "size", "alpha")]
        l_box3d = (torch.stack(groups).sum(0) * ctr_t).sum() / w_sum
        with torch.no_grad():
            conf_t = torch.exp(-corner_loss({**pred, "vel": gt["vel"]}) / cfg.conf3d_temperature)
        l_conf = (F.binary_cross_entropy_with_logits(pred["conf"], conf_t, reduction="none") * ctr_t).sum() / w_sum
        ok = torch.isfinite(gt["vel"])
        l_vel = ((pred["vel"] - torch.nan_to_num(gt["vel"])).abs() * ok).sum(-1)
        l_vel = (l_vel * ctr_t).sum() / w_sum
        return {"cls": l_cls, "box2d": l_box2d, "ctrness": l_ctr, "box3d": cfg.box3d_weight * l_box3d,
                "conf3d": cfg.conf3d_weight * l_conf, "vel": cfg.velocity_weight * l_vel,
                "num_pos": pos.sum().detach().to(dt)}
