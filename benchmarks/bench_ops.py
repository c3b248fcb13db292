"""Benchmark the pure-PyTorch ops against their straightforward references, side by side in one run.

    python benchmarks/bench_ops.py [--ops msda,bev_pool,voxelize,boxes] [--repeats 5] [--threads 2] [--quick]
                                   [--clock wall|cpu] [--shape TEXT] [--no-memory] [--compile] [--mmcv-grid]
                                   [--msda-chunks 16,18,20] [--msda-sweep]

Prints one Markdown table: op, shape, impl, forward ms, forward+backward ms, peak MB, speed-up vs the reference,
max |error| vs a float64 reference, and (MSDA) the gradients' errors. How it measures:
- Times: every implementation of a case is run on the same float32 inputs, interleaved (ref, impl1, impl2, ref, ...)
  ``--repeats`` times after one warm-up; the table shows the minimum and the median wall time (or, with
  ``--clock cpu``, the process's CPU time, which a busy machine disturbs far less at one thread). Forward runs under
  ``torch.no_grad``; forward+backward is one forward with autograd plus ``backward`` of a fixed random cotangent.
- Speed-up: the median over the repeats of reference time / implementation time, each ratio taken within one
  repeat (the two ran seconds apart), so load that comes and goes on a shared machine cancels out of most ratios.
- Peak memory: each (case, impl) runs once more in a fresh subprocess: build the inputs, warm up, reset the peak
  resident set size (``/proc/self/clear_refs``), run forward+backward (forward only for non-differentiable ops),
  report ``VmHWM - RSS before`` (the same quantity as ``getrusage`` ru_maxrss, but measured from the reset).
- Errors: float32 output vs the float64 output of the reference implementation on the same inputs; for the
  discrete ops (voxelize, NMS) 0 means "identical to the reference's output" and inf "different". Gradient errors
  (MSDA): relative L2 error of each input's gradient vs the float64 reference's (see ops_cases._msda_grad_err).
- A reference that is a Python loop (voxelize) is timed once and not memory-profiled.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ops_cases import CASE_BUILDERS, Case  # noqa: E402


@dataclass
class Row:
    op: str
    shape: str
    impl: str
    fwd: list[float] = field(default_factory=list)
    fwdbwd: list[float] = field(default_factory=list)
    peak_mb: float | None = None
    err: float | None = None
    grad_err: str | None = None


def _run(case: Case, state: dict, impl: str, backward: bool) -> torch.Tensor:
    if backward and case.backward:
        for t in state.get("grad_leaves", []):
            t.grad = None
        out = case.impls[impl](state)
        out.backward(state["cotangent"](out))
        return out.detach()
    with torch.no_grad():
        return case.impls[impl](state)


def measure(case: Case, repeats: int, clock=time.perf_counter) -> list[Row]:
    state = case.setup(truth=True)
    rows = {name: Row(case.op, case.shape, name) for name in case.impls}
    outs: dict[str, torch.Tensor] = {}
    for name in case.impls:  # warm-up
        if not (case.slow_reference and name == case.reference):
            _run(case, state, name, backward=True)
    for _ in range(repeats):
        for name in case.impls:
            if case.slow_reference and name == case.reference and rows[name].fwd:
                continue  # a Python loop: once is enough
            t = clock()
            outs[name] = _run(case, state, name, backward=False)
            rows[name].fwd.append((clock() - t) * 1e3)
            if case.backward:
                t = clock()
                _run(case, state, name, backward=True)
                rows[name].fwdbwd.append((clock() - t) * 1e3)
    if case.error is not None:
        for name in case.impls:
            rows[name].err = case.error(state, outs[name], outs[case.reference])
    if case.grad_error is not None:
        for name in case.impls:
            rows[name].grad_err = case.grad_error(state, case.impls[name])
    return list(rows.values())


def _rss_kb(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def measure_peak_kb(fn) -> int:
    """Peak resident memory (KB) that ``fn()`` adds: reset VmHWM to the current RSS, run, ``VmHWM - RSS before``."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _rss_kb("VmRSS")
    fn()
    return _rss_kb("VmHWM") - before


def peak_memory_child(op: str, index: int, impl: str, quick: bool) -> None:
    case = CASE_BUILDERS[op](quick)[index]
    state = case.setup(truth=False)
    _run(case, state, impl, backward=True)
    print(f"PEAK_KB {measure_peak_kb(lambda: _run(case, state, impl, backward=True))}")


def peak_memory(op: str, index: int, impl: str, args: argparse.Namespace) -> float | None:
    cmd = [sys.executable, os.path.abspath(__file__), "--peak", op, str(index), impl, "--threads", str(args.threads)]
    if args.quick:
        cmd.append("--quick")
    # A fixed mmap threshold makes glibc return every large block to the OS when it is freed, so the resident set
    # follows the live tensors instead of keeping freed blocks around (the dynamic threshold would hide peaks).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
    for line in r.stdout.splitlines():
        if line.startswith("PEAK_KB "):
            return int(line.split()[1]) / 1024
    print(f"peak memory of {op}[{index}] {impl} failed:\n{r.stderr[-2000:]}", file=sys.stderr)
    return None


