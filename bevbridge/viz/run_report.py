"""Figures and the HTML report of a trained multi-task run (what `make demo` writes to runs/demo/).

- ``bev_<i>.png``: CTAB Fig. 4 style, per validation sample: ground truth | prediction, each with map masks,
  3D boxes coloured by class and radar points (orange).
- ``cameras_<i>.png``: the six camera images with GT boxes (thin) and predicted boxes (thick) projected.
- ``gates.png``: CTAB gate evolution (Fig. 3); ``per_class_iou.png``: per-class IoU (Fig. 5);
  ``losses.png``: training curves; ``index.html`` links everything with the metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from bevbridge.atomic import atomic_path
from bevbridge.data.batch import DETECTION_CLASSES, Batch, collate
from bevbridge.geometry import BEVGrid
from bevbridge.viz.bev import render_bev
from bevbridge.viz.camera import draw_boxes_on_image, draw_points_on_image
from bevbridge.viz.plots import plot_gate_evolution, plot_loss_curves, plot_per_class_iou
from bevbridge.viz.report import write_report

__all__ = ["write_png", "render_samples", "render_run_report"]


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    import cv2

    with atomic_path(path) as tmp:
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
        if not ok:
            raise RuntimeError(f"could not encode {path}")
        tmp.write_bytes(buf.tobytes())
    return Path(path)


def _label(img: np.ndarray, text: str) -> np.ndarray:
    import cv2

    bar = np.full((22, img.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, img], 0)


def _hstack(images: Sequence[np.ndarray], gap: int = 6) -> np.ndarray:
    h = max(i.shape[0] for i in images)
    padded = [np.pad(i, ((0, h - i.shape[0]), (0, gap), (0, 0)), constant_values=255) for i in images]
    return np.concatenate(padded, 1)


@torch.no_grad()
def render_samples(model, dataset, indices: Sequence[int], out_dir: Path, seg_grid: BEVGrid | None,
                   min_score: float = 0.3) -> list[tuple[str, str]]:
    """BEV and camera figures for ``dataset[indices]`` (ground truth, and the model's predictions unless ``model``
    is None); returns ``[(file name, caption)]``."""
    figures = []
    if model is not None:
        model.eval()
        device = next(model.parameters()).device
    for j, idx in enumerate(indices):
        batch: Batch = collate([dataset[idx]])
        boxes, scores, labels, seg_probs = np.zeros((0, 9)), np.zeros(0), np.zeros(0, int), None
        if model is not None:
            on_device = batch.to(device)
            pred = model.predict(model(on_device), on_device)[0]
            boxes, scores, labels = (t.cpu().numpy() for t in (pred.boxes, pred.scores, pred.labels))
            seg_probs = None if pred.seg_probs is None else pred.seg_probs.cpu().numpy()
        gt_boxes, gt_labels = batch.gt_boxes[0].numpy(), batch.gt_labels[0].numpy()
        radar = None
        if batch.radar is not None:
            radar = batch.radar[0][batch.radar_mask[0]].numpy()
        grid = seg_grid or getattr(model, "grid", None) or BEVGrid.square(51.2, 0.512)
        masks = batch.gt_masks[0].numpy() if batch.gt_masks is not None else None
        panels = [_label(render_bev(masks, batch.mask_classes, grid, gt_boxes, gt_labels, DETECTION_CLASSES,
                                    radar_xy=radar, min_score=0.0), "ground truth")]
        if model is not None:
            panels.append(_label(render_bev(seg_probs, batch.mask_classes, grid, boxes, labels, DETECTION_CLASSES,
                                            radar_xy=radar, scores=scores, min_score=min_score),
                                 f"prediction (score > {min_score})"))
        name = f"bev_{j}.png"
        write_png(out_dir / name, _hstack(panels))
        figures.append((name, f"Sample {batch.tokens[0][:8]}: BEV ground truth" + (" vs prediction" if model else "")
                        + " (map masks, boxes by class, radar points in orange); x forward = up."))
        views = []
        keep = scores >= min_score
        for c, cam in enumerate(batch.cam_names):
            img = np.ascontiguousarray(batch.images[0, c].permute(1, 2, 0).numpy())
            K, s2e, ida = batch.K[0, c].numpy(), batch.sensor2ego[0, c].numpy(), batch.ida[0, c].numpy()
            if radar is not None:
                draw_points_on_image(img, radar[:, :3], K, s2e, ida, radius=1)
            draw_boxes_on_image(img, gt_boxes, gt_labels, DETECTION_CLASSES, K, s2e, ida, thickness=1)
            draw_boxes_on_image(img, boxes[keep], labels[keep], DETECTION_CLASSES, K, s2e, ida, thickness=2)
            views.append(_label(img, cam))
        half = (len(views) + 1) // 2
        rest = views[half:] + [np.full_like(views[0], 255)] * (half - len(views[half:]))
        name = f"cameras_{j}.png"
        write_png(out_dir / name, np.concatenate([_hstack(views[:half]), _hstack(rest)], 0))
        figures.append((name, "Camera views: ground-truth boxes thin" + (", predicted boxes thick" if model else "")
                        + ", radar points orange."))
    return figures


def render_run_report(out_dir: str | Path, model, dataset, metrics: Mapping[str, Any], scalars: list[dict],
                      seg_grid: BEVGrid | None, title: str, notes: Sequence[str] = (), num_samples: int = 3,
                      baseline: Mapping[str, Any] | None = None) -> Path:
    """All figures plus index.html in ``out_dir``; returns the report's path. With ``baseline`` (the untrained
    model's metrics) every metric table shows it beside the result."""
    out_dir = Path(out_dir)
    n = len(dataset)
    indices = sorted({int(round(k * (n - 1) / max(num_samples - 1, 1))) for k in range(num_samples)})
    figures = render_samples(model, dataset, indices, out_dir, seg_grid)
    gates = [r for r in scalars if "model/ctab/gate_seg" in r]
    if gates:
        plot_gate_evolution([r["step"] for r in gates], [r["model/ctab/gate_seg"] for r in gates],
                            [r["model/ctab/gate_det"] for r in gates], out_dir / "gates.png",
                            init=1 / (1 + np.exp(2.0)))
        figures.append(("gates.png", "CTAB confidence gates during training (cf. Fig. 3)."))
    per_class = {k.split("/")[-1]: v for k, v in metrics.items() if k.startswith("segmentation/IoU@max/")}
    if per_class:
        means = {"this run": metrics.get("segmentation/mIoU-7@max", float(np.mean(list(per_class.values()))))}
        plot_per_class_iou({"this run": per_class}, out_dir / "per_class_iou.png", means=means,
                           title="Per-class BEV segmentation IoU@max (cf. Fig. 5)")
        figures.append(("per_class_iou.png", "Per-class IoU@max on the validation split; dotted: mIoU-7@max."))
    curves = {k: ([r["step"] for r in scalars if k in r], [r[k] for r in scalars if k in r])
              for k in ("train/loss", "train/det/heatmap", "train/det/bbox", "train/det/depth", "train/seg/focal",
                        "train/seg/dice")}
    curves = {k.removeprefix("train/"): v for k, v in curves.items() if v[0] and all(x > 0 for x in v[1])}
    if curves:
        plot_loss_curves(curves, out_dir / "losses.png")
        figures.append(("losses.png", "Training losses (log scale)."))
    def table(title: str, select) -> tuple:
        name = lambda k: k if k.count("/") <= 1 else k.split("/")[-1]  # noqa: E731
        keys = [k for k in metrics if select(k)]
        if baseline is None:
            return title, {name(k): metrics[k] for k in keys}
        return title, {name(k): (baseline.get(k, float("nan")), metrics[k]) for k in keys}, ("untrained", "trained")

    sections = [table("Headline metrics", lambda k: k.count("/") == 1)]
    if any(k.startswith("detection/AP/") for k in metrics):
        sections.append(table("Detection AP per class", lambda k: k.startswith("detection/AP/")))
    if per_class:
        sections.append(table("Segmentation IoU@max per class", lambda k: k.startswith("segmentation/IoU@max/")))
    return write_report(out_dir, title, sections, figures, notes, metrics_file="metrics.json")
