"""Ego-frame detections -> the nuScenes devkit's detection results JSON, and back.

Input per sample (DESIGN.md conventions): ``boxes [n, 9] = (x, y, z, l, w, h, yaw, vx, vy)`` in the key ego frame
(geometric centre, yaw counter-clockwise from +x, velocity in m/s along the ego axes), ``scores [n]``, ``labels [n]``
indexing :data:`bevbridge.data.batch.DETECTION_CLASSES`, and the sample's ``ego2global [4, 4]``.

Output per box (the devkit's ``DetectionBox`` fields), in the GLOBAL frame: ``translation`` (centre), ``size`` as
(w, l, h), ``rotation`` as a yaw-only quaternion (w, x, y, z) -- the devkit scores orientation by yaw alone, so the
ego pose's small pitch/roll is not carried over --, ``velocity`` (vx, vy) rotated into the global frame,
``detection_name``, ``detection_score`` and ``attribute_name``.

Attributes: a model may pass its own (``attrs``); otherwise :func:`default_attribute` picks one from the class and the
speed, the rule used by the public BEVDet / mmdet3d nuScenes exporters (``SPEED_THRESHOLD`` = 0.2 m/s):

=====================================================  ========================  ===========================
class                                                  speed > 0.2 m/s           speed <= 0.2 m/s
=====================================================  ========================  ===========================
car, truck, trailer, construction_vehicle              vehicle.moving            vehicle.parked
bus                                                    vehicle.moving            vehicle.stopped
bicycle, motorcycle                                    cycle.with_rider          cycle.without_rider
pedestrian                                             pedestrian.moving         pedestrian.standing
barrier, traffic_cone                                  '' (no attribute)         ''
=====================================================  ========================  ===========================

At most :data:`MAX_BOXES_PER_SAMPLE` (500, the devkit's limit) boxes per sample are kept, highest scores first.
:class:`DetectionResults` collects samples (also from several distributed ranks: a sample submitted twice is kept
once, and it is an error if the two submissions differ) and writes the JSON atomically with every sample token of
the split present.
"""

from __future__ import annotations

import json
import math
from os import PathLike
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from bevbridge.atomic import atomic_write_text
from bevbridge.data.batch import ATTRIBUTE_NAMES, DETECTION_CLASSES
from bevbridge.geometry import invert_transform, quaternion_to_yaw, transform_boxes, yaw_to_quaternion

__all__ = [
    "MAX_BOXES_PER_SAMPLE",
    "SPEED_THRESHOLD",
    "DEFAULT_META",
    "default_attribute",
    "boxes_to_devkit",
    "devkit_to_boxes",
    "DetectionResults",
]

MAX_BOXES_PER_SAMPLE = 500
SPEED_THRESHOLD = 0.2  # m/s; above it an object counts as moving (BEVDet / mmdet3d exporters)
DEFAULT_META = {"use_camera": True, "use_lidar": False, "use_radar": False, "use_map": False, "use_external": False}

_MOVING = {"car": "vehicle.moving", "truck": "vehicle.moving", "trailer": "vehicle.moving",
           "construction_vehicle": "vehicle.moving", "bus": "vehicle.moving", "bicycle": "cycle.with_rider",
           "motorcycle": "cycle.with_rider", "pedestrian": "pedestrian.moving", "barrier": "", "traffic_cone": ""}
_STILL = {"car": "vehicle.parked", "truck": "vehicle.parked", "trailer": "vehicle.parked",
          "construction_vehicle": "vehicle.parked", "bus": "vehicle.stopped", "bicycle": "cycle.without_rider",
          "motorcycle": "cycle.without_rider", "pedestrian": "pedestrian.standing", "barrier": "", "traffic_cone": ""}


def default_attribute(name: str, speed: float) -> str:
    """The attribute for a box of class ``name`` moving at ``speed`` m/s (table in the module docstring)."""
    if name not in _MOVING:
        raise ValueError(f"unknown detection class {name!r}; expected one of {', '.join(DETECTION_CLASSES)}")
    return _MOVING[name] if speed > SPEED_THRESHOLD else _STILL[name]


