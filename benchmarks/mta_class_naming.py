"""Does a trained captioner name the right class of its objects, independently of how good its detector is?

``captioning/class_named@k`` (bevbridge/eval/captioning.py) only counts GT objects that a captioned detection
overlaps with IoU > k; with a weak detector there may be none. This script captions, for every validation sample,
the decoder queries Hungarian-matched to the GT boxes (``detector.match``, the objects the caption branch trains on),
greedily, and reports the fraction of those captions that name exactly the GT object's class
(``bevbridge/eval/caption_class.py``), beside two references: the GT captions themselves, and the share of the most
common class (what a captioner that always names one class would score).

    python benchmarks/mta_class_naming.py configs/mta/tod3cap_synth.yaml --ckpt runs/<run> [--per-sample 4] \
        [key=value ...]

An MTA run is read through its deployable TOD3Cap weights (pass the tod3cap config). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bevbridge.data.batch import DETECTION_CLASSES, collate  # noqa: E402
from bevbridge.engine import build  # noqa: E402
from bevbridge.engine.commands import _load_for_inference  # noqa: E402
from bevbridge.eval.caption_class import named_classes, names_exactly  # noqa: E402
from bevbridge.models.tod3cap.detector import gather_objects, matched_objects  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--per-sample", type=int, default=4, help="matched objects captioned per sample (random subset)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args(argv)
    cfg, model, device, source = _load_for_inference(argparse.Namespace(config=args.config, ckpt=args.ckpt,
                                                                        overrides=args.overrides))
    model.eval()
    captioner = getattr(model, "captioner", model)
    _, val_set = build.build_datasets(cfg.data, model.data_needs(), train=False)
    loader = torch.utils.data.DataLoader(val_set, batch_size=args.batch_size, shuffle=False, collate_fn=collate,
                                         num_workers=0)
    gen = torch.Generator().manual_seed(0)
    ok = ok_gt = n = 0
    labels_seen: collections.Counter = collections.Counter()
    named_as: collections.Counter = collections.Counter()
    examples: list[dict] = []
    with torch.no_grad():
        for batch in loader:
            batch = batch.to(device)
            out = captioner.detector(batch)
            objs = matched_objects(captioner.detector.match(out, batch), args.per_sample, generator=gen)
            if len(objs) == 0:
                continue
            emb = gather_objects(out["det"], objs)
            visual, _ = captioner.caption_head.encode(out["bev"], emb["box_code"], emb["query"], objs.sample)
            captions = captioner.caption_head.generate(visual, greedy=True)
            for s, g, c in zip(objs.sample.tolist(), objs.gt.tolist(), captions):
                label = int(batch.gt_labels[s][g])
                ok += names_exactly(c, label)
                ok_gt += names_exactly(batch.captions[s][g], label)
                labels_seen[label] += 1
                named = named_classes(c)
                named_as["+".join(DETECTION_CLASSES[i] for i in sorted(named)) or "(none)"] += 1
                n += 1
                if len(examples) < 6:
                    examples.append({"gt_class": DETECTION_CLASSES[label], "caption": c,
                                     "gt_caption": batch.captions[s][g]})
    result = {"checkpoint": str(source), "objects": n, "names_gt_class": ok / max(n, 1),
              "gt_captions_name_gt_class": ok_gt / max(n, 1),
              "majority_class_share": max(labels_seen.values()) / max(n, 1) if n else 0.0,
              "majority_class": DETECTION_CLASSES[labels_seen.most_common(1)[0][0]] if n else None,
              "classes_named": dict(named_as.most_common()), "examples": examples}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
