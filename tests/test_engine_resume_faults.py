"""Resuming never mixes trajectories, and corrupt checkpoints end in one line naming the file (faults injected for
real on the tiny model: files truncated on disk, runs resumed from older checkpoints)."""

from __future__ import annotations

import json
import logging
import os
import stat

import pytest
import torch
from safetensors.torch import load_file

from bevbridge import cli
from bevbridge.engine import EngineError, Trainer, build
from bevbridge.engine.checkpoint import CheckpointManager, model_weights, read_state
from bevbridge.engine.run_log import read_scalars
from bevbridge.weights import CorruptWeightsError, checkpoint_dir_of, read_weights
from tests.engine_tiny import MSEEvaluator, TinyDataset, build_tiny, tiny_config


def _trainer(cfg, out, model=None):
    return Trainer(cfg, model or build_tiny(), TinyDataset(10), TinyDataset(5, start=100), {"tiny": MSEEvaluator()},
                   out)


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.module.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _cfg(**train):
    return tiny_config(train={"max_steps": 8, "ckpt_every": 2, "keep_last": 10, **train},
                       eval={"every_steps": 2, "best_metric": "tiny/mse", "best_mode": "min"})


# ------------------------------------------------------------------------------------ resume from an older checkpoint
def test_resuming_an_older_checkpoint_retires_the_abandoned_trajectory(tmp_path, caplog):
    """Would catch: later saves skipped because step_N exists (the old weights stay under the new names), the old
    checkpoints deleted instead of moved, best.json or `--resume` still reaching the abandoned run, a best
    checkpoint whose state does not know it is the best (a resumed run would then replace it by a worse one)."""
    run = tmp_path / "run"
    old = _trainer(_cfg(), run)
    old.fit()
    ck = run / "checkpoints"
    best = json.loads((ck / "best.json").read_text())
    assert read_state(ck / best["checkpoint"])["best"]["step"] == best["step"]  # its state knows it is the best
    old6, old8 = (load_file(ck / f"step_0000000{s}" / "model.safetensors") for s in (6, 8))
    (ck / "best.json").write_text(json.dumps({"step": 8, "checkpoint": "step_00000008", "metric": "tiny/mse",
                                              "value": -1.0}))  # the abandoned run's best, whatever it was

    # the new trajectory: another gradient clip (read from the config at every step; the lr would come from the
    # optimizer state)
    new_cfg = tiny_config(optim={"grad_clip": 0.05}, train={"max_steps": 8, "ckpt_every": 2, "keep_last": 10},
                          eval={"every_steps": 2, "best_metric": "tiny/mse", "best_mode": "min"})
    with caplog.at_level(logging.INFO, logger="bevbridge"):
        new = _trainer(new_cfg, run)
        new.fit(resume=ck / "step_00000004", stop_at=6)
    assert "abandoned trajectory (step_00000006, step_00000008)" in caplog.text and "retired-" in caplog.text
    retired = [d for d in ck.iterdir() if d.name.startswith("retired-")]
    assert len(retired) == 1
    assert sorted(p.name for p in retired[0].iterdir()) == ["best.json", "step_00000006", "step_00000008"]
    assert _same(old6, load_file(retired[0] / "step_00000006" / "model.safetensors"))  # moved, intact
    assert _same(old8, load_file(retired[0] / "step_00000008" / "model.safetensors"))
    assert sorted(p.name for p in (run / "eval" / retired[0].name).iterdir()) == ["step_00000006", "step_00000008"]
    # the new step 6 was written (not skipped), holds the new weights, and nothing after it is reachable
    assert [p.name for p in CheckpointManager(ck).all()] == ["step_00000002", "step_00000004", "step_00000006"]
    new6 = load_file(ck / "step_00000006" / "model.safetensors")
    assert _same(new6, _weights(new)) and not _same(new6, old6)
    assert checkpoint_dir_of(run) == ck / "step_00000006"
    best = json.loads((ck / "best.json").read_text())
    assert best["step"] <= 6 and (ck / best["checkpoint"]).is_dir()

    # `--resume` afterwards continues the new trajectory: bit-identical to 4 -> 8 in one go with the new config
    again = _trainer(new_cfg, run, model=build_tiny(seed=99))
    again.fit(resume=True)
    assert again.step == 8
    straight_dir = tmp_path / "straight"
    first = _trainer(_cfg(), straight_dir)
    first.fit(stop_at=4)
    straight = _trainer(new_cfg, straight_dir)
    straight.fit(resume=True)
    assert _same(_weights(again), _weights(straight))
    rows = [r for r in read_scalars(run) if "train/loss" in r]
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows)  # plots see one trajectory


