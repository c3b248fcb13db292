"""``bevbridge bench``: find ``benchmarks/bench_*.py``, run each in its own process, fail if any fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["default_benchmark_dir", "find_benchmarks", "run_benchmarks"]


def default_benchmark_dir() -> Path:
    """``benchmarks/`` of this checkout (the package's parent directory), else of the working directory."""
    here = Path(__file__).resolve().parents[1] / "benchmarks"
    return here if here.is_dir() else Path.cwd() / "benchmarks"


def find_benchmarks(directory: Path) -> list[Path]:
    return sorted(directory.glob("bench_*.py"))


def _matches(path: Path, name: str) -> bool:
    stem = path.stem
    return name in (stem, path.name, stem.removeprefix("bench_"))


def run_benchmarks(directory: Path, only: Sequence[str] = (), extra_args: Sequence[str] = (),
                   list_only: bool = False) -> int:
    """Run the benchmarks (all, or those named in ``only``: ``ops``, ``bench_ops`` or ``bench_ops.py``) with
    ``extra_args``; their output streams through. Returns 0 if every one exited 0, 1 otherwise, 2 if a name in
    ``only`` matches nothing or there are no benchmarks."""
    scripts = find_benchmarks(directory)
    if not scripts:
        print(f"bevbridge bench: no benchmarks/bench_*.py in {directory}", file=sys.stderr)
        return 2
    if list_only:
        print("\n".join(p.stem.removeprefix("bench_") for p in scripts))
        return 0
    if only:
        missing = [n for n in only if not any(_matches(p, n) for p in scripts)]
        if missing:
            names = ", ".join(p.stem.removeprefix("bench_") for p in scripts)
            print(f"bevbridge bench: no benchmark named {', '.join(missing)} (available: {names})", file=sys.stderr)
            return 2
        scripts = [p for p in scripts if any(_matches(p, n) for n in only)]
    failed = []
    for script in scripts:
        print(f"== {script.name} {' '.join(extra_args)}".rstrip(), flush=True)
        code = subprocess.run([sys.executable, str(script), *extra_args], cwd=directory.parent).returncode
        if code != 0:
            failed.append(f"{script.name} (exit {code})")
    if failed:
        print(f"bevbridge bench: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
