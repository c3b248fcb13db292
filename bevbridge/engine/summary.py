"""``bevbridge summary CONFIG``: parameters per top-level module (trainable / frozen) and forward FLOPs of one sample.

Papers report Params and GFLOPs; users compare models with exactly these numbers. Paper-scale configs are built on
the ``meta`` device (instant, no memory: shapes without storage) unless ``--device cpu``; ``*_synth.yaml`` configs
on the CPU. FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` over one forward pass of one sample (batch
1), counting matrix multiplications and convolutions (2 FLOPs per multiply-add, the counter's convention;
divide by 2 for the MACs some papers call FLOPs). The input is the first validation sample of the config's dataset
when it is already on disk ("real"), otherwise a random well-formed batch (bevbridge/data/random_batch.py). On
``meta`` the count is attempted on a random batch; data-dependent operations (point voxelisation, NMS, selecting the
cameras a query hits) cannot run without values, and the report then says the figure is not available and why.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bevbridge.config.schema import ExperimentConfig
from bevbridge.engine import build
from bevbridge.models.freeze import frozen_modules
from bevbridge.models.meta import reset_device_constructors

__all__ = ["summarize", "format_summary", "count_parameters"]

log = logging.getLogger(__name__)


def count_parameters(model: nn.Module) -> dict[str, dict[str, int]]:
    """``{top-level module: {"trainable": n, "frozen": n}}`` plus ``"(total)"``; parameters directly on the model
    count under ``"(own)"``. Shared parameters are counted once (at their first name)."""
    rows: dict[str, dict[str, int]] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        top = name.split(".")[0] if "." in name else "(own)"
        row = rows.setdefault(top, {"trainable": 0, "frozen": 0})
        row["trainable" if p.requires_grad else "frozen"] += p.numel()
    rows["(total)"] = {k: sum(r[k] for r in rows.values()) for k in ("trainable", "frozen")}
    return rows


def _flops(model: nn.Module, cfg: ExperimentConfig, device: torch.device) -> dict[str, Any]:
    from torch.utils.flop_counter import FlopCounterMode

    from bevbridge.data.batch import collate
    from bevbridge.data.random_batch import random_batch

    needs = model.data_needs()
    batch, source = None, "random batch (bevbridge/data/random_batch.py)"
    if device.type != "meta" and cfg.data.dataroot and (Path(cfg.data.dataroot) / cfg.data.version).is_dir():
        try:
            from bevbridge.data.nuscenes import NuScenesDataset

            opts = build.dataset_options(cfg.data, needs, train=False)
            ds = NuScenesDataset(cfg.data.dataroot, cfg.data.version, cfg.data.val_split, **opts)
            batch, source = collate([ds[0]]), f"real sample {ds.samples[0]['token']} of {cfg.data.val_split}"
        except Exception as e:  # noqa: BLE001 - fall back to a random input, and say so
            log.info("summary: the dataset could not give a sample (%s); using a random batch", e)
    if batch is None:
        batch = random_batch(needs, batch_size=1)
    batch = batch.to(device)
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(batch)
    except Exception as e:  # noqa: BLE001 - a figure we cannot compute is reported as such
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        return {"gflops": None, "input": source, "note": f"not available on {device.type}: {why[:160]}"}
    by_module = {}
    root = type(model).__name__  # FlopCounterMode names top-level modules "<root class>.<name>" (older: "Global.")
    for name, ops in counter.get_flop_counts().items():
        parts = name.split(".")
        if len(parts) == 2 and parts[0] in (root, "Global"):
            by_module[parts[1]] = sum(ops.values()) / 1e9
    return {"gflops": counter.get_total_flops() / 1e9, "input": source, "by_module": by_module}


def summarize(cfg: ExperimentConfig, device: str = "auto", flops: bool = True, config_path: str = "") -> dict:
    """Build the model of ``cfg`` and report its parameters (and FLOPs); see the module docstring.

    ``device``: "meta", "cpu" or "auto" (cpu for ``*_synth.yaml`` configs, meta otherwise).
    """
    if device == "auto":
        device = "cpu" if Path(config_path).stem.endswith("_synth") else "meta"
    dev = torch.device(device)
    reset_device_constructors()  # a transformers load may have left torch.linspace unredirected (models/meta.py)
    with dev:
        model = build.build_model(cfg, init=False)
    build.apply_freeze(model, cfg.model.freeze if cfg.model is not None else ())
    params = count_parameters(model)
    report: dict[str, Any] = {
        "config": config_path, "name": cfg.name, "kind": getattr(model, "kind", None), "class": type(model).__name__,
        "device": device, "parameters": params,
        "frozen_modules": sorted(n for n in frozen_modules(model) if n),
        "data_needs": model.data_needs().describe(),
    }
    attr = getattr(model, "deployable_attr", None)
    if attr:  # a training recipe: what is deployed (its eval-mode forward, counted below, runs that model alone)
        dep = getattr(model, attr)
        report["deployable"] = {"attr": attr, "kind": getattr(dep, "kind", None),
                                "parameters": sum(p.numel() for p in dep.parameters())}
    if flops:
        report["flops"] = _flops(model, cfg, dev)
    return report


def _m(n: int) -> str:
    return f"{n / 1e6:9.3f}M"


def format_summary(report: dict) -> str:
    """A plain-text table of :func:`summarize`'s report."""
    lines = [f"{report['name']} ({report['config']}): {report['class']} (model.kind {report['kind']}), built on "
             f"{report['device']}", f"reads: {report['data_needs']}", "",
             f"{'module':<28} {'trainable':>10} {'frozen':>10} {'GFLOPs':>9}"]
    by_module = (report.get("flops") or {}).get("by_module", {})
    for name, row in report["parameters"].items():
        if name == "(total)":
            continue
        gf = f"{by_module[name]:9.3f}" if name in by_module else f"{'':>9}"
        lines.append(f"{name:<28} {_m(row['trainable'])} {_m(row['frozen'])} {gf}")
    tot = report["parameters"]["(total)"]
    f = report.get("flops")
    total_gf = f"{f['gflops']:9.3f}" if f and f.get("gflops") is not None else f"{'n/a':>9}"
    lines.append(f"{'total':<28} {_m(tot['trainable'])} {_m(tot['frozen'])} {total_gf}")
    lines.append(f"total parameters: {tot['trainable'] + tot['frozen']:,} ({(tot['trainable'] + tot['frozen']) / 1e6:.2f}M)"
                 f"; trainable {tot['trainable']:,}")
    if f is not None:
        if f.get("gflops") is None:
            lines.append(f"FLOPs: {f['note']}")
        else:
            lines.append(f"FLOPs of one forward pass, batch 1: {f['gflops']:.3f} G (2 per multiply-add) on "
                         f"{f['input']}")
    if f is not None and f.get("gflops") is not None and any(
            name not in by_module for name, row in report["parameters"].items()
            if name != "(total)" and row["trainable"] + row["frozen"] > 0):
        lines.append("(a blank GFLOPs entry: that module is called through a method other than forward, so its "
                     "work is counted in the total but not attributed to it)")
    if report.get("deployable"):
        d = report["deployable"]
        lines.append(f"deployable model: {d['attr']} (model.kind {d['kind']}), {d['parameters']:,} parameters "
                     f"({d['parameters'] / 1e6:.2f}M)")
    if report.get("frozen_modules"):
        lines.append(f"frozen: {', '.join(report['frozen_modules'])}")
    return "\n".join(lines)
