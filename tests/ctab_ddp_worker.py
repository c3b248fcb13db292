"""Run by tests/test_ctab_ddp.py: 1 step of configs/ctab/mtl_ctab_synth.yaml on a global batch of 2, either in
one process (1 sample per micro-batch x 2 accumulation steps) or under torchrun (2 processes x 1 sample, gloo).

    python tests/ctab_ddp_worker.py OUT DATAROOT TRAIN_SPLIT FIND_UNUSED(0|1) [SYNC_POSITIVES(true|false)]

Why one process accumulates instead of running both samples in one forward: every quantity CTAB normalises per
forward pass (BatchNorm statistics, the heatmap's number of positives, the depth loss's foreground count, dice
over the batch) is per device under DDP by definition, so the exact single-process equivalent of N ranks is N
micro-batches of one rank's size; for that the heatmap's positives are counted per process here
(``model.head.sync_num_positives=false``; its default averages them over the ranks, as mmdet3d >= 1.x, which no
single-process run reproduces exactly: the test checks that mode's ranks agree). Dropout is set to 0: model-side randomness is seeded with train.seed + rank, so
rank 1 and the second micro-batch draw different masks by design.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from bevbridge.config import load_config
from bevbridge.engine import Trainer, build
from bevbridge.engine.distributed import cleanup

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ctab" / "mtl_ctab_synth.yaml"


def run(out: Path, dataroot: str, split: str, world: int, find_unused: bool, sync: str = "false") -> dict:
    overrides = [f"data.dataroot={dataroot}", f"data.train_split={split}", f"data.val_split={split}",
                 "data.num_workers=0", f"data.batch_size=1", f"train.grad_accum={2 // world}", "train.max_steps=1",
                 "train.ckpt_every=100", f"train.find_unused_parameters={str(find_unused).lower()}",
                 "train.device=cpu", "eval.evaluators=[]", "eval.best_metric=null", "schedule.warmup_steps=0",
                 "optim.grad_clip=null", "data.radar_sweeps=2", f"model.head.sync_num_positives={sync}"]
    cfg = load_config(CONFIG, overrides)
    model = build.build_model(cfg)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    needs = model.data_needs()
    train_set, _ = build.build_datasets(cfg.data, needs, seed=cfg.train.seed)
    trainer = Trainer(cfg, model, train_set, None, {}, out / "run")
    trainer.fit()
    return {
        "grads": {n: p.grad.detach().clone() for n, p in trainer.module.named_parameters() if p.grad is not None},
        "weights": {k: v.clone() for k, v in trainer.module.state_dict().items()},
        "rank": trainer.dist.rank,
        "world": trainer.dist.world_size,
    }


if __name__ == "__main__":
    out = Path(sys.argv[1])
    res = run(out, sys.argv[2], sys.argv[3], int(os.environ.get("WORLD_SIZE", "1")), sys.argv[4] == "1",
              sys.argv[5] if len(sys.argv) > 5 else "false")
    torch.save(res, out / f"result_rank{res['rank']}.pt")
    cleanup()
