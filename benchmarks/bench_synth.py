"""Synthetic world generation speed: per-sensor cost of one capture, and the default world end to end.

    .venv/bin/python benchmarks/bench_synth.py [--full]

Prints one table. Per-sensor rows time SceneRecorder's capture methods on one default scene (all 6 cameras, one LiDAR
sweep, all 5 radars; ms per capture, median over the scene's keyframes). ``--full`` also generates the default world
(10 scenes x 20 samples) with 1 and 2 worker processes. Timings are absolute: state the machine load with them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from bevbridge.data import synth
from bevbridge.data.synth.writer import _plan


def per_sensor() -> list[tuple[str, float]]:
    torch.set_num_threads(1)
    spec = _plan(synth.generation_params())[0][0]
    rec = synth.SceneRecorder(spec)
    rows: dict[str, list[float]] = {"6 cameras (render)": [], "LiDAR sweep (32 x 1024 rays)": [],
                                    "5 radars (one sweep)": []}
    for k in range(spec.n_samples):
        frame = rec.frame(k * 0.5)
        for name, fn in zip(rows, (rec.cameras, rec.lidar_scan, rec.radar_scans)):
            t = time.perf_counter()
            fn(frame)
            rows[name].append(time.perf_counter() - t)
    return [(name, 1e3 * statistics.median(v)) for name, v in rows.items()]


def full(workers: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        synth.generate(os.path.join(d, "w"), workers=workers)
        return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--full", action="store_true", help="also generate the default world with 1 and 2 workers")
    args = ap.parse_args()
    os.environ.setdefault("BEVBRIDGE_NO_PROGRESS", "1")
    print(f"load average before: {os.getloadavg()[0]:.2f} (2-core machine: >2 means shared CPUs)")
    print(f"{'what':<44} {'time':>10}")
    for name, ms in per_sensor():
        print(f"{name:<44} {ms:>7.1f} ms")
    if args.full:
        for w in (1, 2):
            print(f"{f'default world, 200 samples, workers={w}':<44} {full(w):>8.1f} s")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
