"""What bench_ctab.py and bench_bevformer.py share: the small synthetic world their cases read a batch from, and
running one case in a fresh process (so that each case's peak RSS is its own) and reading back its JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def small_world_overrides(dataroot: str | os.PathLike) -> list[str]:
    """Generate the small world (3 scenes x 12 keyframes) at ``dataroot`` unless it is there; the config overrides
    that read it (single-process loading)."""
    from bevbridge.data import synth

    root = Path(dataroot)
    if not synth.is_complete(root, scenes=3, samples_per_scene=12):
        synth.generate(root, scenes=3, samples_per_scene=12)
    return [f"data.dataroot={root}", "data.version=v1.0-mini", "data.train_split=synth_train",
            "data.val_split=synth_val", "data.num_workers=0"]


def run_case(script: str, args: list[str], what: str) -> dict:
    """Run ``script`` with ``args`` in a fresh process; its last stdout line is the case's JSON result."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO), "BEVBRIDGE_NO_PROGRESS": "1"})
    if out.returncode != 0:
        sys.exit(f"case {what} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
