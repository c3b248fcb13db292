"""Evaluation: run a model over a dataset on every rank, gather predictions on rank 0, score each sample once.

The engine drives evaluators through this protocol (concrete ones live in bevbridge/eval)::

    evaluator.reset()                              # forget previous results
    evaluator.update(preds, batch)                 # preds: list[Prediction] for the samples of `batch`, in order
    metrics = evaluator.compute()                  # dict[str, float | ...]: logged as eval/<name>/<key>
    evaluator.protocol()                           # optional: how it scores (grid, thresholds), for metrics.json

``update`` and ``compute`` run on rank 0 only. Every rank predicts its shard of a ``DistributedSampler`` (which
pads the last round with repeats so the ranks stay in step); the predictions (on the CPU, float32) and a light copy
of the batch (no images, points or past frames: the ground truth and the poses evaluators need) are gathered to
rank 0 after every batch, and samples whose token was already scored are dropped. So each sample is counted exactly
once whatever the number of processes.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Mapping, Protocol, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from bevbridge.data.batch import Batch, PastFrames, collate
from bevbridge.engine import distributed
from bevbridge.engine.amp import Precision
from bevbridge.engine.loader import eval_loader
from bevbridge.log import progress
from bevbridge.models.contract import Prediction

__all__ = ["Evaluator", "run_evaluation", "evaluation_protocols", "slim_batch", "select_samples"]

log = logging.getLogger(__name__)

# Heavy sensor data that evaluators do not need; left on the rank that loaded it.
_HEAVY = ("images", "past", "radar", "radar_mask", "lidar", "lidar_mask")


class Evaluator(Protocol):
    def reset(self) -> None: ...

    def update(self, preds: list[Prediction], batch: Batch) -> None: ...

    def compute(self) -> dict[str, Any]: ...


def evaluation_protocols(evaluators: Mapping[str, Evaluator]) -> dict[str, Any]:
    """``{name: evaluator.protocol()}`` for the evaluators that describe how they score (the segmentation grid and
    thresholds, bevbridge/eval/seg_protocol.py): written into every metrics.json as ``"protocols"``."""
    return {name: ev.protocol() for name, ev in evaluators.items() if callable(getattr(ev, "protocol", None))}


def slim_batch(batch: Batch) -> Batch:
    """``batch`` without images, points and past frames (on the CPU)."""
    return dataclasses.replace(batch, **{k: None for k in _HEAVY}).to("cpu")


def select_samples(batch: Batch, keep: Sequence[int]) -> Batch:
    """The samples ``keep`` of ``batch`` (every batch-first tensor and per-sample list is indexed)."""
    n = len(batch)
    idx = torch.as_tensor(list(keep), dtype=torch.long)

    def pick(v: Any) -> Any:
        if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == n:
            return v[idx.to(v.device)]
        if isinstance(v, list) and len(v) == n:
            return [v[i] for i in keep]
        if isinstance(v, PastFrames):
            return PastFrames(**{f.name: pick(getattr(v, f.name)) for f in dataclasses.fields(v)})
        return v

    return dataclasses.replace(batch, **{f.name: pick(getattr(batch, f.name)) for f in dataclasses.fields(batch)})


def _to_cpu(pred: Prediction) -> Prediction:
    def conv(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu()
            return v.float() if v.is_floating_point() else v
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return dataclasses.replace(pred, **{f.name: conv(getattr(pred, f.name)) for f in dataclasses.fields(pred)})


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@torch.no_grad()
def run_evaluation(model: nn.Module, dataset: Dataset, evaluators: Mapping[str, Evaluator], *, batch_size: int,
                   num_workers: int, device: torch.device, precision: Precision | None = None,
                   collate_fn: Callable[[Sequence[Any]], Any] = collate, desc: str = "eval") -> dict[str, Any]:
    """Evaluate ``model`` on ``dataset``; returns ``{"<name>/<metric>": value}`` on every rank."""
    if not evaluators:
        return {}
    model = _unwrap(model)
    was_training = model.training
    model.eval()
    d = distributed.info()
    precision = precision or Precision("none", device)
    for ev in evaluators.values():
        ev.reset()
    loader = eval_loader(dataset, batch_size, num_workers, d, device, collate_fn)
    seen: set[str] = set()
    try:
        for batch in progress(loader, desc=desc, total=len(loader), unit="batch"):
            on_device = batch.to(device, non_blocking=True)
            with precision.autocast():
                outputs = model(on_device)
            preds = model.predict(outputs, on_device)
            if len(preds) != len(batch):
                raise RuntimeError(f"model.predict returned {len(preds)} predictions for a batch of {len(batch)}")
            gathered = distributed.all_gather_objects(([_to_cpu(p) for p in preds], slim_batch(batch)))
            if not d.is_main:
                continue
            for rank_preds, rank_batch in gathered:
                keep = []
                for i, token in enumerate(rank_batch.tokens):
                    if token not in seen:
                        seen.add(token)
                        keep.append(i)
                if keep:
                    sub = rank_batch if len(keep) == len(rank_batch) else select_samples(rank_batch, keep)
                    for ev in evaluators.values():
                        ev.update([rank_preds[i] for i in keep], sub)
        metrics: dict[str, Any] = {}
        if d.is_main:
            log.info("%s: scored %d samples on %d process(es)", desc, len(seen), d.world_size)
            for name, ev in evaluators.items():
                for k, v in ev.compute().items():
                    metrics[f"{name}/{k}"] = v
        return distributed.broadcast_object(metrics)
    finally:
        model.train(was_training)
