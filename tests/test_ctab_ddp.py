"""CTAB under torchrun: 2 gloo processes give the same gradients as one process, with and without
``train.find_unused_parameters`` (the loss-side HUW log-sigmas included)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _torchrun(out: Path, world: int, synth_world, find_unused: bool, sync: bool = False) -> list[dict]:
    out.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "BEVBRIDGE_NO_PROGRESS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    args = [str(out), str(synth_world.dataroot), synth_world.train_split, "1" if find_unused else "0",
            "true" if sync else "false"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world)]
    cmd = (launcher if world > 1 else [sys.executable]) + [str(REPO / "tests" / "ctab_ddp_worker.py"), *args]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return [torch.load(out / f"result_rank{i}.pt", weights_only=True) for i in range(world)]


@pytest.mark.slow
def test_two_processes_match_one_process_with_and_without_find_unused(tmp_path, synth_world):
    """Would catch: a loss-side parameter (HUW's log-sigma) outside DDP's forward, so not reduced (rank-local
    gradients, ranks drifting apart) or, with find_unused_parameters=True, the "marked as ready twice" crash; and a
    wrong gradient average (sum instead of mean over ranks)."""
    (single,) = _torchrun(tmp_path / "single", 1, synth_world, find_unused=False)
    assert "huw.log_sigma.seg" in single["grads"] and "ctab.gate_det" in single["grads"]
    assert single["grads"]["huw.log_sigma.seg"].abs().item() > 0
    for find_unused in (False, True):
        ranks = _torchrun(tmp_path / f"ddp_{int(find_unused)}", 2, synth_world, find_unused)
        assert [r["world"] for r in ranks] == [2, 2]
        assert set(ranks[0]["grads"]) == set(single["grads"])
        for name, g in single["grads"].items():
            assert torch.equal(ranks[0]["grads"][name], ranks[1]["grads"][name]), name  # reduced: same on every rank
            torch.testing.assert_close(ranks[0]["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)
        for name in single["grads"]:  # parameters; BatchNorm running statistics are per device by design
            torch.testing.assert_close(ranks[0]["weights"][name], single["weights"][name], rtol=1e-4, atol=1e-6,
                                       msg=name)

    # the default: the heatmap's positives averaged over the ranks (mmdet3d >= 1.x); no single-process run computes
    # exactly that, but the ranks must agree, and the result must differ from per-process counting only through that
    # normaliser (same set of parameters with gradients, finite, close in size)
    ranks = _torchrun(tmp_path / "ddp_sync", 2, synth_world, find_unused=False, sync=True)
    for name, g in ranks[0]["grads"].items():
        assert torch.equal(g, ranks[1]["grads"][name]) and torch.isfinite(g).all(), name
    assert set(ranks[0]["grads"]) == set(single["grads"])
