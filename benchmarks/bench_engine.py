"""Per-step overhead of the engine's Trainer against a bare PyTorch loop, on the engine tests' tiny model.

Same data (400 samples, batch 8, num_workers 0, CPU, 1 thread), same optimizer; the Trainer adds the schedule,
clipping, the finiteness check, per-sample seeded loading and logging (checkpoint writing is excluded). The tiny
model takes about 1 ms a step, so this shows the engine's fixed cost per step, not a ratio that holds for real models.

    .venv/bin/python benchmarks/bench_engine.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("BEVBRIDGE_NO_PROGRESS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from bevbridge.data.batch import collate  # noqa: E402
from bevbridge.engine import Trainer  # noqa: E402
from tests.engine_tiny import TinyDataset, build_tiny, tiny_config  # noqa: E402

STEPS = 400


def bare(ds) -> float:
    m = build_tiny()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    dl = DataLoader(ds, batch_size=8, shuffle=True, collate_fn=collate, drop_last=True)
    t0, n = time.perf_counter(), 0
    while n < STEPS:
        for b in dl:
            losses = m.loss(m(b), b)
            opt.zero_grad()
            (losses["loss_reg"] + losses["loss_gate"]).backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 10.0)
            opt.step()
            n += 1
            if n == STEPS:
                break
    return (time.perf_counter() - t0) / STEPS


def engine(ds, ema: bool) -> float:
    cfg = tiny_config(data={"batch_size": 8},
                      train={"max_steps": STEPS, "ckpt_every": 10**6, "log_every": 50, "ema": ema})
    t = Trainer(cfg, build_tiny(), ds, None, None, tempfile.mkdtemp())
    t.ckpts.save = lambda *a, **k: None  # time the loop, not the final checkpoint write
    t0 = time.perf_counter()
    t.fit()
    return (time.perf_counter() - t0) / STEPS


def main() -> None:
    import logging

    logging.disable(logging.INFO)
    torch.set_num_threads(1)
    ds = TinyDataset(400)
    print(f"load: {os.getloadavg()[0]:.2f} (1-min average)")
    print(f"{'run':>4} {'bare ms/step':>13} {'Trainer ms/step':>16} {'ratio':>6} {'Trainer+EMA':>12} {'ratio':>6}")
    for rep in range(3):
        b, e, ee = bare(ds), engine(ds, False), engine(ds, True)
        print(f"{rep:>4} {1e3 * b:>13.2f} {1e3 * e:>16.2f} {e / b:>6.2f} {1e3 * ee:>12.2f} {ee / b:>6.2f}")


if __name__ == "__main__":
    main()