def test_saving_a_step_that_exists_moves_the_old_checkpoint_aside(tmp_path, caplog):
    """Would catch: save() returning early on an existing step (the abandoned weights would stay), or deleting it."""
    m = build_tiny()
    mgr = CheckpointManager(tmp_path, keep_last=5)
    mgr.save(3, model_weights(m), {"step": 3, "who": "old"})
    with torch.no_grad():
        m.head.weight.add_(1.0)
    mgr.save(3, model_weights(m), {"step": 3, "who": "new"})
    assert read_state(tmp_path / "step_00000003")["who"] == "new"
    assert torch.equal(read_weights(tmp_path / "step_00000003")[0]["head.weight"], m.head.weight)
    (retired,) = tmp_path.glob("retired-*/step_00000003")
    assert read_state(retired)["who"] == "old" and "not from this trajectory" in caplog.text


def test_checkpoint_folders_follow_the_umask(tmp_path):
    """Would catch: tempfile.mkdtemp's 0700 folder renamed into place (others on a shared machine cannot read)."""
    old = os.umask(0o022)
    try:
        d = CheckpointManager(tmp_path / "checkpoints").save(1, model_weights(build_tiny()), {"step": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(d.stat().st_mode) == 0o755
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o644 for f in d.iterdir())


# ------------------------------------------------------------------------------------------------ corrupt checkpoints
@pytest.mark.parametrize("bad", ["model.safetensors", "state.pt", "ema.safetensors"])
def test_resume_latest_falls_back_past_a_truncated_checkpoint(tmp_path, caplog, bad):
    """Would catch: a SafetensorError / RuntimeError traceback, or resuming nothing; the fallback checkpoint must give
    exactly the uninterrupted result, and the corrupt one must not come back under its name."""
    cfg = tiny_config(train={"max_steps": 8, "ckpt_every": 2, "keep_last": 10, "ema": True})
    run = tmp_path / "run"
    _trainer(cfg, run).fit(stop_at=6)
    _truncate(run / "checkpoints" / "step_00000006" / bad)
    with caplog.at_level(logging.WARNING, logger="bevbridge"):
        t = _trainer(cfg, run, model=build_tiny(seed=5))
        t.fit(resume=True)
    assert f"skipping step_00000006: {run / 'checkpoints' / 'step_00000006' / bad}: corrupt or truncated" in caplog.text
    assert "resuming from" in caplog.text and "step_00000004" in caplog.text
    straight = _trainer(cfg, tmp_path / "straight")
    straight.fit()
    assert _same(_weights(t), _weights(straight))
    (retired,) = (run / "checkpoints").glob("retired-*/step_00000006")
    assert (retired / bad).stat().st_size < (run / "checkpoints" / "step_00000006" / bad).stat().st_size


def test_resume_of_a_named_corrupt_checkpoint_is_one_line_naming_the_file_and_the_alternative(tmp_path):
    """Would catch: falling back silently when the user named a checkpoint, or a message that names no file."""
    cfg = tiny_config(train={"max_steps": 6, "ckpt_every": 2, "keep_last": 10})
    run = tmp_path / "run"
    _trainer(cfg, run).fit(stop_at=4)
    _truncate(run / "checkpoints" / "step_00000004" / "state.pt")
    with pytest.raises(EngineError) as e:
        _trainer(cfg, run).fit(resume=run / "checkpoints" / "step_00000004")
    msg = str(e.value)
    assert "\n" not in msg and "step_00000004/state.pt: corrupt or truncated training state" in msg
    assert f"--resume {run / 'checkpoints' / 'step_00000002'}" in msg
    _truncate(run / "checkpoints" / "step_00000002" / "model.safetensors", keep=0.0)  # an empty file
    with pytest.raises(EngineError, match=r"none of the 2 checkpoint\(s\) in .* loads"):
        _trainer(cfg, run).fit(resume=True)


def test_truncated_files_raise_corrupt_weights_error_naming_them(tmp_path):
    """Would catch: safetensors' SafetensorError or torch's RuntimeError/EOFError escaping with no path."""
    d = CheckpointManager(tmp_path).save(1, model_weights(build_tiny()), {"step": 1})
    for name, keep in (("model.safetensors", 0.5), ("state.pt", 0.5), ("state.pt", 0.0)):
        backup = (d / name).read_bytes()
        _truncate(d / name, keep)
        with pytest.raises(CorruptWeightsError, match=f"{d / name}: corrupt or truncated"):
            read_weights(d) if name.endswith("safetensors") else read_state(d)
        (d / name).write_bytes(backup)


# ------------------------------------------------------------------------------------------------------- the CLI
@pytest.fixture
def tiny_build(monkeypatch):
    monkeypatch.setattr(build, "build_model", lambda cfg, init=True: _init(build_tiny(cfg.train.seed), cfg, init))
    monkeypatch.setattr(build, "build_datasets",
                        lambda data, needs, seed=0, train=True: (TinyDataset(10), TinyDataset(5, start=100)))
    monkeypatch.setattr(build, "build_evaluators", lambda cfg, needs, out_dir=None: {"tiny": MSEEvaluator()})


def _init(model, cfg, init):
    if init:
        build.load_init_weights(model, cfg)
    return model


@pytest.fixture
def config(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text("name: tiny\ndata: {batch_size: 2, num_workers: 0}\nschedule: {warmup_steps: 1}\n"
                 "train: {max_steps: 4, device: cpu, log_every: 2, ckpt_every: 2, keep_last: 5}\n")
    return p


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    return last


def test_cli_corrupt_checkpoints_exit_non_zero_with_one_line(tiny_build, config, tmp_path, capsys):
    """Would catch: the CLI printing a traceback (exit 1 by accident) or an error that names no file or remedy."""
    run = tmp_path / "run"
    assert cli.main(["train", str(config), "--out", str(run)]) == 0
    ck = run / "checkpoints"
    _truncate(ck / "step_00000004" / "model.safetensors")
    capsys.readouterr()
    assert cli.main(["eval", str(config), "--ckpt", str(run)]) == 1
    line = _one_line_error(capsys)
    assert f"{ck / 'step_00000004' / 'model.safetensors'}: corrupt or truncated weights file" in line
    assert f"--ckpt {ck / 'step_00000002'}" in line
    assert cli.main(["train", str(config), "--out", str(run), "--resume", str(ck / "step_00000004")]) == 1
    line = _one_line_error(capsys)
    assert line.startswith("bevbridge train: --resume: ") and "step_00000004/model.safetensors" in line
    # model.init_from: a truncated pretrained file
    _truncate(ck / "step_00000002" / "model.safetensors")
    assert cli.main(["train", str(config), "--out", str(tmp_path / "r2"), "model.kind=ctab",
                     f"model.init_from={ck / 'step_00000002' / 'model.safetensors'}"]) == 1
    line = _one_line_error(capsys)
    assert "model.init_from: " in line and "step_00000002/model.safetensors: corrupt or truncated" in line


def test_cli_resume_falls_back_and_says_which_it_skipped(tiny_build, config, tmp_path, capsys):
    """Would catch: `--resume` failing on a corrupt latest checkpoint, or falling back without a word in the log."""
    run = tmp_path / "run"
    assert cli.main(["train", str(config), "--out", str(run), "--max-steps", "4"]) == 0
    _truncate(run / "checkpoints" / "step_00000004" / "state.pt")
    assert cli.main(["train", str(config), "--out", str(run), "--resume"]) == 0
    assert "trained to step 4/4" in capsys.readouterr().out
    logged = (run / "train.log").read_text()
    assert "WARNING bevbridge.engine.resume: --resume: skipping step_00000004" in logged
    assert "resuming from" in logged and "step_00000002, the newest checkpoint that loads" in logged
    assert read_state(run / "checkpoints" / "step_00000004")["step"] == 4  # rewritten by the new trajectory
