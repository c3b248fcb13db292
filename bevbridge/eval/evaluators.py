"""The evaluator slots: one per task the four papers report, each an adapter from the engine's evaluator protocol
(reset / update(preds, batch) / compute; engine/eval_loop.py) to the metrics in bevbridge/eval.

=================  ==========================  ===================================================================
``eval.evaluators`` class                      metrics (logged as ``<slot>/<metric>``)
=================  ==========================  ===================================================================
detection          ``DetectionEvaluator``      devkit results JSON (global frame) -> the official DetectionEval:
                                               mAP, NDS, the five TP errors, per-class AP (CTAB, BEVFormer, MTA)
segmentation       ``SegmentationEvaluator``   ``SegmentationMeter``: IoU@max, IoU@0.5 per class and their means
                                               (CTAB, BridgeTA), on the grid of ``eval.seg_protocol``
captioning         ``CaptioningEvaluator``     ``CaptionMeter``: m@IoU=k with BLEU-4, METEOR, ROUGE-L, CIDEr (MTA)
=================  ==========================  ===================================================================

``DetectionExporter`` only writes the results JSON (``bevbridge infer``); for a captioning model
``CaptionedDetectionExporter`` also writes the captioned boxes with their captions beside it.

Each evaluator says which metric names it can produce before it runs (``metric_names()``), so a misspelt
``eval.best_metric`` is refused before the first training step (engine/best.py) instead of never keeping a best
checkpoint.

Predictions arrive in the batch's (possibly augmented) ego frame (models/contract.py); the BEV augmentation is undone
here before export.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bevbridge.data.batch import Batch
from bevbridge.geometry import BEVGrid, invert_transform, transform_boxes
from bevbridge.models.contract import Prediction

__all__ = ["DetectionEvaluator", "SegmentationEvaluator", "CaptioningEvaluator", "DetectionExporter",
           "CaptionedDetectionExporter"]

log = logging.getLogger(__name__)


def _unaugmented(pred: Prediction, bda: torch.Tensor) -> torch.Tensor:
    boxes = pred.boxes if pred.boxes is not None else torch.zeros(0, 9)
    if len(boxes) == 0 or torch.allclose(bda, torch.eye(4, dtype=bda.dtype)):
        return boxes
    return transform_boxes(invert_transform(bda.double()), boxes.double()).float()


class _ResultsCollector:
    def __init__(self, dataroot: str | Path, version: str, split: str):
        self.dataroot, self.version, self.split = Path(dataroot), version, split
        self._nusc = None
        self.reset()

    @property
    def nusc(self):
        if self._nusc is None:
            from bevbridge.eval.detection import load_nuscenes

            self._nusc = load_nuscenes(self.dataroot, self.version)
        return self._nusc

    def reset(self) -> None:
        from bevbridge.eval.detection_export import DetectionResults

        self.results = DetectionResults()

    def update(self, preds: list[Prediction], batch: Batch) -> None:
        for i, p in enumerate(preds):
            boxes = _unaugmented(p, batch.bda[i])
            empty = torch.zeros(0)
            self.results.add(p.token, boxes, p.scores if p.scores is not None else empty,
                             p.labels if p.labels is not None else empty.long(), batch.ego2global[i])

    def write(self, path: Path) -> Path:
        from bevbridge.eval.detection import split_sample_tokens

        tokens = split_sample_tokens(self.nusc, self.split)
        return self.results.write(path, tokens, meta={"use_camera": True, "use_radar": True})


class DetectionEvaluator(_ResultsCollector):
    """Official nuScenes detection metrics of the split; keeps results_nusc.json in ``out_dir`` if given."""

    def __init__(self, dataroot: str | Path, version: str, split: str, out_dir: str | Path | None = None):
        super().__init__(dataroot, version, split)
        self.out_dir = Path(out_dir) if out_dir is not None else None

    @staticmethod
    def metric_names() -> list[str]:
        """What :meth:`compute` returns (bevbridge.eval.detection.evaluate_detections)."""
        from bevbridge.data.batch import DETECTION_CLASSES
        from bevbridge.eval.detection import TP_NAMES

        tp = list(TP_NAMES.values())
        return (["mAP", "NDS", *(f"m{s}" for s in tp)] + [f"AP/{c}" for c in DETECTION_CLASSES]
                + [f"{s}/{c}" for c in DETECTION_CLASSES for s in tp] + ["num_samples"])

    def compute(self) -> dict[str, Any]:
        from bevbridge.eval.detection import evaluate_detections

        with tempfile.TemporaryDirectory(prefix="bevbridge-det-") as tmp:
            path = self.write((self.out_dir or Path(tmp)) / "results_nusc.json")
            metrics = evaluate_detections(path, nusc=self.nusc, split=self.split)
        return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


class DetectionExporter(_ResultsCollector):
    """Writes the devkit results JSON to ``out`` on ``compute()``."""

    def __init__(self, dataroot: str | Path, version: str, split: str, out: str | Path):
        super().__init__(dataroot, version, split)
        self.out = Path(out)

    def compute(self) -> dict[str, Any]:
        path = self.write(self.out)
        log.info("wrote %d samples' predictions to %s", len(self.results), path)
        return {"num_samples": len(self.results)}


class CaptionedDetectionExporter(DetectionExporter):
    """``DetectionExporter`` + ``<out stem>_captions.json``: per sample token, the captioned boxes (devkit records in
    the global frame, as the results file) each with its ``"caption"`` (``Prediction.caption_boxes`` and
    ``captions``; TOD3Cap's top-k detections)."""

    def __init__(self, dataroot: str | Path, version: str, split: str, out: str | Path):
        super().__init__(dataroot, version, split, out)
        self.captions_out = self.out.with_name(self.out.stem + "_captions.json")

    def reset(self) -> None:
        super().reset()
        self.captioned: dict[str, list[dict]] = {}

    def update(self, preds: list[Prediction], batch: Batch) -> None:
        super().update(preds, batch)
        from bevbridge.eval.detection_export import boxes_to_devkit

        for i, p in enumerate(preds):
            if p.caption_boxes is None or p.captions is None:
                raise ValueError("CaptionedDetectionExporter: the model's predictions carry no caption boxes")
            boxes = _unaugmented(Prediction(p.token, boxes=p.caption_boxes), batch.bda[i])
            scores = p.extras.get("caption_scores", torch.ones(len(boxes)))
            labels = p.extras.get("caption_labels", torch.zeros(len(boxes), dtype=torch.long))
            order = np.argsort(-scores.double().cpu().numpy().reshape(-1), kind="stable")  # as boxes_to_devkit
            records = boxes_to_devkit(p.token, boxes, scores, labels, batch.ego2global[i], max_boxes=len(boxes))
            self.captioned[p.token] = [{**r, "caption": p.captions[j]} for r, j in zip(records, order)]

    def compute(self) -> dict[str, Any]:
        import json

        from bevbridge.atomic import atomic_write_text

        out = super().compute()
        atomic_write_text(self.captions_out, json.dumps({"results": self.captioned}, indent=1))
        log.info("wrote the captions of %d samples to %s", len(self.captioned), self.captions_out)
        return {**out, "num_captioned": sum(len(v) for v in self.captioned.values())}


class CaptioningEvaluator:
    """Dense-captioning m@IoU=k over the split (bevbridge.eval.captioning.CaptionMeter, MTA Sec. 4.1).

    Ground truth: the batch's boxes with their captions (``batch.captions``, one per box, TOD3Cap's "The object is
    ignored" where the caption file has none); predictions: ``Prediction.caption_boxes`` (or, when unset,
    ``Prediction.boxes``) with ``Prediction.captions``, in the same (unaugmented at evaluation) ego frame.
    """

    def __init__(self, iou_mode: str = "3d"):
        from bevbridge.eval.captioning import CaptionMeter

        self.iou_mode = iou_mode
        self.meter = CaptionMeter(iou_mode)

    def reset(self) -> None:
        from bevbridge.eval.captioning import CaptionMeter

        self.meter = CaptionMeter(self.iou_mode)

    def metric_names(self) -> list[str]:
        """What :meth:`compute` returns (CaptionMeter.compute)."""
        from bevbridge.eval.captioning import CAPTION_METRICS

        ks = [f"{k:g}" for k in self.meter.iou_thresholds]
        return ["num_gt"] + [f"{m}@{k}" for k in ks for m in CAPTION_METRICS] + [f"recall@{k}" for k in ks]

    def update(self, preds: list[Prediction], batch: Batch) -> None:
        if batch.captions is None:
            raise ValueError("captioning evaluation needs ground-truth captions: the batch has none (data.captions)")
        for i, p in enumerate(preds):
            gt = batch.gt_boxes[i]
            if len(gt) == 0:
                continue
            boxes = p.caption_boxes if p.caption_boxes is not None else p.boxes
            boxes = boxes if boxes is not None else torch.zeros(0, 9)
            captions = p.captions if p.captions is not None else []
            self.meter.update(gt.double().numpy(), batch.captions[i], boxes.double().numpy(), captions,
                              batch.gt_labels[i].tolist() if batch.gt_labels else None)

    def compute(self) -> dict[str, Any]:
        return self.meter.compute()


class SegmentationEvaluator:
    """BEV map segmentation IoU over the split (bevbridge.eval.segmentation.SegmentationMeter), counted on the grid
    and at the thresholds of ``protocol`` (bevbridge/eval/seg_protocol.py: "native" = the model's own ``grid``,
    "bevcar" = BEVCar's 100 m at 0.5 m). :meth:`protocol` says which, for metrics.json."""

    def __init__(self, class_names: tuple[str, ...], grid: BEVGrid | None = None, protocol: str = "native"):
        from bevbridge.eval.seg_protocol import seg_protocol
        from bevbridge.eval.segmentation import SegmentationMeter

        self.native_grid, self.seg_protocol = grid, seg_protocol(protocol)
        self.eval_grid = self.seg_protocol.eval_grid(grid)
        if grid is None and self.seg_protocol.grid is not None:
            raise ValueError(f"eval.seg_protocol={protocol!r} resamples onto another grid: the evaluator needs the "
                             "model's map grid (DataNeeds.map_grid)")
        self.meter = SegmentationMeter(class_names, self.seg_protocol.thresholds)

    def protocol(self) -> dict[str, Any]:
        """The protocol, the grid scored (range, resolution, shape) and the thresholds (seg_protocol.describe)."""
        return self.seg_protocol.describe(self.native_grid)

    def reset(self) -> None:
        self.meter.reset()

    def metric_names(self) -> list[str]:
        """What :meth:`compute` may return (SegmentationMeter: per class, per threshold, and the means whose classes
        are all evaluated; a mean is still omitted at run time when one of its classes is absent from the split)."""
        from bevbridge.eval.segmentation import MIOU_SUBSETS

        m = self.meter
        ts = [f"{t:g}" for t in m.thresholds]
        names = [f"{what}/{c}" for c in m.class_names for what in ("IoU@max", "threshold@max")]
        names += [f"IoU@{t}/{c}" for t in ts for c in m.class_names]
        subsets = ["mIoU"] + [k for k, classes in MIOU_SUBSETS.items() if set(classes) <= set(m.class_names)]
        return names + [f"{s}@{red}" for s in subsets for red in ("max", "0.5") if red == "max" or red in ts]

    def update(self, preds: list[Prediction], batch: Batch) -> None:
        if batch.gt_masks is None:
            raise ValueError("segmentation evaluation needs map targets: the batch has no gt_masks")
        probs = torch.stack([p.seg_probs for p in preds])
        gt = batch.gt_masks.to(probs.device)
        if self.eval_grid != self.native_grid:
            from bevbridge.eval.seg_protocol import to_protocol_grid

            probs, gt = to_protocol_grid(probs, gt, self.native_grid, self.eval_grid)
        self.meter.update(probs, gt)

    def compute(self) -> dict[str, Any]:
        return {k: v for k, v in self.meter.compute().items() if isinstance(v, (int, float))}
