"""The training engine: one loop for every model (trainer), its parts (optim, schedule, ema, amp, checkpoint,
loader, rng, distributed, eval_loop, run_log, train_step), the builder (build: config -> model, datasets,
evaluators), the CLI bodies (commands) and `bevbridge summary` (summary).

    from bevbridge.engine import Trainer
    Trainer(cfg, model, train_set, val_set, evaluators, out_dir).fit()
"""

from bevbridge.engine.eval_loop import Evaluator, run_evaluation
from bevbridge.engine.errors import BuildError, EngineError, TrainingDiverged
from bevbridge.engine.trainer import FitResult, Trainer

__all__ = ["Trainer", "FitResult", "EngineError", "TrainingDiverged", "BuildError", "Evaluator", "run_evaluation"]
