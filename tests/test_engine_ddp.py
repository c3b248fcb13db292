"""torchrun with 2 CPU processes (gloo) == 1 process on the same global batch; evaluation counts each sample once;
save + resume from an older checkpoint is bit-identical to an uninterrupted 2-process run; grad_accum=2 on two
processes matches one process. One torchrun launch (tests/engine_ddp_worker.py) serves every test here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.engine_ddp_worker import run, run_accum

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "BEVBRIDGE_NO_PROGRESS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "engine_ddp_worker.py"), str(out)]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    return out


def test_two_processes_match_one_process(two_processes, tmp_path):
    single = run(tmp_path / "single", world=1)
    ranks = [torch.load(two_processes / f"result_rank{i}.pt", weights_only=True) for i in (0, 1)]
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


def test_two_processes_resume_bit_identically(two_processes):
    """Would catch: one rank's RNG state restored on the other (its dropout masks differ from the straight run), the
    data position or DistributedSampler epoch lost on resume, ranks choosing different checkpoints (a hang or
    mixed weights), rank 1 reading a checkpoint rank 0 already moved aside, the EMA counter not restored."""
    ranks = [torch.load(two_processes / f"resume_rank{i}.pt", weights_only=True) for i in (0, 1)]
    assert [x["world"] for x in ranks] == [2, 2]
    for res in ranks:
        assert res["step"] == 6
        for k, w in res["straight"].items():
            assert torch.equal(res["resumed"][k], w), k  # exact: same reductions in the same order
            assert torch.equal(res["ema_resumed"][k], res["ema_straight"][k]), k
        assert torch.equal(res["resumed"]["head.weight"], ranks[0]["resumed"]["head.weight"])  # DDP: in sync
    assert ranks[0]["retired"] == ranks[1]["retired"] == ["step_00000004"]  # the abandoned one, moved once


def test_grad_accumulation_on_two_processes_matches_one(two_processes, tmp_path):
    """Would catch: gradients of accumulated micro-batches reduced twice, summed instead of averaged, or the
    no_sync micro-batch dropped."""
    single = run_accum(tmp_path / "one", world=1)
    ranks = [torch.load(two_processes / f"resume_rank{i}.pt", weights_only=True)["accum"] for i in (0, 1)]
    assert single["global_batch"] == ranks[0]["global_batch"] == 4
    for res in ranks:
        for n, g in single["grads"].items():
            torch.testing.assert_close(res["grads"][n], g, rtol=1e-5, atol=1e-6)
        for k, w in single["weights"].items():
            torch.testing.assert_close(res["weights"][k], w, rtol=1e-5, atol=1e-6)
