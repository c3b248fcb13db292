"""`bevbridge bench` runs every benchmarks/bench_*.py and fails if one fails; bench_ops.py runs end to end (quick)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from test_cli import REPO, bevbridge


def _write(d: Path, name: str, body: str) -> None:
    (d / name).write_text(f"import sys\n{body}\n")


def test_bench_runs_each_script_and_reports_failures(tmp_path):
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    _write(bench, "bench_good.py", "print('good ran', sys.argv[1:])")
    _write(bench, "bench_bad.py", "print('bad ran'); sys.exit(4)")
    _write(bench, "helper.py", "raise SystemExit('not a benchmark, never run')")
    r = bevbridge("bench", "--dir", str(bench))
    assert r.returncode == 1, r.stderr
    assert "good ran" in r.stdout and "bad ran" in r.stdout and "bench_bad.py (exit 4)" in r.stderr
    r = bevbridge("bench", "--dir", str(bench), "--only", "good", "--", "--quick")
    assert r.returncode == 0 and "good ran ['--quick']" in r.stdout and "bad ran" not in r.stdout
    r = bevbridge("bench", "--dir", str(bench), "--list")
    assert r.returncode == 0 and r.stdout.split() == ["bad", "good"]
    r = bevbridge("bench", "--dir", str(bench), "--only", "nope")
    assert r.returncode == 2 and "no benchmark named nope" in r.stderr


def test_bench_ops_quick_prints_a_full_table():
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_ops.py"), "--quick", "--no-memory", "--repeats", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    ops = {row.split("|")[1].strip() for row in rows}
    assert {"msda", "bev_pool", "voxelize", "box_iou_bev", "nms_rotated", "centerpoint"} <= ops
    for row in rows:  # every implementation agrees with its reference
        err = row.split("|")[8].strip()
        assert err == "-" or float(err) < 1e-4, row


def test_bench_ops_peak_memory_child():
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_ops.py"), "--peak", "msda", "0", "reference", "--quick"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.split("PEAK_KB ")[1].split()[0]) >= 0  # the child runs and reports (a smoke test)


def test_peak_memory_measures_a_known_allocation():
    """The harness behind the "peak MB" column sees a 64 MB tensor that lives only inside the measured call, and
    does not count memory allocated before it. Catches a VmHWM that is not reset (the peak of earlier work would be
    reported), RSS read in the wrong unit, and a measurement that misses freed intermediates."""
    code = (
        "import sys, torch; sys.path.insert(0, 'benchmarks'); from bench_ops import measure_peak_kb\n"
        "big = torch.ones(48 * 2**18)  # 48 MB allocated before: must not count\n"
        "def f():\n"
        "    t = torch.ones(64 * 2**18); t += 1; del t  # 64 MB, freed before the call returns\n"
        "print('IN', measure_peak_kb(f), 'NONE', measure_peak_kb(lambda: None))\n")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    words = r.stdout.split()
    inside, nothing = int(words[words.index("IN") + 1]), int(words[words.index("NONE") + 1])
    assert 63 * 1024 <= inside <= 80 * 1024, inside
    assert nothing < 4 * 1024, nothing