def _fmt_ms(v: list[float]) -> str:
    if not v:
        return "-"
    return f"{min(v):.1f} / {statistics.median(v):.1f}" if len(v) > 1 else f"{v[0]:.1f}"


def paired_speedup(ref: list[float], impl: list[float]) -> float:
    """Median of reference / implementation over the repeats, pairing the runs of one repeat (a reference timed once,
    a Python loop, is paired with every repeat)."""
    ref = ref * len(impl) if len(ref) == 1 else ref
    return statistics.median(a / b for a, b in zip(ref, impl))


def table(rows: list[Row], references: dict[tuple[str, str], str], clock: str) -> str:
    out = [f"| op | shape | impl | fwd ms {clock} (min / med) | fwd+bwd ms {clock} (min / med) | peak MB "
           "| speed-up fwd, fwd+bwd (median of paired ratios) | max abs err vs f64 "
           "| grad rel. L2 err vs f64 (value / loc / weights) |", "|---|---|---|---|---|---|---|---|---|"]
    by_key = {(r.op, r.shape, r.impl): r for r in rows}
    for r in rows:
        ref = by_key.get((r.op, r.shape, references.get((r.op, r.shape), "")))
        speed = "-"
        if ref is not None and ref is not r and r.fwd:
            parts = [f"{paired_speedup(ref.fwd, r.fwd):.2f}x"]
            if r.fwdbwd and ref.fwdbwd:
                parts.append(f"{paired_speedup(ref.fwdbwd, r.fwdbwd):.2f}x")
            speed = ", ".join(parts)
        elif ref is r:
            speed = "(reference)"
        peak = f"{r.peak_mb:.0f}" if r.peak_mb is not None else "-"
        err = f"{r.err:.1e}" if r.err is not None and not math.isnan(r.err) else "-"
        out.append(f"| {r.op} | {r.shape} | {r.impl} | {_fmt_ms(r.fwd)} | {_fmt_ms(r.fwdbwd)} | {peak} | {speed} "
                   f"| {err} | {r.grad_err or '-'} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", default=",".join(CASE_BUILDERS), help=f"comma-separated subset of {list(CASE_BUILDERS)}")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--quick", action="store_true", help="tiny shapes: a smoke test of the harness, not a benchmark")
    p.add_argument("--no-memory", action="store_true", help="skip the per-case peak-memory subprocesses")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall time, or the process's CPU time (all threads; robust to a busy machine with --threads 1)")
    p.add_argument("--shape", default="", help="only the cases whose shape description contains this text")
    p.add_argument("--compile", action="store_true", help="add torch.compile'd MSDA variants (slow to compile)")
    p.add_argument("--mmcv-grid", action="store_true",
                   help="add the MSDA reference with mmcv's strided per-level grid (slower at batch 1 only)")
    p.add_argument("--msda-chunks", default="", metavar="LOG2,...",
                   help="add the MSDA gather implementation with chunks of 2^LOG2 elements (chunk-size ablation)")
    p.add_argument("--msda-sweep", action="store_true",
                   help="MSDA: the points-per-value-position sweep behind impl='auto' instead of the config shapes")
    p.add_argument("--peak", nargs=3, metavar=("OP", "INDEX", "IMPL"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.compile:
        os.environ["BEVBRIDGE_BENCH_COMPILE"] = "1"
    if args.mmcv_grid:
        os.environ["BEVBRIDGE_BENCH_MMCV_GRID"] = "1"
    if args.msda_chunks:
        os.environ["BEVBRIDGE_BENCH_CHUNKS"] = args.msda_chunks
    if args.msda_sweep:
        os.environ["BEVBRIDGE_BENCH_MSDA_SWEEP"] = "1"
    if args.peak:
        peak_memory_child(args.peak[0], int(args.peak[1]), args.peak[2], args.quick)
        return 0
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    unknown = [o for o in ops if o not in CASE_BUILDERS]
    if unknown:
        p.error(f"unknown op(s) {unknown}; choose from {list(CASE_BUILDERS)}")
    print(f"# bench_ops: torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at start", flush=True)
    rows: list[Row] = []
    references: dict[tuple[str, str], str] = {}
    for op in ops:
        for index, case in enumerate(CASE_BUILDERS[op](args.quick)):
            if args.shape not in case.shape:
                continue
            print(f"# {op}: {case.shape}", file=sys.stderr, flush=True)
            case_rows = measure(case, args.repeats, time.perf_counter if args.clock == "wall" else time.process_time)
            references[(case.op, case.shape)] = case.reference
            if not args.no_memory:
                for row in case_rows:
                    if not (case.slow_reference and row.impl == case.reference):
                        row.peak_mb = peak_memory(op, index, row.impl, args)
            rows += case_rows
    print(table(rows, references, args.clock))
    print(f"# load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
