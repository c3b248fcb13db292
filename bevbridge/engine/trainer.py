"""The training loop: one Trainer for every model that follows the contract in bevbridge/models/contract.py.

    trainer = Trainer(cfg, model, train_set, val_set, evaluators, out_dir)
    result = trainer.fit(resume=None, stop_at=None)

One step = ``train.grad_accum`` micro-batches of ``data.batch_size`` samples per process, then one AdamW step:

1. the schedule sets every group's lr (and beta1) for this step (engine/schedule.py);
2. each micro-batch: the model's forward under autocast and ``model.loss`` in float32, both inside the one module
   DDP wraps (engine/train_step.py); its ``"loss"`` / grad_accum goes backward (DDP reduces gradients on the last
   micro-batch only);
3. a non-finite loss on any rank skips the step on every rank (logged); so does a non-finite gradient norm
   (a finite loss with an infinite gradient); ``train.max_bad_steps`` such steps in a row abort training with
   :class:`TrainingDiverged`. Under fp16 the GradScaler skips overflowing steps itself (normal for a few steps in
   a row at the start, while its scale comes down): ``train.max_overflow_steps`` of those in a row abort too;
4. gradients are unscaled (fp16), clipped to ``optim.grad_clip``, the optimizer steps, the EMA updates.

A skipped step still counts as a step (the schedule and the data move on). After a step ``.grad`` holds that step's
gradients (zeroed at the start of the next one). The Trainer seeds python/numpy/torch with ``train.seed + rank`` when
it is built (dropout and other model-side randomness); build the model before, seeded as you like (build_model
seeds with train.seed). Evaluation runs with the global RNGs saved and restored, so it never changes training.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from bevbridge.config import save_config, to_dict
from bevbridge.data.batch import collate
from bevbridge.data.bad_samples import skipped_samples
from bevbridge.engine import distributed
from bevbridge.engine.amp import Precision
from bevbridge.engine.best import check_best_metric, is_improvement
from bevbridge.engine.checkpoint import CheckpointManager, load_model_state, model_weights
from bevbridge.engine.ema import ModelEMA
from bevbridge.engine.errors import EngineError, TrainingDiverged
from bevbridge.engine.eval_loop import Evaluator, evaluation_protocols, run_evaluation
from bevbridge.engine.loader import train_loader
from bevbridge.engine.optim import build_optimizer, scaled_lr
from bevbridge.engine.precise_bn import recompute_for_evaluation
from bevbridge.engine.resume import read_resume_checkpoint, retire_abandoned, warn_config_changes
from bevbridge.engine.rng import get_rng_state, preserved_rng, seed_everything, set_rng_state
from bevbridge.engine.run_log import RunLog, write_metrics
from bevbridge.engine.schedule import Schedule
from bevbridge.engine.train_step import TrainStep, check_losses
from bevbridge.config.schema import ExperimentConfig
from bevbridge.log import progress
from bevbridge.weights import MODEL_FILE

__all__ = ["Trainer", "FitResult"]

log = logging.getLogger(__name__)
STATE_FORMAT = 1


@dataclass
class FitResult:
    step: int
    checkpoint: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)
    skipped_steps: int = 0


class Trainer:
    def __init__(self, cfg: ExperimentConfig, model: nn.Module, train_set: Dataset, val_set: Dataset | None = None,
                 evaluators: Mapping[str, Evaluator] | None = None, out_dir: str | Path | None = None, *,
                 collate_fn: Callable[[Sequence[Any]], Any] = collate):
        self.cfg = cfg
        t = cfg.train
        self.device = distributed.select_device(t.device)
        self.dist = distributed.setup(self.device)
        self.run_dir = Path(out_dir) if out_dir is not None else Path(t.out_dir) / cfg.name
        if t.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
            torch.use_deterministic_algorithms(True)
        self.module = model.to(self.device)
        self.precision = Precision(t.amp, self.device, t.amp_allow_emulated)
        # forward + loss in one module, and DDP wraps that one (engine/train_step.py says why)
        self.train_step_module = TrainStep(self.module, self.precision)
        self.model: nn.Module = self.train_step_module
        if self.dist.distributed:
            self.model = nn.parallel.DistributedDataParallel(
                self.train_step_module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=t.find_unused_parameters)
        self.global_batch = cfg.data.batch_size * self.dist.world_size * t.grad_accum
        peak = scaled_lr(cfg.optim, self.global_batch)
        try:
            self.optimizer = build_optimizer(self.module, cfg.optim, peak)
        except ValueError as e:
            raise EngineError(str(e)) from None
        self.ema = ModelEMA(self.module, t.ema_decay, t.ema_ramp, t.ema_init_updates) if t.ema else None
        self.loader, self.sampler = train_loader(train_set, cfg.data.batch_size, cfg.data.num_workers, t.seed,
                                                 self.dist, self.device, collate_fn)
        if t.max_epochs is not None:
            per_epoch = len(self.loader) // t.grad_accum
            if per_epoch < 1:
                raise EngineError(f"train.max_epochs: an epoch of {len(self.loader)} batches is less than one "
                                  f"optimizer step (train.grad_accum {t.grad_accum})")
            t.max_steps = t.max_epochs * per_epoch
            log.info("train.max_epochs %d x %d optimizer steps per epoch -> train.max_steps %d", t.max_epochs,
                     per_epoch, t.max_steps)
        self.schedule = Schedule(cfg.schedule, t.max_steps)
        self.train_set, self.val_set, self.evaluators, self.collate_fn = (train_set, val_set, dict(evaluators or {}),
                                                                          collate_fn)
        check_best_metric(cfg.eval.best_metric, self.evaluators)  # a misspelt name: now, not never a best checkpoint
        self.ckpts = CheckpointManager(self.run_dir / "checkpoints", t.keep_last)
        self.run_log = RunLog(self.run_dir, enabled=self.dist.is_main)
        self.step = self.epoch = self.batch_in_epoch = self.bad_in_row = self.skipped = self.overflow_in_row = 0
        self.best: dict[str, Any] = {}
        self.last_checkpoint: Path | None = None
        seed_everything(t.seed + self.dist.rank)
        scaling = (f"linear from base_batch {cfg.optim.base_batch}" if cfg.optim.base_batch else "none")
        log.info("global batch %d (%d/process x %d process(es) x %d accumulation); peak lr %.3g (scaling: %s); "
                 "device %s; amp %s", self.global_batch, cfg.data.batch_size, self.dist.world_size, t.grad_accum,
                 peak, scaling, self.device, self.precision.mode)

    # ------------------------------------------------------------------------------------------------- the loop
    def fit(self, resume: str | Path | bool | None = None, stop_at: int | None = None,
            time_budget_s: float | None = None) -> FitResult:
        """Train until ``train.max_steps`` (or until step ``stop_at``, keeping the schedule), checkpointing on the way.

        ``resume``: True = the latest checkpoint of this run; a path = that checkpoint (folder or run folder).
        ``time_budget_s``: also stop (with a checkpoint) once this many seconds have passed since fit() started;
        the schedule keeps its length, so a cut run ends before the learning rate has fully decayed.
        """
        started = time.perf_counter()
        t = self.cfg.train
        if resume is True and self.ckpts.latest() is None:
            raise EngineError(f"--resume: {self.run_dir} has no complete checkpoint to resume from "
                              f"(expected {self.ckpts.root}/step_*/)")
        if resume:
            self.load(resume)
        elif self.ckpts.latest() is not None:
            raise EngineError(f"{self.run_dir} already holds checkpoints; pass --resume to continue that run, "
                              f"or --out to start a new one elsewhere")
        if self.dist.is_main:
            save_config(self.cfg, self.run_dir / "config.yaml")
        stop = min(stop_at if stop_at is not None else t.max_steps, t.max_steps)
        metrics: dict[str, Any] = {}
        batches = self._batches()
        window: dict[str, Any] = defaultdict(float)
        n_window, samples, busy = 0, 0, 0.0  # busy: seconds spent in training steps (data loading included)
        bar = progress(total=t.max_steps, initial=self.step, desc="train", unit="step")
        try:
            while self.step < stop:
                if time_budget_s is not None and time.perf_counter() - started > time_budget_s:
                    log.info("time budget of %.0f s reached at step %d/%d", time_budget_s, self.step, t.max_steps)
                    if self.last_checkpoint is None or not str(self.last_checkpoint).endswith(f"{self.step:08d}"):
                        self.save()
                    break
                tic = time.perf_counter()
                out = self._train_step(batches)
                busy += time.perf_counter() - tic
                self.step += 1
                bar.update(1)
                samples += out["samples"]
                if out["ok"]:
                    n_window += 1
                    for k, v in out["logs"].items():
                        window[k] += v
                if self.step % t.log_every == 0 or self.step == stop:
                    self._log_train(window, n_window, samples / max(busy, 1e-9), bar)
                    window.clear()
                    n_window, samples, busy = 0, 0, 0.0
                every = self.cfg.eval.every_steps
                improved = False
                if self.step == t.max_steps or (every and self.step % every == 0):
                    metrics = self.evaluate()
                    improved = self._improved(metrics)
                if improved:  # before the save, so that the checkpoint's state knows it is the best
                    self._set_best(metrics)
                if self.step % t.ckpt_every == 0 or self.step == stop or improved:
                    self.save()
                if improved and self.dist.is_main:  # best.json once its checkpoint exists
                    self.ckpts.set_best(self.step, self.best["metric"], self.best["value"])
                    self.ckpts.prune()
        finally:
            bar.close()
            self.run_log.flush()
        return FitResult(self.step, self.last_checkpoint, metrics, self.skipped)

    def _batches(self) -> Iterator[Any]:
        """Batches forever, epoch after epoch, starting where the (possibly resumed) position says."""
        bs = self.cfg.data.batch_size
        while True:
            self.sampler.set_epoch(self.epoch, start=self.batch_in_epoch * bs)
            for batch in self.loader:
                self.batch_in_epoch += 1
                yield batch
            self.epoch += 1
            self.batch_in_epoch = 0

    def _train_step(self, batches: Iterator[Any]) -> dict[str, Any]:
        t, opt = self.cfg.train, self.optimizer
        self.schedule.apply(opt, self.step)
        opt.zero_grad(set_to_none=True)
        logs: dict[str, torch.Tensor] = {}
        n, bad = 0, ""
        for micro in range(t.grad_accum):
            batch = next(batches)
            n += len(batch)
            batch = batch.to(self.device, non_blocking=True)
            last = micro == t.grad_accum - 1
            sync = contextlib.nullcontext() if last or not self.dist.distributed else self.model.no_sync()
            with sync:
                losses = self.model(batch)
                total = check_losses(losses)
                finite = bool(torch.isfinite(total).item())
                if distributed.any_true(not finite, self.device):
                    bad = "non-finite loss on some process (here: " + ", ".join(
                        f"{k}={float(v.detach()):.4g}" for k, v in losses.items() if torch.is_tensor(v) and v.numel() == 1) + ")"
                    break
                self.precision.backward(total / t.grad_accum)
            for k, v in losses.items():
                v = v.detach().float().mean() if torch.is_tensor(v) else torch.tensor(float(v))
                logs[k] = logs.get(k, 0) + v / t.grad_accum
        grad_norm = float("nan")
        if not bad:
            self.precision.unscale_(opt)
            params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
            clip = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip is not None else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
            if not math.isfinite(grad_norm) and self.precision.scaler is None:
                bad = f"non-finite gradient norm ({grad_norm})"
            elif self.precision.step(opt):
                if self.ema is not None:
                    self.ema.update(self.module)
            else:
                return self._overflowed(n)
        self.overflow_in_row = 0
        if bad:
            self.bad_in_row += 1
            self.skipped += 1
            log.warning("step %d: %s; step skipped (%d in a row, limit train.max_bad_steps=%d)", self.step + 1, bad,
                        self.bad_in_row, t.max_bad_steps)
            if self.bad_in_row >= t.max_bad_steps:
                raise TrainingDiverged(
                    f"training aborted at step {self.step + 1}: {self.bad_in_row} steps in a row had a non-finite "
                    f"loss or gradient (last: {bad}); lower optim.lr, set optim.grad_clip, or check the data "
                    f"(the last good checkpoint is kept)")
            return {"ok": False, "samples": n * self.dist.world_size, "logs": {}}
        self.bad_in_row = 0
        logs["grad_norm"] = torch.tensor(grad_norm)
        return {"ok": True, "samples": n * self.dist.world_size, "logs": logs}

    def _overflowed(self, n: int) -> dict[str, Any]:
        """fp16: the GradScaler skipped the step (overflow) and lowered its scale. Normal now and then, and for a
        few steps in a row at the start; ``train.max_overflow_steps`` in a row abort training."""
        t = self.cfg.train
        self.overflow_in_row += 1
        self.skipped += 1
        scale = self.precision.scaler.get_scale()
        log.debug("step %d: fp16 overflow, step skipped by the GradScaler (scale now %g)", self.step + 1, scale)
        if self.overflow_in_row >= t.max_overflow_steps:
            raise TrainingDiverged(
                f"training aborted at step {self.step + 1}: {self.overflow_in_row} steps in a row overflowed in fp16 "
                f"(skipped by the GradScaler, whose scale fell to {scale:g}; limit train.max_overflow_steps); lower "
                f"optim.lr, set optim.grad_clip, try train.amp=bf16, or check the data (the last good checkpoint is "
                f"kept)")
        return {"ok": False, "samples": n * self.dist.world_size, "logs": {}}

    def _log_train(self, window: Mapping[str, Any], n: int, samples_per_s: float, bar) -> None:
        values = {k: float(v) / n for k, v in window.items()} if n else {}
        for g in self.optimizer.param_groups:
            values[f"lr_{g['name']}"] = g["lr"]
        values["lr"] = max(g["lr"] for g in self.optimizer.param_groups)
        values["samples_per_s"] = samples_per_s
        values["skipped_steps"] = self.skipped
        bad = skipped_samples(self.loader.dataset)  # data.skip_bad_samples: samples replaced so far (this rank)
        if bad is not None:
            values["skipped_samples"] = bad.count
        if self.precision.scaler is not None:
            values["amp_scale"] = self.precision.scaler.get_scale()
        self.run_log.scalars(self.step, values, prefix="train/")
        scalars = getattr(self.module, "scalars", None)
        if callable(scalars):
            self.run_log.scalars(self.step, scalars(), prefix="model/")
        if self.dist.is_main:
            parts = " ".join(f"{k} {v:.4g}" for k, v in values.items() if k.startswith("loss") and k != "loss")
            loss = f"loss {values['loss']:.4g}" if "loss" in values else "loss n/a (all skipped)"
            log.info("step %d/%d %s%s lr %.3g grad %.3g %.1f samples/s", self.step, self.cfg.train.max_steps, loss,
                     f" ({parts})" if parts else "", values["lr"], values.get("grad_norm", float("nan")),
                     samples_per_s)
            bar.set_postfix(loss=f"{values.get('loss', float('nan')):.4g}", lr=f"{values['lr']:.2g}", refresh=False)

    # ------------------------------------------------------------------------------------------------ evaluation
    def evaluate(self, use_ema: bool | None = None) -> dict[str, Any]:
        """Evaluate on the validation set (EMA weights if configured); write eval/step_N/metrics.json."""
        if not self.evaluators or self.val_set is None:
            return {}
        use_ema = self.cfg.eval.use_ema if use_ema is None else use_ema
        ema = self.ema.applied_to(self.module) if (use_ema and self.ema is not None) else contextlib.nullcontext()
        with preserved_rng(), ema:
            self._recompute_bn(use_ema and self.ema is not None)
            metrics = run_evaluation(self.module, self.val_set, self.evaluators,
                                     batch_size=self.cfg.eval.batch_size or self.cfg.data.batch_size,
                                     num_workers=self.cfg.data.num_workers, device=self.device,
                                     precision=self.precision, collate_fn=self.collate_fn,
                                     desc=f"eval@{self.step}")
        if self.dist.is_main:
            write_metrics(self.run_dir / "eval" / f"step_{self.step:08d}" / "metrics.json", metrics,
                          step=self.step, ema=bool(use_ema and self.ema is not None), **self.precision.record(),
                          protocols=evaluation_protocols(self.evaluators))
            self.run_log.scalars(self.step, metrics, prefix="eval/")
            headline = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k.count("/") == 1}
            log.info("eval at step %d: %s (all metrics in %s)", self.step,
                     ", ".join(f"{k} {v:.4g}" for k, v in headline.items()),
                     self.run_dir / "eval" / f"step_{self.step:08d}" / "metrics.json")
        return metrics

    def _recompute_bn(self, into_ema: bool) -> None:
        """``eval.recompute_bn_batches`` > 0: BatchNorm statistics of the weights about to be evaluated
        (engine/precise_bn.py), also written into the EMA's copy when the EMA weights are evaluated."""
        if self.cfg.eval.recompute_bn_batches:
            recompute_for_evaluation(self.module, self.train_set, self.collate_fn, self.cfg, self.dist, self.device,
                                     self.precision, self.ema if into_ema else None)

    def _improved(self, metrics: Mapping[str, Any]) -> bool:
        e = self.cfg.eval
        return is_improvement(e.best_metric, e.best_mode, metrics, self.best)

    def _set_best(self, metrics: Mapping[str, Any]) -> None:
        key = self.cfg.eval.best_metric
        self.best = {"metric": key, "value": float(metrics[key]), "step": self.step}

    # ----------------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything but the weights, as tensors/numbers/strings (torch.load(weights_only=True) reads it back)."""
        return {
            "format": STATE_FORMAT, "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "bad_in_row": self.bad_in_row, "skipped": self.skipped, "overflow_in_row": self.overflow_in_row,
            "world_size": self.dist.world_size,
            "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
            "ema_updates": self.ema.updates if self.ema is not None else -1, "scaler": self.precision.state_dict(),
            "best": dict(self.best), "rng": distributed.all_gather_objects(get_rng_state()),
        }

    def save(self) -> Path:
        """Write a checkpoint of the current step (every rank must call this; rank 0 writes)."""
        state = self.state_dict()
        path = self.ckpts.path(self.step)
        if self.dist.is_main:
            weights = model_weights(self.module)
            ema = None
            if self.ema is not None:  # frozen modules have no EMA: their weights are the model's
                shadow = self.ema.state_dict()
                ema = {k: shadow.get(k, v) for k, v in weights.state.items()}
            path = self.ckpts.save(self.step, weights, state, ema)
            log.info("checkpoint %s", path)
        distributed.barrier()
        self.last_checkpoint = path
        return path

    def load(self, resume: str | Path | bool = True) -> None:
        """Resume: ``True`` = this run's newest checkpoint that loads; a checkpoint folder = that one; a run or
        checkpoints folder = its newest that loads. Later checkpoints of this run are retired (engine/resume.py)."""
        if self.dist.is_main:
            warn_config_changes(self.run_dir, to_dict(self.cfg))
        ck = read_resume_checkpoint(resume, self.ckpts, want_ema=self.ema is not None)
        where = ck.path / MODEL_FILE
        try:
            load_model_state(self.module, ck.model, str(where))
        except ValueError as e:
            raise EngineError(f"--resume: {e}") from None
        state = ck.state
        if state.get("format") != STATE_FORMAT:
            raise EngineError(f"--resume {ck.path}: training-state format {state.get('format')} is not {STATE_FORMAT}")
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as e:
            raise EngineError(f"--resume {ck.path}: optimizer state does not fit ({e})") from None
        if self.ema is not None:
            if ck.ema is not None:
                self.ema.load_state_dict(ck.ema, int(state["ema_updates"]))
            else:
                log.warning("--resume %s: no EMA weights in the checkpoint; the EMA restarts from the weights", ck.path)
        self.precision.load_state_dict(state["scaler"])
        for k in ("step", "epoch", "batch_in_epoch", "bad_in_row", "skipped"):
            setattr(self, k, int(state[k]))
        self.overflow_in_row = int(state.get("overflow_in_row", 0))
        self.best = dict(state["best"])
        rng = state["rng"]
        if len(rng) == self.dist.world_size:
            set_rng_state(rng[self.dist.rank])
        else:
            log.warning("--resume: saved with %d processes, resumed with %d: data order is kept, but model-side "
                        "randomness is reseeded (not bit-identical)", len(rng), self.dist.world_size)
            seed_everything(self.cfg.train.seed + self.dist.rank + self.step)
        if int(state["world_size"]) != self.dist.world_size:
            log.warning("--resume: the global batch changed with the number of processes (%d -> %d)",
                        int(state["world_size"]), self.dist.world_size)
        distributed.barrier()  # every rank has read its files before rank 0 moves any aside
        if self.dist.is_main:
            retire_abandoned(self.ckpts, self.run_dir, ck.path, self.best)
            self.run_log.resumed(self.step)
        distributed.barrier()
        self.last_checkpoint = ck.path if ck.path.parent.resolve() == self.ckpts.root.resolve() else None
        log.info("resumed from %s at step %d (epoch %d, batch %d)", ck.path, self.step, self.epoch,
                 self.batch_in_epoch)
