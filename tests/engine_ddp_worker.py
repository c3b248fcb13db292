"""Run by tests/test_engine_ddp.py: in the test process (1 process) and under torchrun (2 processes, gloo).

``run``: trains the tiny model 3 steps on a global batch of 4 with one NaN sample in the second global batch (on
rank 1 only when there are 2 processes), then evaluates on 5 samples (the DistributedSampler pads them to 6 with 2
processes).
``run_resume``: the tiny model (dropout on: model-side randomness differs per rank) trained 6 steps straight, and
the same run stopped at step 4 (checkpoints at 2 and 4), then resumed from step 2 by a fresh Trainer with another
initialisation and other RNG states, trained to 6.
``run_accum``: 2 steps with a global batch of 4 as (4 per process x 1) on one process or (1 per process x 2
accumulation) on two.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch.utils.data import DistributedSampler

from bevbridge.engine import Trainer
from bevbridge.engine.distributed import barrier, cleanup
from tests.engine_tiny import MSEEvaluator, TinyDataset, build_tiny, tiny_config

GLOBAL_BATCH = 4
SEED = 3


def run(out: Path, world: int) -> dict:
    order = list(DistributedSampler(TinyDataset(12), num_replicas=1, rank=0, seed=SEED, shuffle=True))
    nan_token = f"tok{order[5]:04d}"  # global batch 2 = order[4:8]; with 2 processes order[5] goes to rank 1
    cfg = tiny_config(data={"batch_size": GLOBAL_BATCH // world}, optim={"grad_clip": None},
                      train={"max_steps": 3, "seed": SEED, "ckpt_every": 100, "max_bad_steps": 3})
    ev = MSEEvaluator()
    trainer = Trainer(cfg, build_tiny(SEED, dropout=0.0), TinyDataset(12, nan_tokens=(nan_token,)),
                      TinyDataset(5, start=100), {"tiny": ev}, out / "run")
    result = trainer.fit()
    return {
        "grads": {n: p.grad.detach().clone() for n, p in trainer.module.named_parameters()},
        "weights": {k: v.clone() for k, v in trainer.module.state_dict().items()},
        "skipped": result.skipped_steps,
        "metrics": result.metrics,
        "tokens": list(ev.tokens),
        "rank": trainer.dist.rank,
        "world": trainer.dist.world_size,
    }


def _weights(trainer) -> dict:
    return {k: v.clone() for k, v in trainer.module.state_dict().items()}


def run_resume(out: Path) -> dict:
    cfg = tiny_config(data={"batch_size": 2}, train={"max_steps": 6, "seed": SEED, "ckpt_every": 2, "keep_last": 5,
                                                     "ema": True})
    straight = Trainer(cfg, build_tiny(SEED), TinyDataset(12, noise=0.3), None, None, out / "straight")
    straight.fit()
    first = Trainer(cfg, build_tiny(SEED), TinyDataset(12, noise=0.3), None, None, out / "cut")
    first.fit(stop_at=4)  # 12 samples / global batch 4: step 4 is in the second epoch
    torch.manual_seed(1000 + first.dist.rank)  # a new process would start from other RNG states
    resumed = Trainer(cfg, build_tiny(seed=99), TinyDataset(12, noise=0.3), None, None, out / "cut")
    resumed.fit(resume=out / "cut" / "checkpoints" / "step_00000002")
    barrier()
    retired = sorted(p.name for p in (out / "cut" / "checkpoints").glob("retired-*/step_*"))
    return {"straight": _weights(straight), "resumed": _weights(resumed), "ema_straight": dict(straight.ema.shadow),
            "ema_resumed": dict(resumed.ema.shadow), "step": resumed.step, "retired": retired,
            "rank": resumed.dist.rank, "world": resumed.dist.world_size}


def run_accum(out: Path, world: int) -> dict:
    cfg = tiny_config(data={"batch_size": 4 // (2 * world) if world > 1 else 4},
                      train={"max_steps": 2, "seed": SEED, "ckpt_every": 100, "grad_accum": 2 if world > 1 else 1})
    t = Trainer(cfg, build_tiny(SEED, dropout=0.0), TinyDataset(12, noise=0.3), None, None, out / f"accum{world}")
    t.fit()
    return {"grads": {n: p.grad.detach().clone() for n, p in t.module.named_parameters()}, "weights": _weights(t),
            "global_batch": t.global_batch}


if __name__ == "__main__":
    out = Path(sys.argv[1])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    res = run(out, world)
    torch.save(res, out / f"result_rank{res['rank']}.pt")
    res = {**run_resume(out), "accum": run_accum(out, world)}
    torch.save(res, out / f"resume_rank{res['rank']}.pt")
    cleanup()
