"""`bevbridge bench` runs every benchmarks/bench_*.py and fails if one fails; bench_ops.py runs end to end (quick)."""

from __future__ import annotations

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
    assert int(r.stdout.split("PEAK_KB ")[1].split()[0]) >= 0
