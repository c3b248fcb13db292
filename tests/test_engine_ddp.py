"""torchrun with 2 CPU processes (gloo) == 1 process on the same global batch; evaluation counts each sample once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.engine_ddp_worker import run

REPO = Path(__file__).resolve().parents[1]


def test_two_processes_match_one_process(tmp_path):
    single = run(tmp_path / "single", world=1)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "BEVBRIDGE_NO_PROGRESS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "engine_ddp_worker.py"), str(tmp_path)]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"result_rank{i}.pt", weights_only=True) for i in (0, 1)]
    assert [x["world"] for x in ranks] == [2, 2]
    # the NaN sample sat on rank 1 only: both ranks skipped the same step, nobody hung
    assert single["skipped"] == ranks[0]["skipped"] == ranks[1]["skipped"] == 1
    for name, g in single["grads"].items():
        torch.testing.assert_close(ranks[0]["grads"][name], g, rtol=1e-5, atol=1e-6)
        assert torch.equal(ranks[0]["grads"][name], ranks[1]["grads"][name])  # DDP: identical on every rank
    for name, w in single["weights"].items():
        torch.testing.assert_close(ranks[0]["weights"][name], w, rtol=1e-5, atol=1e-6)
    # 5 validation samples padded to 6 by the sampler: each scored once, the same metrics as one process
    assert sorted(ranks[0]["tokens"]) == sorted(single["tokens"]) == [f"tok{i:04d}" for i in range(100, 105)]
    assert ranks[1]["tokens"] == []  # evaluators run on rank 0 only
    assert ranks[0]["metrics"]["tiny/count"] == 5.0 == ranks[1]["metrics"]["tiny/count"]
    torch.testing.assert_close(ranks[0]["metrics"]["tiny/mse"], single["metrics"]["tiny/mse"], rtol=1e-4, atol=1e-6)
