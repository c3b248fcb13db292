"""Where one training step of a CTAB config spends its time, and side-by-side step times of config variants.

Profile (default): one thread, process CPU time (robust on a busy machine), batch 2 of real synthetic-world samples;
forward and backward of every top-level module through module hooks, the loss and the AdamW step; median of
``--steps`` steps after one warm-up. A backward row is missing where autograd gives a module no input gradient to
report (the image backbone's input is the images): the "backward, unattributed" row holds those.

    python benchmarks/bench_ctab_step.py [--config configs/ctab/mtl_ctab_synth.yaml] [--steps 3] [key=value ...]

Compare: every variant (a name and its overrides) is built once, then their training steps run interleaved, round
after round, in one process and at ``--threads`` threads (wall clock); medians and the ratio to the first variant.

    python benchmarks/bench_ctab_step.py --compare '{"base": [], "narrow": ["model.camf.dim=64"]}' --rounds 4
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("BEVBRIDGE_NO_PROGRESS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bevbridge.config import load_config  # noqa: E402
from bevbridge.data.batch import collate  # noqa: E402
from bevbridge.engine import build  # noqa: E402
from bevbridge.engine.amp import Precision  # noqa: E402
from bevbridge.engine.train_step import TrainStep  # noqa: E402


def _setup(config: str, overrides: list[str], batch=None):
    cfg = load_config(config, overrides)
    model = build.build_model(cfg).train()
    if batch is None:
        train_set, _ = build.build_datasets(cfg.data, model.data_needs(), seed=0)
        batch = collate([train_set[0], train_set[1]])
    return model, torch.optim.AdamW(model.parameters(), lr=1e-6), batch


def profile(config: str, overrides: list[str], steps: int) -> None:
    torch.set_num_threads(1)
    model, opt, batch = _setup(config, overrides)
    clock = time.process_time
    acc: dict[str, float] = collections.defaultdict(float)
    starts: dict[tuple[str, str], float] = {}

    def add(key: str, start: tuple[str, str]) -> None:
        acc[key] += clock() - starts[start]

    for name, m in model.named_children():
        m.register_forward_pre_hook(lambda mod, i, n=name: starts.__setitem__(("f", n), clock()))
        m.register_forward_hook(lambda mod, i, o, n=name: add(f"forward  {n}", ("f", n)))
        if name in ("image_backbone",):
            continue  # no input gradient: its backward cannot be timed by hooks (goes to "unattributed")
        m.register_full_backward_pre_hook(lambda mod, g, n=name: starts.__setitem__(("b", n), clock()))
        m.register_full_backward_hook(lambda mod, gi, go, n=name: add(f"backward {n}", ("b", n)))
    rows: dict[str, list[float]] = collections.defaultdict(list)
    import warnings

    warnings.filterwarnings("ignore", message=".*backward hook.*")
    for i in range(steps + 1):
        acc.clear()
        t0 = clock()
        opt.zero_grad()
        out = model(batch)
        t1 = clock()
        losses = model.loss(out, batch)
        t2 = clock()
        losses["loss"].backward()
        t3 = clock()
        opt.step()
        t4 = clock()
        if i == 0:
            continue
        for k, v in acc.items():
            rows[k].append(v)
        attributed = sum(v for k, v in acc.items() if k.startswith("backward"))
        rows["backward, unattributed"].append(t3 - t2 - attributed)
        for k, v in (("loss (targets + terms)", t2 - t1), ("optimizer step", t4 - t3), ("TOTAL forward", t1 - t0),
                     ("TOTAL backward", t3 - t2), ("TOTAL step", t4 - t0)):
            rows[k].append(v)
    med = {k: statistics.median(v) for k, v in rows.items() if statistics.median(v) > 1e-4}
    total = med["TOTAL step"]
    print(f"{config} {' '.join(overrides)}: one training step, batch 2, 1 thread, CPU time (median of {steps})\n")
    print("| part | ms | share |\n|---|---:|---:|")
    for k in sorted(med, key=lambda k: (k.startswith("TOTAL"), -med[k])):
        print(f"| {k} | {med[k] * 1e3:.0f} | {100 * med[k] / total:.0f}% |")


def compare(config: str, variants: dict[str, list[str]], rounds: int, threads: int) -> None:
    torch.set_num_threads(threads)
    steps, batch = {}, None
    for name, overrides in variants.items():
        model, opt, batch = _setup(config, overrides, batch)
        steps[name] = (TrainStep(model, Precision("none", torch.device("cpu"))), opt)

    def one(name: str) -> float:
        step, opt = steps[name]
        t = time.perf_counter()
        opt.zero_grad()
        step(batch)["loss"].backward()
        opt.step()
        return time.perf_counter() - t

    for name in steps:
        one(name)  # warm-up
    res: dict[str, list[float]] = {n: [] for n in steps}
    for _ in range(rounds):
        for name in steps:
            res[name].append(one(name))
    first = statistics.median(next(iter(res.values())))
    print(f"| variant | overrides | step s (median of {rounds}, wall, {threads} threads) | speed-up |")
    print("|---|---|---:|---:|")
    for name, v in res.items():
        print(f"| {name} | {' '.join(variants[name]) or '-'} | {statistics.median(v):.2f} "
              f"({', '.join(f'{x:.2f}' for x in v)}) | {first / statistics.median(v):.2f}x |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*")
    p.add_argument("--config", default="configs/ctab/mtl_ctab_synth.yaml")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--compare", default=None, help='JSON {"name": [overrides], ...}; the first is the reference')
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if args.compare:
        compare(args.config, json.loads(args.compare), args.rounds, args.threads)
    else:
        profile(args.config, args.overrides, args.steps)


if __name__ == "__main__":
    main()
