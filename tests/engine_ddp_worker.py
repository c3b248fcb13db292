"""Run by tests/test_engine_ddp.py: in the test process (1 process) and under torchrun (2 processes, gloo).

Trains the tiny model 3 steps on a global batch of 4 with one NaN sample in the second global batch (on rank 1 only
when there are 2 processes), then evaluates on 5 samples (the DistributedSampler pads them to 6 with 2 processes).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch.utils.data import DistributedSampler

from bevbridge.engine import Trainer
from bevbridge.engine.distributed import cleanup
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


if __name__ == "__main__":
    out = Path(sys.argv[1])
    res = run(out, int(os.environ.get("WORLD_SIZE", "1")))
    torch.save(res, out / f"result_rank{res['rank']}.pt")
    cleanup()
