"""`bevbridge demo` (and `make demo`): the synthetic world, CTAB trained on the CPU for a fixed number of steps, the
official metrics next to the untrained model's, and an HTML report in runs/demo/.

1. generate the synthetic nuScenes-format world in data/synth, or reuse the cached one;
2. evaluate the untrained model (the baseline the report shows beside the result);
3. train configs/ctab/mtl_ctab_synth.yaml (CTAB, Table II row B, shrunk for a CPU) for ``train.max_steps`` steps:
   the same model on every machine. ``--minutes`` is only a safety stop: if it is reached, training stops early and
   the console, metrics.json and the report say so and by how much;
4. evaluate with the devkit (mAP, NDS, per-class AP) and BEV IoU (mIoU-7, mIoU-4, per class);
5. write runs/demo/: metrics.json (with the untrained baseline and the timings), BEV renders (Fig. 4 style), camera
   views, gate evolution (Fig. 3), per-class IoU (Fig. 5), losses, index.html.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import time
from pathlib import Path

from bevbridge.config import load_config
from bevbridge.engine import build
from bevbridge.engine.eval_loop import evaluation_protocols
from bevbridge.engine.run_log import read_scalars, write_metrics

__all__ = ["run_demo", "DEFAULT_CONFIG"]

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "ctab" / "mtl_ctab_synth.yaml"
DEMO_MARKER = ".bevbridge-demo"  # marks a folder the demo wrote (and may replace)
HEADLINE = ("detection/mAP", "detection/NDS", "detection/AP/car", "segmentation/mIoU-7@max", "segmentation/mIoU-4@max")


def run_demo(args: argparse.Namespace) -> int:
    from bevbridge.engine.trainer import Trainer
    from bevbridge.viz.run_report import render_run_report

    t0 = time.perf_counter()
    config = Path(args.config) if args.config else DEFAULT_CONFIG
    if not config.is_file():
        raise build.BuildError(f"demo config not found: {config}")
    cfg = load_config(config, args.overrides)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (out / DEMO_MARKER).is_file():  # any run has a config.yaml: only a folder the demo wrote is replaced
            raise build.BuildError(f"{out} exists and was not written by `bevbridge demo` (it has no {DEMO_MARKER}); "
                                   f"choose another --out, or remove it yourself")
        log.info("replacing the previous demo run in %s", out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text("written by `bevbridge demo`: the next demo with this --out replaces this folder\n")

    build.ensure_dataset(cfg.data)
    model = build.build_model(cfg)
    needs = model.data_needs()
    train_set, val_set = build.build_datasets(cfg.data, needs, seed=cfg.train.seed)
    evaluators = build.build_evaluators(cfg, needs, out_dir=out)
    trainer = Trainer(cfg, model, train_set, val_set, evaluators, out)
    t_data = time.perf_counter() - t0
    log.info("evaluating the untrained model (the report's baseline)")
    baseline = trainer.evaluate(use_ema=False)
    t_baseline = time.perf_counter() - t0 - t_data
    planned = cfg.train.max_steps
    safety = args.minutes * 60 - (time.perf_counter() - t0)
    log.info("training %s for %d steps (safety stop after %.0f s)", cfg.name, planned, max(safety, 0))
    t1 = time.perf_counter()
    result = trainer.fit(time_budget_s=max(safety, 0.0))
    t_train = time.perf_counter() - t1
    cut = result.step < planned
    metrics = result.metrics if not cut else trainer.evaluate()
    trainer.run_log.close()
    if cut:
        log.warning("the safety stop (--minutes %g) cut training short: %d of %d steps (%.0f%%); the result is not "
                    "the demo's model", args.minutes, result.step, planned, 100 * result.step / planned)
    timings = {"data_s": round(t_data, 1), "baseline_eval_s": round(t_baseline, 1),
               "train_and_final_eval_s": round(t_train, 1),
               "total_s": round(time.perf_counter() - t0, 1)}
    write_metrics(out / "metrics.json", metrics, step=result.step, max_steps=planned, cut_short=cut,
                  config=str(config), untrained=baseline, timings=timings, **trainer.precision.record(),
                  protocols=evaluation_protocols(evaluators))

    model = trainer.module
    gates = model.scalars() if hasattr(model, "scalars") else {}
    notes = [f"What was trained: {cfg.name} (CTAB, Table II row B shrunk for a CPU), from scratch, "
             f"{result.step} of {planned} steps of batch {cfg.data.batch_size} on {trainer.device} "
             f"({trainer.precision.describe()}) in {t_train:.0f} s of training and final evaluation, "
             f"{timings['total_s']:.0f} s in all "
             f"(data {t_data:.0f} s, untrained evaluation {t_baseline:.0f} s).",
             f"Synthetic world {cfg.data.dataroot} ({cfg.data.version}): trained on {cfg.data.train_split} "
             f"({len(train_set)} samples), evaluated on {cfg.data.val_split} ({len(val_set)} samples).",
             "Untrained -> trained: " + ", ".join(f"{k.split('/')[-1]} {baseline.get(k, float('nan')):.3f} -> "
                                                  f"{metrics.get(k, float('nan')):.3f}" for k in HEADLINE) + ".",
             "Gates and sigmas at the end: " + ", ".join(f"{k} {v:.4f}" for k, v in gates.items())
             + " (gates start at sigmoid(-2) = 0.1192, sigmas at 1).",
             "Numbers on the synthetic world measure that the pipeline learns; they are not comparable to nuScenes."]
    if cut:
        notes.insert(0, f"CUT SHORT by the safety stop (--minutes {args.minutes:g}): {result.step} of {planned} "
                        f"steps; this is not the demo's full training.")
    use_ema = cfg.eval.use_ema and trainer.ema is not None
    with trainer.ema.applied_to(model) if use_ema else contextlib.nullcontext():  # the weights that were evaluated
        report = render_run_report(out, model, val_set, metrics, read_scalars(out), needs.map_grid,
                                   title="bevbridge demo: CTAB on the synthetic world", notes=notes,
                                   baseline=baseline)
    elapsed = time.perf_counter() - t0
    print("demo finished in %.0f s (%d/%d steps%s): %s" % (
        elapsed, result.step, planned, ", CUT SHORT by --minutes" if cut else "",
        ", ".join(f"{k} {baseline.get(k, float('nan')):.3f} -> {metrics[k]:.3f}" for k in HEADLINE if k in metrics)))
    print(f"report: {report}")
    return 0
