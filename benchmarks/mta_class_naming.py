"""Does a trained captioner name the right class of its objects? Two measurements on the validation split, greedy
captions, "names" = names exactly the GT object's class and no other (``bevbridge/eval/caption_class.py``):

- ``detected``: the evaluator's ``class_named@k`` (bevbridge/eval/captioning.py) at the paper's inference top-k
  (``--topk``, default 64): each GT object is assigned the top-k detection of its sample with the highest 3-D IoU
  (the m@IoU assignment) and counts when that IoU exceeds k (0.25, 0.5). Only the assigned detections are captioned
  (the others cannot change the metric), so this is cheaper than ``bevbridge eval`` at top-64 and gives the same
  number up to sampling (greedy here, temperature 0.1 there). Reported beside it: how often the detection's own
  class label is the GT class (the detector's answer for the same objects).
- ``hungarian``: the decoder queries Hungarian-matched to the GT boxes (``detector.match``, the objects the caption
  branch trains on; ``--per-sample`` of them per sample, a random subset), whether or not the detector found them:
  this measures the caption branch even when the detector localises few objects. Reported beside it: how often the
  detector's own classifier (the argmax of the query's last-layer class logits) names the GT class of the same
  query, i.e. how much class information the object embedding carries for a classifier trained on it.
  ``--detector-only`` reports only that (no captions, so any BEVFormer-tiny checkpoint: pass it as
  ``model.init_from=...`` instead of ``--ckpt``; use a large ``--per-sample`` to count every matched query).

References: the GT captions of the same objects, and the share of the most common class among them (what a
captioner that always names one class would score).

    python benchmarks/mta_class_naming.py configs/mta/tod3cap_synth.yaml --ckpt runs/<run> [--per-sample 4] \
        [--topk 64] [key=value ...]
    python benchmarks/mta_class_naming.py configs/mta/tod3cap_synth.yaml --detector-only --per-sample 1000 \
        model.init_from=runs/bevformer_tiny_synth/checkpoints/step_00000600/model.safetensors

``data.val_split=mini_train`` measures the training samples instead (without augmentation): memorised vs general.

An MTA run is read through its deployable TOD3Cap weights (pass the tod3cap config). Prints one JSON line,
``{"checkpoint": ..., "hungarian": {...}, "detected": {"iou>0.25": {...}, "iou>0.5": {...}}}``.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bevbridge.config import load_config  # noqa: E402
from bevbridge.data.batch import DETECTION_CLASSES, collate  # noqa: E402
from bevbridge.engine import build  # noqa: E402
from bevbridge.engine.commands import _load_for_inference  # noqa: E402
from bevbridge.eval.caption_class import named_classes, names_exactly  # noqa: E402
from bevbridge.eval.box_iou import box_iou  # noqa: E402
from bevbridge.eval.captioning import IOU_THRESHOLDS  # noqa: E402
from bevbridge.models.tod3cap.detector import (decode_box_codes, gather_objects, matched_objects,  # noqa: E402
                                               top_objects)


class _Tally:
    """Counts for one set of objects: captions naming the GT class, GT captions doing so, labels seen."""

    def __init__(self):
        self.ok_gt = 0
        self.labels: collections.Counter = collections.Counter()
        self.named_as: collections.Counter = collections.Counter()
        self.right: collections.Counter = collections.Counter()  # per GT class: captions naming it
        self.det_right: collections.Counter = collections.Counter()  # per GT class: detector labels equal to it

    def add(self, caption: str, gt_caption: str, label: int, det_label: int | None = None) -> None:
        self.right[label] += names_exactly(caption, label)
        self.ok_gt += names_exactly(gt_caption, label)
        self.det_right[label] += det_label is not None and det_label == label
        self.labels[label] += 1
        self.named_as["+".join(DETECTION_CLASSES[i] for i in sorted(named_classes(caption))) or "(none)"] += 1

    @property
    def n(self) -> int:
        return sum(self.labels.values())

    def summary(self, with_detector: bool = False) -> dict:
        n = max(self.n, 1)
        out = {"objects": self.n, "names_gt_class": sum(self.right.values()) / n,
               "gt_captions_name_gt_class": self.ok_gt / n,
               "majority_class_share": max(self.labels.values()) / n if self.n else 0.0,
               "majority_class": DETECTION_CLASSES[self.labels.most_common(1)[0][0]] if self.n else None,
               "classes_named": dict(self.named_as.most_common()),
               "per_gt_class": {DETECTION_CLASSES[c]: f"{self.right[c]}/{k}" for c, k in self.labels.most_common()}}
        if with_detector:
            out["detector_label_is_gt_class"] = sum(self.det_right.values()) / n
            out["detector_per_gt_class"] = {DETECTION_CLASSES[c]: f"{self.det_right[c]}/{k}"
                                            for c, k in self.labels.most_common()}
        return out

    def detector_summary(self) -> dict:
        """The detector's figures alone (``--detector-only``: no captions were generated)."""
        full = self.summary(with_detector=True)
        return {k: full[k] for k in ("objects", "majority_class_share", "majority_class",
                                     "detector_label_is_gt_class", "detector_per_gt_class")}