def _as_numpy(x: Any, dtype=np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def boxes_to_devkit(sample_token: str, boxes: Any, scores: Any, labels: Any, ego2global: Any,
                    attrs: Any | None = None, max_boxes: int = MAX_BOXES_PER_SAMPLE) -> list[dict]:
    """One sample's ego-frame boxes -> devkit result records (global frame), at most ``max_boxes``, best first.

    boxes [n, 9], scores [n], labels [n] (DETECTION_CLASSES index), ego2global [4, 4]; torch or numpy.
    ``attrs [n]`` optionally gives ATTRIBUTE_NAMES indices (-1 = use :func:`default_attribute`).
    """
    b = _as_numpy(boxes)
    b = b.reshape(0, 9) if b.size == 0 else b
    s = _as_numpy(scores).reshape(-1)
    lab = _as_numpy(labels, np.int64).reshape(-1)
    T = _as_numpy(ego2global)
    where = f"sample {sample_token}"
    if b.ndim != 2 or b.shape[1] != 9:
        raise ValueError(f"{where}: boxes must be [n, 9] (x, y, z, l, w, h, yaw, vx, vy), got {tuple(b.shape)}")
    if not (len(s) == len(lab) == len(b)):
        raise ValueError(f"{where}: {len(b)} boxes but {len(s)} scores and {len(lab)} labels")
    if T.shape != (4, 4) or not np.isfinite(T).all():
        raise ValueError(f"{where}: ego2global must be a finite [4, 4] matrix, got shape {T.shape}")
    if not (np.isfinite(b).all() and np.isfinite(s).all()):
        raise ValueError(f"{where}: boxes and scores must be finite (found NaN or inf)")
    if (b[:, 3:6] <= 0).any():
        raise ValueError(f"{where}: box sizes (l, w, h) must be > 0, got min {b[:, 3:6].min():.3g}")
    if ((lab < 0) | (lab >= len(DETECTION_CLASSES))).any():
        raise ValueError(f"{where}: labels must index DETECTION_CLASSES (0..{len(DETECTION_CLASSES) - 1}), "
                         f"got {sorted(set(lab[(lab < 0) | (lab >= len(DETECTION_CLASSES))].tolist()))}")
    a = None
    if attrs is not None:
        a = _as_numpy(attrs, np.int64).reshape(-1)
        if len(a) != len(b) or ((a < -1) | (a >= len(ATTRIBUTE_NAMES))).any():
            raise ValueError(f"{where}: attrs must be [n] indices into ATTRIBUTE_NAMES or -1")

    keep = np.argsort(-s, kind="stable")[:max_boxes]
    g = transform_boxes(T, b[keep])
    q = yaw_to_quaternion(g[:, 6])
    speed = np.hypot(g[:, 7], g[:, 8])
    records = []
    for j, i in enumerate(keep):
        name = DETECTION_CLASSES[lab[i]]
        attr = ATTRIBUTE_NAMES[a[i]] if a is not None and a[i] >= 0 else default_attribute(name, speed[j])
        records.append({
            "sample_token": sample_token,
            "translation": g[j, 0:3].tolist(),
            "size": [float(g[j, 4]), float(g[j, 3]), float(g[j, 5])],  # devkit order: w, l, h
            "rotation": q[j].tolist(),
            "velocity": g[j, 7:9].tolist(),
            "detection_name": name,
            "detection_score": float(s[i]),
            "attribute_name": attr,
        })
    return records


def devkit_to_boxes(records: Sequence[Mapping[str, Any]], ego2global: Any) -> dict[str, np.ndarray]:
    """Devkit records (results or GT boxes, global frame) -> ego-frame arrays: the inverse of :func:`boxes_to_devkit`.

    Returns ``boxes [n, 9]`` float64 (velocity NaN where the record's is), ``scores [n]`` (NaN when absent),
    ``labels [n]`` int64 (DETECTION_CLASSES index) and ``attrs [n]`` int64 (ATTRIBUTE_NAMES index, -1 for none).
    """
    n = len(records)
    g = np.zeros((n, 9))
    for i, r in enumerate(records):
        w, l, h = r["size"]
        g[i, 0:3] = r["translation"]
        g[i, 3:6] = (l, w, h)
        g[i, 6] = quaternion_to_yaw(np.asarray(r["rotation"], dtype=np.float64))
        g[i, 7:9] = r["velocity"][:2]
    boxes = transform_boxes(invert_transform(_as_numpy(ego2global)), g)
    return {
        "boxes": boxes,
        "scores": np.array([float(r.get("detection_score", math.nan)) for r in records]),
        "labels": np.array([DETECTION_CLASSES.index(r["detection_name"]) for r in records], dtype=np.int64),
        "attrs": np.array([ATTRIBUTE_NAMES.index(r["attribute_name"]) if r.get("attribute_name") else -1
                           for r in records], dtype=np.int64),
    }


def _same_records(a: list[dict], b: list[dict], rtol: float = 1e-5, atol: float = 1e-4) -> bool:
    """Equal up to float noise (the same sample run on two GPUs may differ in the last bits)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if (x["detection_name"], x["attribute_name"]) != (y["detection_name"], y["attribute_name"]):
            return False
        nx = np.array([*x["translation"], *x["size"], *x["rotation"], *x["velocity"], x["detection_score"]])
        ny = np.array([*y["translation"], *y["size"], *y["rotation"], *y["velocity"], y["detection_score"]])
        if not np.allclose(nx, ny, rtol=rtol, atol=atol):
            return False
    return True


class DetectionResults:
    """Collects per-sample devkit records and writes the results JSON.

    >>> res = DetectionResults()
    >>> res.add(token, boxes, scores, labels, ego2global)        # per sample, ego frame
    >>> res.merge(other_rank_results)                             # e.g. from torch.distributed.all_gather_object
    >>> res.write("results_nusc.json", split_tokens)              # atomic; every split token must be present
    """

    def __init__(self, max_boxes_per_sample: int = MAX_BOXES_PER_SAMPLE):
        self.max_boxes = max_boxes_per_sample
        self.results: dict[str, list[dict]] = {}

    def __len__(self) -> int:
        return len(self.results)

    def add(self, sample_token: str, boxes: Any, scores: Any, labels: Any, ego2global: Any,
            attrs: Any | None = None) -> None:
        """Export one sample's ego-frame predictions (see :func:`boxes_to_devkit`). Empty predictions are fine."""
        self.add_records(sample_token, boxes_to_devkit(sample_token, boxes, scores, labels, ego2global, attrs,
                                                       self.max_boxes))

    def add_records(self, sample_token: str, records: list[dict]) -> None:
        """Add already-exported records; a repeated sample must carry the same records and is kept once."""
        if sample_token in self.results:
            if not _same_records(self.results[sample_token], records):
                raise ValueError(f"sample {sample_token} was submitted twice with different predictions "
                                 f"({len(self.results[sample_token])} vs {len(records)} boxes); duplicates from "
                                 f"distributed gathering must be identical")
            return
        if len(records) > self.max_boxes:
            records = sorted(records, key=lambda r: -r["detection_score"])[: self.max_boxes]
        self.results[sample_token] = list(records)

    def merge(self, other: DetectionResults | Mapping[str, list[dict]]) -> DetectionResults:
        """Add every sample of ``other`` (another collector or its ``results`` dict); returns self."""
        items = other.results if isinstance(other, DetectionResults) else other
        for token, records in items.items():
            self.add_records(token, records)
        return self

    def to_dict(self, sample_tokens: Sequence[str] | None = None, meta: Mapping[str, bool] | None = None) -> dict:
        """The devkit's results structure; with ``sample_tokens`` (the split) checks that the sets are equal."""
        if sample_tokens is not None:
            wanted = set(sample_tokens)
            missing = [t for t in sample_tokens if t not in self.results]
            extra = [t for t in self.results if t not in wanted]
            if missing:
                raise ValueError(f"{len(missing)} of the split's {len(wanted)} samples have no predictions submitted "
                                 f"(e.g. {missing[0]}); add every sample, with empty arrays if nothing was detected")
            if extra:
                raise ValueError(f"{len(extra)} submitted samples are not in the split (e.g. {extra[0]})")
            results = {t: self.results[t] for t in sample_tokens}
        else:
            results = dict(self.results)
        return {"meta": {**DEFAULT_META, **(meta or {})}, "results": results}

    def write(self, path: str | PathLike, sample_tokens: Sequence[str] | None = None,
              meta: Mapping[str, bool] | None = None) -> Path:
        """Write the results JSON atomically (nothing half-written on failure); returns the path."""
        return atomic_write_text(path, json.dumps(self.to_dict(sample_tokens, meta)))
