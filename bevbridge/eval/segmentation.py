"""BEV map segmentation IoU with BEVFusion's protocol: TP/FP/FN over the whole split at several thresholds.

For every class c and threshold t, a cell is predicted positive when ``prob >= t`` (the comparison runs in the
probabilities' dtype, as in BEVFusion). TP, FP and FN are summed over every cell of every sample of the split (int64,
on the inputs' device), and only then ``IoU_c(t) = TP / (TP + FP + FN)``. Reported (keys of :meth:`compute`):

- ``IoU@<t>/<class>`` for every threshold (``IoU@0.35/walkway``, ..., ``IoU@0.5/walkway``, ...);
- ``IoU@max/<class>`` = max over thresholds of the split-level IoU (BEVFusion's ``iou@max``, the number the CTAB,
  BEVFusion and BridgeTA tables report), and ``threshold@max/<class>``, the threshold that reached it;
- ``mIoU@max`` / ``mIoU@0.5``: the mean over all of this meter's classes (BEVFusion's ``map/mean/iou@max``);
- ``mIoU-7@max`` / ``mIoU-7@0.5`` over drivable_area, carpark_area, ped_crossing, walkway, stop_line, divider,
  vehicle (CTAB Sec. IV-A) and ``mIoU-4@max`` / ``mIoU-4@0.5`` over drivable_area, ped_crossing, walkway, vehicle
  (CTAB Table 1, for comparison with BEVCar). "@max" and "@0.5" never mix: each key says which it is.

A class with no GT and no predicted cell in the whole split has an undefined IoU: it is NaN here (BEVFusion reports
0), and every mean containing it is omitted. A mean whose classes are not all among the meter's classes is omitted
too; :meth:`omitted` gives the reason for each omitted mean, and :meth:`format_table` prints them.

Distributed: the counts are plain tensors (:attr:`counts`, ``[3, C, T]`` = tp, fp, fn); :meth:`all_reduce` sums them
over ranks in place, :meth:`merge` adds another meter's.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import torch

__all__ = ["DEFAULT_THRESHOLDS", "MIOU_SUBSETS", "SegmentationMeter"]

log = logging.getLogger(__name__)

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.35, 0.40, 0.45, 0.50, 0.55, 0.60, 0.65)
MIOU_SUBSETS: dict[str, tuple[str, ...]] = {
    "mIoU-7": ("drivable_area", "carpark_area", "ped_crossing", "walkway", "stop_line", "divider", "vehicle"),
    "mIoU-4": ("drivable_area", "ped_crossing", "walkway", "vehicle"),
}


def _tkey(t: float) -> str:
    return f"{t:g}"


class SegmentationMeter:
    """Accumulates split-level TP/FP/FN of multi-label BEV masks at several thresholds.

    >>> meter = SegmentationMeter(["drivable_area", "ped_crossing", "walkway", "vehicle"])
    >>> meter.update(probs, gt)          # probs float [B, C, H, W] in [0, 1]; gt {0, 1} or bool [B, C, H, W]
    >>> meter.all_reduce()               # under torch.distributed, before compute
    >>> meter.compute()["mIoU-4@max"]
    """

    def __init__(self, class_names: Sequence[str], thresholds: Sequence[float] = DEFAULT_THRESHOLDS):
        self.class_names = tuple(class_names)
        self.thresholds = tuple(float(t) for t in thresholds)
        if not self.class_names or len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names must be non-empty and unique, got {self.class_names}")
        if not self.thresholds or any(not 0.0 < t < 1.0 for t in self.thresholds):
            raise ValueError(f"thresholds must be in (0, 1), got {self.thresholds}")
        self.counts = torch.zeros(3, len(self.class_names), len(self.thresholds), dtype=torch.int64)

    def reset(self) -> None:
        self.counts = torch.zeros_like(self.counts)

    @torch.no_grad()
    def update(self, probs: torch.Tensor, gt: torch.Tensor) -> None:
        """Add a batch: ``probs [B, C, H, W]`` sigmoid probabilities, ``gt [B, C, H, W]`` binary masks."""
        C = len(self.class_names)
        if probs.ndim != 4 or probs.shape[1] != C or probs.shape != gt.shape:
            raise ValueError(f"SegmentationMeter.update: probs {tuple(probs.shape)} and gt {tuple(gt.shape)} must "
                             f"both be [B, {C}, H, W] ({', '.join(self.class_names)})")
        if not probs.is_floating_point():
            raise ValueError(f"SegmentationMeter.update: probs must be floating point, got {probs.dtype}")
        if probs.numel() and (probs.min() < 0 or probs.max() > 1):
            raise ValueError("SegmentationMeter.update: probs must lie in [0, 1] (apply sigmoid to logits first)")
        if gt.dtype != torch.bool:
            if gt.numel() and ((gt != 0) & (gt != 1)).any():
                raise ValueError("SegmentationMeter.update: gt must be binary (0/1 or bool)")
            gt = gt != 0
        if self.counts.device != probs.device:
            self.counts = self.counts.to(probs.device)
        p = probs.detach().transpose(0, 1).reshape(C, -1)  # [C, N]
        g = gt.transpose(0, 1).reshape(C, -1)
        gt_pos = g.sum(1, dtype=torch.int64)  # [C]
        for k, t in enumerate(self.thresholds):
            pred = p >= t
            tp = (pred & g).sum(1, dtype=torch.int64)
            self.counts[0, :, k] += tp
            self.counts[1, :, k] += pred.sum(1, dtype=torch.int64) - tp
            self.counts[2, :, k] += gt_pos - tp

    def merge(self, other: SegmentationMeter) -> SegmentationMeter:
        """Add another meter's counts (same classes and thresholds); returns self."""
        if (other.class_names, other.thresholds) != (self.class_names, self.thresholds):
            raise ValueError("SegmentationMeter.merge: the meters have different classes or thresholds")
        self.counts = self.counts + other.counts.to(self.counts.device)
        return self

    def all_reduce(self, group=None) -> None:
        """Sum the counts over all ranks (no-op outside ``torch.distributed``). Counts must be on a device the
        backend supports (NCCL: the GPU the inputs came from)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.counts, op=dist.ReduceOp.SUM, group=group)

    def ious(self) -> torch.Tensor:
        """``[C, T]`` float64 split-level IoU; NaN where a class has no GT and no prediction at a threshold."""
        tp, fp, fn = self.counts.double().cpu()
        union = tp + fp + fn
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))

    def _evaluate(self) -> tuple[dict[str, float], dict[str, str]]:
        """(metrics, omitted means -> reason)."""
        iou = self.ious()
        metrics: dict[str, float] = {}
        omitted: dict[str, str] = {}
        per: dict[str, list[float]] = {}
        for i, c in enumerate(self.class_names):
            if torch.isnan(iou[i]).all():
                best, thr = math.nan, math.nan
            else:
                k = int(iou[i].nan_to_num(-1.0).argmax())
                best, thr = float(iou[i, k]), self.thresholds[k]
            per.setdefault("max", []).append(best)
            metrics[f"IoU@max/{c}"] = best
            metrics[f"threshold@max/{c}"] = thr
        for k, t in enumerate(self.thresholds):
            per[_tkey(t)] = [float(v) for v in iou[:, k]]
            metrics.update({f"IoU@{_tkey(t)}/{c}": float(iou[i, k]) for i, c in enumerate(self.class_names)})
        if "0.5" not in per:
            omitted["@0.5"] = f"0.5 is not among the thresholds {self.thresholds}"
        subsets = {"mIoU": self.class_names, **MIOU_SUBSETS}
        for red in ("max", "0.5"):
            if red not in per:
                continue
            value = dict(zip(self.class_names, per[red]))
            for name, classes in subsets.items():
                absent = [c for c in classes if c not in value]
                undefined = [c for c in classes if c in value and math.isnan(value[c])]
                if absent:
                    omitted[f"{name}@{red}"] = f"classes not evaluated by this meter: {', '.join(absent)}"
                elif undefined:
                    omitted[f"{name}@{red}"] = f"no GT and no prediction in the whole split for {', '.join(undefined)}"
                else:
                    metrics[f"{name}@{red}"] = sum(value[c] for c in classes) / len(classes)
        return metrics, omitted

    def compute(self) -> dict[str, float]:
        """Every metric as a flat ``{key: float}`` (keys in the module docstring); omitted means are absent."""
        metrics, omitted = self._evaluate()
        for key, why in omitted.items():
            log.debug("%s omitted: %s", key, why)
        return metrics

    def omitted(self) -> dict[str, str]:
        """Omitted means (e.g. ``"mIoU-7@max"``) -> why."""
        return self._evaluate()[1]

    def format_table(self) -> str:
        """Per-class IoU@max and IoU@0.5, the means, and why any mean is omitted."""
        m = self.compute()

        def f(v: float | None) -> str:
            return "   n/a" if v is None or math.isnan(v) else f"{100 * v:6.1f}"

        lines = [f"{'class':<16}{'IoU@max':>9}{'(thr)':>7}{'IoU@0.5':>9}"]
        for c in self.class_names:
            thr = m[f"threshold@max/{c}"]
            lines.append(f"{c:<16}{f(m[f'IoU@max/{c}']):>9}{'' if math.isnan(thr) else f'{thr:.2f}':>7}"
                         f"{f(m.get(f'IoU@0.5/{c}')):>9}")
        for name in ("mIoU", *MIOU_SUBSETS):
            lines.append(f"{name:<16}{f(m.get(f'{name}@max')):>9}{'':>7}{f(m.get(f'{name}@0.5')):>9}")
        lines += [f"{k} omitted: {why}" for k, why in self.omitted().items()]
        return "\n".join(lines)