def detected_objects(out: dict, batch, topk: int, thresholds=IOU_THRESHOLDS) -> tuple[list[tuple], object, dict]:
    """``(found, top-k Objects, their gathered embeddings)``: ``found`` holds ``(sample, gt index, iou, label of the
    assigned detection, index into the top-k)`` for every GT object whose best top-k detection (highest 3-D IoU, the
    m@IoU assignment) has IoU > min(thresholds)."""
    objs = top_objects(out["det"], topk)
    emb = gather_objects(out["det"], objs)
    boxes = decode_box_codes(emb["box_code"].float())
    found = []
    for b in range(len(batch)):
        sel = (objs.sample == b).nonzero()[:, 0]
        gt = batch.gt_boxes[b]
        if len(gt) == 0 or len(sel) == 0:
            continue
        iou = box_iou(gt[:, :7], boxes[sel, :7], "3d")  # [n, m]
        best = iou.argmax(1)
        for g in range(len(gt)):
            if iou[g, best[g]] > min(thresholds):
                j = int(sel[best[g]])
                found.append((b, g, float(iou[g, best[g]]), int(objs.label[j]), j))
    return found, objs, emb


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("--ckpt", help="the TOD3Cap/MTA checkpoint (required unless --detector-only)")
    ap.add_argument("--detector-only", action="store_true",
                    help="only the detector's own class for the Hungarian-matched queries: no captions; without "
                         "--ckpt the model is built with its init (model.init_from), e.g. from a BEVFormer run")
    ap.add_argument("--per-sample", type=int, default=4, help="matched objects captioned per sample (random subset)")
    ap.add_argument("--topk", type=int, default=64, help="detections per sample for the 'detected' measurement "
                    "(the paper's inference top-k); 0 skips it")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args(argv)
    if args.ckpt is None and not args.detector_only:
        ap.error("--ckpt is required (the captioner's weights) unless --detector-only")
    if args.detector_only:
        args.topk = 0
    if args.ckpt is None:
        cfg = load_config(args.config, args.overrides)
        if cfg.model.init_from is None:
            ap.error("--detector-only without --ckpt needs model.init_from=<detector checkpoint>")
        model, device = build.build_model(cfg, init=True), torch.device("cpu")
        source = cfg.model.init_from
    else:
        cfg, model, device, source = _load_for_inference(argparse.Namespace(config=args.config, ckpt=args.ckpt,
                                                                            overrides=args.overrides))
    model.eval()
    captioner = getattr(model, "captioner", model)
    _, val_set = build.build_datasets(cfg.data, model.data_needs(), train=False)
    loader = torch.utils.data.DataLoader(val_set, batch_size=args.batch_size, shuffle=False, collate_fn=collate,
                                         num_workers=0)
    gen = torch.Generator().manual_seed(0)
    hung = _Tally()
    detected = {k: _Tally() for k in IOU_THRESHOLDS}
    examples: list[dict] = []
    head = captioner.caption_head
    num_gt = 0
    with torch.no_grad():
        for batch in loader:
            batch = batch.to(device)
            num_gt += sum(len(g) for g in batch.gt_labels)
            out = captioner.detector(batch)
            objs = matched_objects(captioner.detector.match(out, batch), args.per_sample, generator=gen)
            if len(objs):
                emb = gather_objects(out["det"], objs)
                if args.detector_only:
                    captions = [""] * len(objs)
                else:
                    visual, _ = head.encode(out["bev"], emb["box_code"], emb["query"], objs.sample)
                    captions = head.generate(visual, greedy=True)
                det_labels = emb["cls_logits"].argmax(-1).tolist()  # the detector's own class for the same query
                for s, g, c, dl in zip(objs.sample.tolist(), objs.gt.tolist(), captions, det_labels):
                    label = int(batch.gt_labels[s][g])
                    hung.add(c, batch.captions[s][g], label, dl)
                    if len(examples) < 6 and not args.detector_only:
                        examples.append({"gt_class": DETECTION_CLASSES[label], "caption": c,
                                         "gt_caption": batch.captions[s][g]})
            if args.topk > 0:
                found, dets, demb = detected_objects(out, batch, args.topk)
                if not found:
                    continue
                idx = sorted({f[4] for f in found})
                where = {j: i for i, j in enumerate(idx)}
                t = torch.tensor(idx, device=dets.sample.device)
                visual, _ = head.encode(out["bev"], demb["box_code"][t], demb["query"][t], dets.sample[t])
                captions = head.generate(visual, greedy=True)
                for s, g, iou, det_label, j in found:
                    for k, tally in detected.items():
                        if iou > k:
                            tally.add(captions[where[j]], batch.captions[s][g], int(batch.gt_labels[s][g]), det_label)
    result = {"checkpoint": str(source),
              "hungarian": {"per_sample": args.per_sample,
                            **(hung.detector_summary() if args.detector_only else hung.summary(with_detector=True)),
                            "examples": examples},
              "detected": {"topk": args.topk, "num_gt": num_gt,
                           **{f"iou>{k:g}": t.summary(with_detector=True) for k, t in detected.items()}}
              if args.topk > 0 else None}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
