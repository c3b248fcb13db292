"""benchmarks/mta_class_naming.py's ``detected`` measurement must count the same GT objects as the evaluator's
``class_named@k`` (bevbridge/eval/captioning.py), with the detection each is assigned to.

Bugs this catches (each made it fail when injected): assigning each detection to its best GT instead of each GT to
its best detection (TOD3Cap's released direction, not the m@IoU one), comparing against the wrong threshold, mixing
detections of different samples, or returning the index of the detection within its sample instead of within the
top-k list. (IoU >= k instead of > k is not caught: continuous IoUs never equal k here.)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from bevbridge.eval.captioning import CaptionMeter
from bevbridge.models.bevformer.detr_head import encode_boxes

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mta_class_naming.py"


def _script():
    spec = importlib.util.spec_from_file_location("mta_class_naming", _SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _world(seed: int = 0, B: int = 3, n_query: int = 12, K: int = 10):
    """GT boxes per sample and a detector output whose queries are jittered copies of some GT boxes (and of the
    other samples' boxes, which must never match across samples)."""
    g = torch.Generator().manual_seed(seed)
    gt_boxes, gt_labels, codes = [], [], []
    for b in range(B):
        n = 4 + b
        xy = torch.rand(n, 2, generator=g) * 40 - 20
        size = torch.rand(n, 3, generator=g) * 3 + 0.5
        yaw = torch.rand(n, 1, generator=g) * 6.28 - 3.14
        gt_boxes.append(torch.cat([xy, torch.rand(n, 1, generator=g), size, yaw, torch.zeros(n, 2)], 1))
        gt_labels.append(torch.randint(0, K, (n,), generator=g))
    for b in range(B):
        own = gt_boxes[b][torch.randint(0, len(gt_boxes[b]), (2 * n_query // 3,), generator=g)]
        others = torch.cat(gt_boxes[:b] + gt_boxes[b + 1:])
        src = torch.cat([own, others[torch.randint(0, len(others), (n_query - len(own),), generator=g)]]).clone()
        src[:, :2] += torch.randn(n_query, 2, generator=g) * 0.4  # IoUs spread around 0.25
        src[:, 3:6] *= torch.exp(torch.randn(n_query, 3, generator=g) * 0.2)
        codes.append(encode_boxes(src))
    det = {"queries_per_group": n_query, "box_codes": torch.stack(codes)[None],
           "cls_scores": torch.randn(1, B, n_query, K, generator=g), "query_feats": torch.randn(1, B, n_query, 8)}
    batch = _Batch(gt_boxes, gt_labels, [[f"gt {b} {i}" for i in range(len(x))] for b, x in enumerate(gt_boxes)])
    return det, batch


class _Batch:
    """The fields of bevbridge.data.batch.Batch the measurement reads."""

    def __init__(self, gt_boxes, gt_labels, captions):
        self.gt_boxes, self.gt_labels, self.captions = gt_boxes, gt_labels, captions

    def __len__(self) -> int:
        return len(self.gt_boxes)


def test_detected_objects_are_the_evaluators_matched_gt_objects():
    naming = _script()
    from bevbridge.models.tod3cap.detector import decode_box_codes

    for seed in range(3):
        det, batch = _world(seed)
        topk = 9
        found, objs, emb = naming.detected_objects({"det": det}, batch, topk, thresholds=(0.25,))
        assert len(objs) == topk * len(batch)
        boxes = decode_box_codes(emb["box_code"].float())
        # the evaluator, fed each top-k detection's caption = its index in the top-k list
        kept = {}
        for b in range(len(batch)):
            sel = (objs.sample == b).nonzero()[:, 0]
            meter = CaptionMeter("3d", iou_thresholds=(0.25,))
            meter.update(batch.gt_boxes[b], batch.captions[b], boxes[sel], [str(int(j)) for j in sel],
                         gt_labels=batch.gt_labels[b])
            for g, m in enumerate(meter.matches):
                if m.iou > 0.25:
                    kept[(b, g)] = (int(m.candidate), m.iou)
        assert 3 <= len(kept) < sum(len(x) for x in batch.gt_boxes), "the fixture must match some GT objects, not all"
        assert len(found) == len(kept)
        for b, g, iou, label, j in found:
            assert kept[(b, g)][0] == j and np.isclose(iou, kept[(b, g)][1])
            assert int(objs.sample[j]) == b and label == int(objs.label[j])


def test_tally_counts_the_detector_label_against_the_gt_class_not_the_caption():
    """The detector's figures compare its label with the GT class, per GT class. Catches comparing the detector's
    label with the class the caption names instead (1/3 here), or counting a caption hit as a detector hit."""
    naming = _script()
    from bevbridge.data.batch import DETECTION_CLASSES

    car, ped = DETECTION_CLASSES.index("car"), DETECTION_CLASSES.index("pedestrian")
    t = naming._Tally()
    t.add("a pedestrian walking", "a car parked", car, det_label=car)  # caption wrong, detector right
    t.add("a car parked", "a car parked", car, det_label=ped)  # caption right, detector wrong
    t.add("a pedestrian walking", "a pedestrian walking", ped, det_label=ped)  # both right
    s = t.summary(with_detector=True)
    assert s["names_gt_class"] == 2 / 3 and s["detector_label_is_gt_class"] == 2 / 3
    assert s["detector_per_gt_class"] == {"car": "1/2", "pedestrian": "1/1"}
    assert s["per_gt_class"] == {"car": "1/2", "pedestrian": "1/1"}
    only = t.detector_summary()
    assert "names_gt_class" not in only and only["detector_label_is_gt_class"] == 2 / 3
