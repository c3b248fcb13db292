"""CenterPoint's detection head (Yin et al. 2021) as RCBEVDet configures it (../shared/notes/anchor-facts.md).

``forward(bev [B, C, H, W]) -> list`` (one dict per task) of raw maps: ``reg [B,2,H,W]`` (sub-cell offset),
``height [B,1]`` (z of the centre), ``dim [B,3]`` (log l, w, h), ``rot [B,2]`` (sin, cos yaw), ``vel [B,2]``,
``heatmap [B, n_task_classes]`` (logits). A shared 3x3 conv-BN-ReLU (C -> 64) then, per task and per output, a
3x3 conv-BN-ReLU (64 -> 64) and a 3x3 conv to the output; heatmap biases start at -2.19 (prior 0.1).

Losses (``loss``): Gaussian focal loss on the clamped-sigmoid heatmap, normalised by the number of objects
(averaged over the processes under torch.distributed, as mmdet3d >= 1.x; weight 6.0), and L1 on the 10-d box code at the object centres, normalised by the number of objects (weight 1.5).
Targets and decoding use ``bevbridge.ops.box_coder`` on the head's BEVGrid (RCBEVDet: 0.8 m cells).
Parameter names follow mmdet3d (shared_conv.conv/bn, task_heads.i.<name>.0.conv/bn, .1) for checkpoint loading.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SeparateHead", "CenterHeadNet", "CenterHead", "COMMON_HEADS"]

COMMON_HEADS: dict[str, int] = {"reg": 2, "height": 1, "dim": 3, "rot": 2, "vel": 2}


class _ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


class SeparateHead(nn.Module):
    """One task's output branches: ``{name: [B, out, H, W]}``."""

    def __init__(self, in_channels: int, heads: dict[str, int], head_conv: int = 64, final_kernel: int = 3,
                 init_bias: float = -2.19):
        super().__init__()
        self.names = list(heads)
        for name, out in heads.items():
            final = nn.Conv2d(head_conv, out, final_kernel, padding=final_kernel // 2)
            branch = nn.Sequential(_ConvBNReLU(in_channels, head_conv, final_kernel), final)
            if name == "heatmap":
                nn.init.constant_(final.bias, init_bias)
            else:
                for m in branch.modules():  # mmdet3d SeparateHead.init_weights: mmcv kaiming_init (bias 0)
                    if isinstance(m, nn.Conv2d):
                        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                        if m.bias is not None:
                            nn.init.zeros_(m.bias)
            setattr(self, name, branch)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name)(x) for name in self.names}


