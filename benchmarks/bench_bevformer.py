"""BEVFormer on this CPU: a paper-scale forward pass and the training step of the synthetic-world configs.

Each case runs in a fresh subprocess (peaks do not mix) with random weights on one sample of a small synthetic world
(generated into ``--dataroot`` if missing) resized to the config's input size, and reports the wall time per pass
(median of ``--repeats`` after one warm-up pass for training steps), the process's CPU time per pass (all threads;
on a machine shared with other jobs wall time grows with the load, CPU time much less), and the peak resident memory
of the process (``ru_maxrss``).

    python benchmarks/bench_bevformer.py                                   # v2 R101 (Table 2) forward + synth steps
    python benchmarks/bench_bevformer.py --configs bevformer_v2_r50 --forward-only
    python benchmarks/bench_bevformer.py --configs bevformer_tiny_synth --train-only --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_case import REPO, run_case, small_world_overrides  # noqa: E402

PAPER = ["bevformer_v2_r101_pers_bev"]
SYNTH = ["bevformer_tiny_synth", "bevformer_v2_bev_only_synth", "bevformer_v2_bev_bev_synth",
         "bevformer_v2_pers_bev_synth", "bevformer_v2_two_stage_synth"]


def _case(args: argparse.Namespace) -> dict:
    import torch

    from bevbridge.config import load_config
    from bevbridge.data.batch import collate
    from bevbridge.data.nuscenes import NuScenesDataset
    from bevbridge.engine import build

    torch.set_num_threads(args.threads)
    overrides = [*small_world_overrides(args.dataroot), *args.override]
    cfg = load_config(REPO / "configs" / "bevformer" / f"{args.config}.yaml", overrides)
    torch.manual_seed(0)
    model = build.build_model(cfg)
    needs = model.data_needs()
    opts = build.dataset_options(cfg.data, needs, train=args.mode == "train")
    ds = NuScenesDataset(cfg.data.dataroot, cfg.data.version, cfg.data.train_split if args.mode == "train" else cfg.data.val_split,
                         **opts)
    n = cfg.data.batch_size if args.mode == "train" else 1
    batch = collate([ds[(len(ds) - 1 - i) % len(ds)] for i in range(n)])
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times, cpu = [], []
    if args.mode == "forward":
        model.eval()
        with torch.no_grad():
            for _ in range(args.repeats):
                t, c = time.perf_counter(), time.process_time()
                model(batch)
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
    else:
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        for i in range(args.repeats + 1):
            t, c = time.perf_counter(), time.process_time()
            losses = model.loss(model(batch), batch)
            losses["loss"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i:  # the first step allocates the optimizer state
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"config": args.config, "mode": args.mode, "threads": args.threads, "seconds": statistics.median(times),
            "cpu_seconds": statistics.median(cpu),
            "all": [round(x, 2) for x in times], "peak_mb": round(peak), "model_loaded_mb": round(base_rss),
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "images": list(batch.images.shape), "past": 0 if batch.past is None else batch.past.images.shape[1]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="*", help=f"configs/bevformer names (default: {PAPER} forward, then {SYNTH} "
                                                f"training steps)")
    p.add_argument("--forward-only", action="store_true")
    p.add_argument("--train-only", action="store_true")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dataroot", default=str(REPO / ".cache" / "bench_synth"))
    p.add_argument("--override", nargs="*", default=[], help="config overrides (key=value) for every case")
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=["forward", "train"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:  # one case, in this (fresh) process
        print(json.dumps(_case(args)))
        return
    cases = []
    names = args.configs or PAPER + SYNTH
    for name in names:
        mode = "train" if name.endswith("_synth") else "forward"
        if (args.forward_only and mode == "train") or (args.train_only and mode == "forward"):
            continue
        cases.append((name, mode))
    rows = []
    for name, mode in cases:
        rows.append(run_case(__file__, ["--mode", mode, "--config", name, "--repeats", str(args.repeats),
                                        "--threads", str(args.threads), "--dataroot", args.dataroot,
                                        "--override", *args.override], f"{name} {mode}"))
    print(f"BEVFormer on this machine (load average {os.getloadavg()[0]:.1f} at the end; {args.threads} threads)")
    print("| config | pass | images (B, N, 3, H, W) | past frames | params | wall s (median) | runs | CPU s "
          "(median) | peak RSS MB | after build MB |")
    print("|---|---|---|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        what = "forward (no grad), batch 1" if r["mode"] == "forward" else "training step (fwd+bwd+AdamW)"
        print(f"| {r['config']} | {what} | {tuple(r['images'])} | {r['past']} | {r['params_m']}M | "
              f"{r['seconds']:.1f} | {r['all']} | {r['cpu_seconds']:.1f} | {r['peak_mb']} | {r['model_loaded_mb']} |")


if __name__ == "__main__":
    main()
