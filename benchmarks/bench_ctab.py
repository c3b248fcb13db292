"""CTAB at paper scale on this CPU: one forward pass (and optionally forward + backward) at 6 x 256 x 704.

Builds configs/ctab/<config>.yaml with random weights (ResNet-50, 118 depth bins, 128 x 128 BEV, 8 past frames,
8 radar sweeps), feeds it one sample of the synthetic world resized to 256 x 704 (generated into
``--dataroot`` if missing), and prints a table: wall time per pass (median of ``--repeats``) and peak resident memory
of the process (``ru_maxrss``; each case runs in a fresh subprocess, so peaks do not mix).

    python benchmarks/bench_ctab.py                        # mtl_ctab, forward only
    python benchmarks/bench_ctab.py --train --past 8       # also forward + backward
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



def _case(args: argparse.Namespace) -> dict:
    import torch

    from bevbridge.config import load_config
    from bevbridge.data.batch import collate
    from bevbridge.engine import build

    torch.set_num_threads(args.threads)
    overrides = [*small_world_overrides(args.dataroot), f"model.depth.num_past_frames={args.past}"]
    cfg = load_config(REPO / "configs" / "ctab" / f"{args.config}.yaml", overrides)
    model = build.build_model(cfg)
    _, val = build.build_datasets(cfg.data, model.data_needs(), train=False)
    batch = collate([val[len(val) - 1]])
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    if args.mode == "forward":
        model.eval()
        with torch.no_grad():
            for _ in range(args.repeats):
                t = time.perf_counter()
                model(batch)
                times.append(time.perf_counter() - t)
    else:
        model.train()
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = model(batch)
            losses = model.loss(out, batch)
            losses["loss"].backward()
            model.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"config": args.config, "mode": args.mode, "past": args.past, "threads": args.threads,
            "seconds": statistics.median(times), "all": [round(x, 2) for x in times], "peak_mb": round(peak),
            "model_loaded_mb": round(base_rss), "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "images": tuple(batch.images.shape)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="mtl_ctab")
    p.add_argument("--past", type=int, default=8, help="past frames (the paper: 8)")
    p.add_argument("--train", action="store_true", help="also time forward + backward")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dataroot", default=str(REPO / ".cache" / "bench_synth"))
    p.add_argument("--mode", choices=["forward", "train"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:  # one case, in this (fresh) process
        print(json.dumps(_case(args)))
        return
    rows = []
    for mode in ["forward"] + (["train"] if args.train else []):
        rows.append(run_case(__file__, ["--mode", mode, "--config", args.config, "--past", str(args.past),
                                        "--repeats", str(args.repeats), "--threads", str(args.threads),
                                        "--dataroot", args.dataroot], mode))
    load = os.getloadavg()[0]
    print(f"CTAB paper scale on this machine (load average {load:.1f}; {rows[0]['threads']} threads; "
          f"images {rows[0]['images']}; {rows[0]['params_m']}M parameters)")
    print(f"{'config':12s} {'pass':18s} {'past frames':>11s} {'seconds':>8s} {'runs':>14s} {'peak RSS MB':>12s} "
          f"{'after build MB':>15s}")
    for r in rows:
        what = "forward (no grad)" if r["mode"] == "forward" else "forward+backward"
        print(f"{r['config']:12s} {what:18s} {r['past']:11d} {r['seconds']:8.1f} {str(r['all']):>14s} "
              f"{r['peak_mb']:12d} {r['model_loaded_mb']:15d}")


if __name__ == "__main__":
    main()
