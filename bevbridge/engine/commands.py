"""The bodies of ``bevbridge train | eval | infer`` (bevbridge/cli.py parses the arguments and calls these).

Objects come from bevbridge/engine/build.py; everything else is the engine's programmatic API, so a script can do
the same in a few lines.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from bevbridge.config import load_config
from bevbridge.engine import build, distributed
from bevbridge.engine.best import check_best_metric
from bevbridge.engine.checkpoint import load_model_state
from bevbridge.engine.errors import EngineError
from bevbridge.engine.resume import corrupt_hint
from bevbridge.engine.run_log import add_file_log, write_metrics
from bevbridge.weights import CorruptWeightsError, checkpoint_dir_of, read_weights

__all__ = ["train", "evaluate", "infer", "viz", "summary"]

log = logging.getLogger(__name__)


def _run_dir(cfg, out: str | None) -> Path:
    return Path(out) if out else Path(cfg.train.out_dir) / cfg.name


def train(args: argparse.Namespace) -> int:
    from bevbridge.engine.trainer import Trainer

    cfg = load_config(args.config, args.overrides)
    model = build.build_model(cfg)
    needs = model.data_needs()
    evaluators = build.build_evaluators(cfg, needs)
    check_best_metric(cfg.eval.best_metric, evaluators)  # before the (possibly long) dataset opening
    train_set, val_set = build.build_datasets(cfg.data, needs, seed=cfg.train.seed)
    run_dir = _run_dir(cfg, args.out)
    handler = add_file_log(run_dir / "train.log") if os.environ.get("RANK", "0") == "0" else None
    try:
        trainer = Trainer(cfg, model, train_set, val_set, evaluators, run_dir)
        result = trainer.fit(resume=args.resume, stop_at=args.max_steps)
        trainer.run_log.close()
    finally:
        if handler is not None:
            logging.getLogger("bevbridge").removeHandler(handler)
            handler.close()
    if trainer.dist.is_main:
        extra = f", {result.skipped_steps} skipped" if result.skipped_steps else ""
        print(f"trained to step {result.step}/{cfg.train.max_steps}{extra}; run folder {run_dir}; "
              f"last checkpoint {result.checkpoint}")
    return 0


def _load_for_inference(args: argparse.Namespace):
    """(cfg, model on its device with the checkpoint's weights, device, what was loaded)."""
    cfg = load_config(args.config, args.overrides)
    model = build.build_model(cfg, init=False)
    try:
        state, source = read_weights(args.ckpt, prefer_ema=cfg.eval.use_ema, kind=model.kind)
        load_model_state(model, state, source)
    except CorruptWeightsError as e:
        ema = " (or eval.use_ema=false to read model.safetensors)" if "ema" in e.path.name else ""
        raise EngineError(f"--ckpt: {e}; {corrupt_hint(e.path, '--ckpt')}{ema}") from None
    except (FileNotFoundError, ValueError) as e:
        raise build.BuildError(f"--ckpt: {e}") from None
    build.apply_freeze(model, cfg.model.freeze if cfg.model is not None else ())
    device = distributed.select_device(cfg.train.device)
    distributed.setup(device)
    log.info("loaded %s", source)
    return cfg, model.to(device), device, source


def _default_eval_dir(cfg, ckpt: str) -> Path:
    try:
        d = checkpoint_dir_of(ckpt)
    except FileNotFoundError:
        return Path(cfg.train.out_dir) / cfg.name / "eval" / Path(ckpt).stem
    if d.parent.name == "checkpoints":
        return d.parent.parent / "eval" / d.name
    return d / "eval"


def evaluate(args: argparse.Namespace) -> int:
    from bevbridge.engine.amp import Precision
    from bevbridge.engine.eval_loop import evaluation_protocols, run_evaluation

    cfg, model, device, source = _load_for_inference(args)
    needs = model.data_needs()
    _, val_set = build.build_datasets(cfg.data, needs, train=False)
    evaluators = build.build_evaluators(cfg, needs)
    if not evaluators:
        raise build.BuildError("eval.evaluators is empty: nothing to compute (e.g. eval.evaluators=[detection])")
    metrics = run_evaluation(model, val_set, evaluators, batch_size=cfg.eval.batch_size or cfg.data.batch_size,
                             num_workers=cfg.data.num_workers, device=device,
                             precision=Precision(cfg.train.amp, device, cfg.train.amp_allow_emulated))
    if distributed.info().is_main:
        out = Path(args.out) if args.out else _default_eval_dir(cfg, args.ckpt)
        path = write_metrics(out / "metrics.json", metrics, checkpoint=source,
                             protocols=evaluation_protocols(evaluators))
        for k, v in metrics.items():
            print(f"{k}: {v}")
        print(f"metrics written to {path}")
    return 0


def infer(args: argparse.Namespace) -> int:
    from bevbridge.engine.amp import Precision
    from bevbridge.engine.eval_loop import run_evaluation

    cfg, model, device, source = _load_for_inference(args)
    out = Path(args.out)
    exporter = build.build_exporter(cfg, out, model.data_needs())
    _, val_set = build.build_datasets(cfg.data, model.data_needs(), train=False)
    run_evaluation(model, val_set, {"export": exporter}, batch_size=cfg.eval.batch_size or cfg.data.batch_size,
                   num_workers=cfg.data.num_workers, device=device,
                   precision=Precision(cfg.train.amp, device, cfg.train.amp_allow_emulated), desc="infer")
    if distributed.info().is_main:
        print(f"predictions of {source} written to {out}")
    return 0


def viz(args: argparse.Namespace) -> int:
    """Render ground truth (and, with --ckpt, predictions) of a few validation samples into an HTML page."""
    from bevbridge.viz.report import write_report
    from bevbridge.viz.run_report import render_samples

    if args.ckpt:
        cfg, model, device, source = _load_for_inference(args)
        needs = model.data_needs()
    else:
        cfg, model, source = load_config(args.config, args.overrides), None, None
        if cfg.model is None:
            raise build.BuildError("viz needs a config with a model section (it decides what the data holds)")
        needs = cfg.model.data_needs()
    _, val_set = build.build_datasets(cfg.data, needs, train=False)
    n = len(val_set)
    k = max(1, min(args.samples, n))
    indices = sorted({int(round(i * (n - 1) / max(k - 1, 1))) for i in range(k)})
    out = Path(args.out)
    seg_grid = needs.map_grid
    figures = render_samples(model, val_set, indices, out, seg_grid)
    what = f"predictions of {source}" if source else "ground truth only (no --ckpt)"
    page = write_report(out, f"bevbridge viz: {cfg.name}", [], figures,
                        [f"{cfg.data.dataroot} {cfg.data.version} {cfg.data.val_split}: samples {indices}; {what}."])
    print(f"wrote {len(figures)} figures and {page}")
    return 0


def summary(args: argparse.Namespace) -> int:
    """Parameters per top-level module (trainable / frozen) and forward FLOPs of one sample (engine/summary.py)."""
    import json

    from bevbridge.engine.summary import format_summary, summarize

    cfg = load_config(args.config, args.overrides)
    report = summarize(cfg, device=args.device, flops=not args.no_flops, config_path=args.config)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(format_summary(report))
    return 0