class CenterHeadNet(nn.Module):
    """``forward(bev [B, C, H, W]) -> list[dict[str, Tensor]]``, one dict per task (see the module docstring)."""

    def __init__(self, in_channels: int, task_sizes: list[int], share_conv_channels: int = 64,
                 init_bias: float = -2.19, common_heads: dict[str, int] | None = None):
        super().__init__()
        heads = dict(common_heads or COMMON_HEADS)
        self.shared_conv = _ConvBNReLU(in_channels, share_conv_channels)
        self.task_heads = nn.ModuleList(
            SeparateHead(share_conv_channels, {**heads, "heatmap": n}, share_conv_channels, 3, init_bias)
            for n in task_sizes)

    def forward(self, bev: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        x = self.shared_conv(bev)
        return [head(x) for head in self.task_heads]


def _mean_over_processes(x: torch.Tensor) -> torch.Tensor:
    """``x`` averaged over the processes of a torch.distributed job (mmdet's ``reduce_mean``); ``x`` alone otherwise.

    mmdet3d >= 1.x divides the heatmap loss by the number of positives averaged over the GPUs, so that every rank's
    loss has the same normaliser (a rank with few objects does not weigh its few positives up)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()


# ------------------------------------------------------------------------------------------- targets, loss, predict
class CenterHead(nn.Module):
    """CenterHeadNet + CenterPoint targets/loss/decoding over class ``tasks`` (names from DETECTION_CLASSES).

    ``loss(outputs, gt_boxes, gt_labels)`` -> ``{"heatmap": ..., "bbox": ...}`` (weighted, summed over tasks);
    ``predict(outputs)`` -> per sample ``(boxes [k, 9], scores [k], labels [k])`` with labels indexing
    ``class_names``; NMS per task: ``"scale"`` (BEVDet's scale-NMS, RCBEVDet's choice), ``"rotate"`` or ``"circle"``.

    Args:
        in_channels: BEV feature channels. ``tasks``: class-name groups, one heatmap head each. ``class_names``: the
            global label order (DETECTION_CLASSES). ``grid``: the BEVGrid of the input features.
        share_conv_channels, init_bias: the shared 3x3 conv's width and the heatmap bias init (-2.19).
        heatmap_weight, bbox_weight, code_weights: Gaussian focal weight (6.0), L1 weight (1.5), per-code weights.
        gaussian_overlap, min_radius, max_objs: CenterPoint target settings.
        score_threshold, nms, nms_threshold, pre_max_size, post_max_size, scale_factors, circle_radii,
            post_center_range: decoding and NMS settings.
        sync_num_positives: divide the heatmap loss by the number of positives averaged over the processes of a
            torch.distributed job (mmdet3d >= 1.x's ``reduce_mean``; True) or by this process's own count (mmdet3d
            1.0 and a single process's gradient accumulation; False).
    """

    def __init__(self, in_channels: int, tasks: tuple[tuple[str, ...], ...], class_names: tuple[str, ...],
                 grid, *, share_conv_channels: int = 64, init_bias: float = -2.19, heatmap_weight: float = 6.0,
                 bbox_weight: float = 1.5, code_weights: tuple[float, ...] = (1.0,) * 10,
                 gaussian_overlap: float = 0.1, min_radius: int = 2, max_objs: int = 500,
                 score_threshold: float = 0.1, nms: str = "scale", nms_threshold: float = 0.2,
                 pre_max_size: int = 1000, post_max_size: int = 500, scale_factors: dict[str, float] | None = None,
                 circle_radii: tuple[float, ...] = (4.0,), post_center_range: tuple[float, ...] | None = None,
                 sync_num_positives: bool = True):
        super().__init__()
        self.sync_num_positives = sync_num_positives
        from bevbridge.ops.box_coder import CenterPointCoder

        unknown = [c for t in tasks for c in t if c not in class_names]
        if unknown:
            raise ValueError(f"head task class {unknown[0]!r} is not one of {class_names}")
        self.tasks = tuple(tuple(t) for t in tasks)
        self.class_names = tuple(class_names)
        self.net = CenterHeadNet(in_channels, [len(t) for t in self.tasks], share_conv_channels, init_bias)
        self.coders = [CenterPointCoder(grid=grid, num_classes=len(t), gaussian_overlap=gaussian_overlap,
                                        min_radius=min_radius, max_objs=max_objs, max_num=post_max_size,
                                        score_threshold=score_threshold, post_center_range=post_center_range)
                       for t in self.tasks]
        # global class index -> (task, index inside the task); -1 for classes no task predicts
        task_of = torch.full((len(class_names),), -1, dtype=torch.long)
        index_in = torch.full((len(class_names),), -1, dtype=torch.long)
        for ti, t in enumerate(self.tasks):
            for ci, name in enumerate(t):
                task_of[class_names.index(name)] = ti
                index_in[class_names.index(name)] = ci
        self.register_buffer("task_of", task_of, persistent=False)
        self.register_buffer("index_in", index_in, persistent=False)
        self.register_buffer("code_weights", torch.tensor(code_weights, dtype=torch.float32), persistent=False)
        self.heatmap_weight, self.bbox_weight = heatmap_weight, bbox_weight
        self.nms, self.nms_threshold = nms, nms_threshold
        self.pre_max_size, self.post_max_size = pre_max_size, post_max_size
        factors = scale_factors or {}
        self.scale_factors = [[factors.get(c, 1.0) for c in t] for t in self.tasks]
        if nms == "circle" and len(circle_radii) != len(self.tasks):
            raise ValueError(f"circle NMS needs one radius per task ({len(self.tasks)}), got {circle_radii}")
        self.circle_radii = tuple(circle_radii)

    def forward(self, bev: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return self.net(bev)

    def loss(self, outputs: list[dict[str, torch.Tensor]], gt_boxes: list[torch.Tensor],
             gt_labels: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        from bevbridge.losses.focal import gaussian_focal_loss

        heat_total = outputs[0]["heatmap"].new_zeros(())
        bbox_total = outputs[0]["heatmap"].new_zeros(())
        for ti, (out, coder) in enumerate(zip(outputs, self.coders)):
            boxes, labels = [], []
            for b, lab in zip(gt_boxes, gt_labels):
                sel = self.task_of[lab] == ti
                boxes.append(b[sel].float())
                labels.append(self.index_in[lab[sel]])
            t = coder.encode(boxes, labels)
            pred_heat = out["heatmap"].float().sigmoid().clamp(1e-4, 1 - 1e-4)
            num_pos = t.heatmap.eq(1).float().sum()
            num_pos = (_mean_over_processes(num_pos) if self.sync_num_positives else num_pos).clamp(min=1.0)
            heat_total = heat_total + gaussian_focal_loss(pred_heat, t.heatmap, avg_factor=num_pos)
            pred_box = torch.cat([out[k] for k in ("reg", "height", "dim", "rot", "vel")], 1).float()  # [B, 10, H, W]
            B = pred_box.shape[0]
            gathered = torch.gather(pred_box.flatten(2), 2, t.inds[:, None, :].expand(-1, 10, -1)).transpose(1, 2)
            mask = t.mask.float() * (~torch.isnan(t.anno_box)).all(-1).float()
            weights = mask[..., None] * self.code_weights
            target = torch.nan_to_num(t.anno_box)
            bbox_total = bbox_total + ((gathered - target).abs() * weights).sum() / (mask.sum() + 1e-4)
        return {"heatmap": self.heatmap_weight * heat_total, "bbox": self.bbox_weight * bbox_total}

    @torch.no_grad()
    def predict(self, outputs: list[dict[str, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        from bevbridge.ops.nms import circle_nms, nms_rotated, scale_nms

        per_sample: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = []
        for ti, (out, coder) in enumerate(zip(outputs, self.coders)):
            decoded = coder.decode(out["heatmap"].float().sigmoid(), out["reg"].float(), out["height"].float(),
                                   out["dim"].float(), out["rot"].float(), out["vel"].float())
            task_global = torch.tensor([self.class_names.index(c) for c in self.tasks[ti]], device=self.task_of.device)
            for b, (boxes, scores, labels) in enumerate(decoded):
                if self.nms == "scale":
                    keep = scale_nms(boxes, scores, labels, self.nms_threshold, self.scale_factors[ti],
                                     pre_max=self.pre_max_size, post_max=self.post_max_size)
                elif self.nms == "rotate":
                    keep = nms_rotated(boxes, scores, self.nms_threshold, None, self.pre_max_size, self.post_max_size)
                else:
                    keep = circle_nms(boxes[:, :2], scores, self.circle_radii[ti], None, self.post_max_size)
                if len(per_sample) <= b:
                    per_sample.append([])
                per_sample[b].append((boxes[keep], scores[keep], task_global[labels[keep]]))
        results = []
        for parts in per_sample:
            boxes, scores, labels = (torch.cat(x) for x in zip(*parts))
            order = scores.argsort(descending=True)[: self.post_max_size]
            results.append((boxes[order], scores[order], labels[order]))
        return results
