"""`bevbridge demo` (and `make demo`): the synthetic world, CTAB trained on the CPU for a bounded time, the official
metrics, and an HTML report in runs/demo/.

1. generate the synthetic nuScenes-format world in data/synth, or reuse the cached one;
2. train configs/ctab/mtl_ctab_synth.yaml (CTAB, Table II row B, shrunk for a CPU) within the time budget;
3. evaluate with the devkit (mAP, NDS) and BEV IoU (mIoU-7, mIoU-4, per class);
4. write runs/demo/: metrics.json, BEV renders (Fig. 4 style), camera views, gate evolution (Fig. 3), per-class IoU
   (Fig. 5), losses, index.html.
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
from bevbridge.engine.run_log import read_scalars, write_metrics

__all__ = ["run_demo", "DEFAULT_CONFIG"]

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "ctab" / "mtl_ctab_synth.yaml"
DEMO_MARKER = ".bevbridge-demo"  # marks a folder the demo wrote (and may replace)
EVAL_AND_REPORT_RESERVE_S = 75.0  # kept for the final evaluation and the figures (measured: ~20-40 s)


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
    budget = args.minutes * 60 - (time.perf_counter() - t0) - EVAL_AND_REPORT_RESERVE_S
    log.info("training %s for at most %d steps or %.0f s", cfg.name, cfg.train.max_steps, max(budget, 0))
    result = trainer.fit(time_budget_s=max(budget, 0.0))
    metrics = result.metrics if result.step == cfg.train.max_steps else trainer.evaluate()
    trainer.run_log.close()
    write_metrics(out / "metrics.json", metrics, step=result.step, max_steps=cfg.train.max_steps,
                  config=str(config), train_seconds=round(time.perf_counter() - t0, 1))

    model = trainer.module
    notes = [f"{cfg.name}: {result.step} of {cfg.train.max_steps} training steps on "
             f"{trainer.device} in {time.perf_counter() - t0:.0f} s (batch {cfg.data.batch_size}); synthetic world "
             f"{cfg.data.dataroot} ({cfg.data.version}, {cfg.data.train_split} / {cfg.data.val_split}).",
             "Numbers on the synthetic world measure that the pipeline learns; they are not comparable to nuScenes."]
    use_ema = cfg.eval.use_ema and trainer.ema is not None
    with trainer.ema.applied_to(model) if use_ema else contextlib.nullcontext():  # the weights that were evaluated
        report = render_run_report(out, model, val_set, metrics, read_scalars(out), needs.map_grid,
                                   title="bevbridge demo: CTAB on the synthetic world", notes=notes)
    elapsed = time.perf_counter() - t0
    keys = ("detection/mAP", "detection/NDS", "segmentation/mIoU-7@max", "segmentation/mIoU-4@max")
    print("demo finished in %.0f s (%d/%d steps): %s" % (elapsed, result.step, cfg.train.max_steps, ", ".join(
        f"{k} {metrics[k]:.3f}" for k in keys if k in metrics)))
    print(f"report: {report}")
    return 0
