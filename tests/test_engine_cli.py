"""`bevbridge train | eval | infer` end to end in-process, with the tiny model standing in for build_model, and the
default-dataroot rule (generate data/synth when missing) with a stand-in synthetic-world writer."""

from __future__ import annotations

import json
import logging
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from bevbridge import cli
from bevbridge.engine import build
from bevbridge.config.schema import DataConfig
from tests.engine_tiny import MSEEvaluator, TinyDataset, build_tiny


@pytest.fixture
def tiny_build(monkeypatch):
    monkeypatch.setattr(build, "build_model", lambda cfg, init=True: build_tiny(cfg.train.seed))
    monkeypatch.setattr(build, "build_datasets",
                        lambda data, needs, seed=0, train=True: (TinyDataset(10), TinyDataset(5, start=100)))
    monkeypatch.setattr(build, "build_evaluators", lambda cfg, needs, out_dir=None: {"tiny": MSEEvaluator()})


@pytest.fixture
def config(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text("name: tiny\ndata: {batch_size: 2, num_workers: 0}\nschedule: {warmup_steps: 1}\n"
                 "train: {max_steps: 6, device: cpu, log_every: 2, ckpt_every: 2, keep_last: 2}\n")
    return p


def test_train_resume_eval(tiny_build, config, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", str(config), "optim.lr=1e-3", "--out", str(run), "--max-steps", "2"]) == 0
    assert "trained to step 2/6" in capsys.readouterr().out
    assert (run / "train.log").is_file() and "checkpoint" in (run / "train.log").read_text()
    assert cli.main(["train", str(config), "optim.lr=1e-3", "--out", str(run)]) == 1  # exists, no --resume
    assert "pass --resume" in capsys.readouterr().err
    assert cli.main(["train", str(config), "optim.lr=1e-3", "--out", str(run), "--resume"]) == 0
    assert "trained to step 6/6" in capsys.readouterr().out
    assert [p.name for p in sorted((run / "checkpoints").glob("step_*"))] == ["step_00000004", "step_00000006"]
    assert (run / "eval" / "step_00000006" / "metrics.json").is_file()  # the end-of-training evaluation
    assert cli.main(["eval", str(config), "--ckpt", str(run)]) == 0
    out = capsys.readouterr().out
    assert "tiny/mse" in out
    metrics = json.loads((run / "eval" / "step_00000006" / "metrics.json").read_text())
    assert metrics["checkpoint"].endswith("step_00000006/model.safetensors") and metrics["metrics"]["tiny/count"] == 5


def test_overrides_may_follow_the_options(tiny_build, config, tmp_path, capsys):
    """Would catch: argparse rejecting `key=value` after an option ("unrecognized arguments"), or an override taken
    as the value of a bare --resume."""
    run = tmp_path / "run"
    assert cli.main(["train", str(config), "--out", str(run), "--max-steps", "2", "train.ckpt_every=1",
                     "train.keep_last=5"]) == 0
    assert [p.name for p in sorted((run / "checkpoints").glob("step_*"))] == ["step_00000001", "step_00000002"]
    assert cli.main(["train", str(config), "--out", str(run), "--resume", "train.ckpt_every=1", "--max-steps", "3",
                     "train.keep_last=5"]) == 0
    assert (run / "checkpoints" / "step_00000003").is_dir()
    with pytest.raises(SystemExit) as e:  # argparse's usage error
        cli.main(["train", str(config), "--out", str(run), "--bogus"])
    assert e.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_eval_rejects_weights_of_another_model(tiny_build, config, tmp_path, capsys):
    from safetensors.torch import save_file

    save_file({"other.weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    assert cli.main(["eval", str(config), "--ckpt", str(tmp_path / "other.safetensors")]) == 2
    assert "the weights do not fit this model" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- default dataroot: data/synth
@pytest.fixture
def fake_synth(monkeypatch):
    calls = []
    mod = types.ModuleType("bevbridge.data.synth")

    def is_complete(root, *, version="v1.0-mini"):  # keywords, as bevbridge.data.synth.is_complete
        return (root / version / "done").is_file()

    def generate(out, *, version="v1.0-mini"):
        calls.append((str(out), version))
        (out / version).mkdir(parents=True)
        (out / version / "done").write_text("")

    mod.is_complete, mod.generate = is_complete, generate
    monkeypatch.setitem(sys.modules, "bevbridge.data.synth", mod)
    return calls


def test_default_dataroot_is_generated_once(fake_synth, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="bevbridge")
    monkeypatch.chdir(tmp_path)
    cfg = DataConfig()
    assert cfg.dataroot == "data/synth"
    assert build.ensure_dataset(cfg) == Path("data/synth")
    assert fake_synth == [("data/synth", "v1.0-mini")]
    assert "generating the synthetic nuScenes-format world in data/synth" in caplog.text
    build.ensure_dataset(cfg)
    assert len(fake_synth) == 1  # complete: not generated again


def test_other_data_at_the_default_root_is_used_not_replaced(fake_synth, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="bevbridge")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "synth" / "v1.0-mini").mkdir(parents=True)
    (tmp_path / "data" / "synth" / "v1.0-mini" / "sample.json").write_text("[]")  # e.g. `bevbridge synth --scenes 4`
    assert build.ensure_dataset(DataConfig()) == Path("data/synth")
    assert fake_synth == [] and "using the nuScenes-format data already in data/synth" in caplog.text


def test_a_named_dataroot_is_never_generated(fake_synth, tmp_path):
    with pytest.raises(build.BuildError, match="data.dataroot '.*nuscenes' does not exist"):
        build.ensure_dataset(DataConfig(dataroot=str(tmp_path / "nuscenes")))
    assert fake_synth == []


def test_missing_synth_writer_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "bevbridge.data.synth", None)  # import fails as if the module did not exist
    with pytest.raises(build.BuildError, match=r"synthetic world writer is not built yet \(bevbridge.data.synth"):
        build.ensure_dataset(DataConfig())


def test_model_init_from_config_key(tmp_path, caplog):
    """Would catch: init_prefix_map not applied (the renamed keys would then all be 'unexpected'), or a file that
    does not exist silently skipped."""
    from safetensors.torch import save_file

    from bevbridge.config import load_config

    caplog.set_level(logging.INFO, logger="bevbridge")
    src = build_tiny(seed=1)
    renamed = {k.replace("image_backbone.", "trunk."): v for k, v in src.state_dict().items()}
    assert any(k.startswith("trunk.") for k in renamed)  # the map has something to do
    save_file(renamed, tmp_path / "p.safetensors")
    (tmp_path / "c.yaml").write_text("name: x\nmodel: {kind: ctab}\n")
    cfg = load_config(tmp_path / "c.yaml", [f"model.init_from={tmp_path / 'p.safetensors'}",
                                            "model.init_prefix_map={trunk.: image_backbone.}"])
    assert cfg.model.init_prefix_map == {"trunk.": "image_backbone."}
    dst = build_tiny(seed=2)
    assert not torch.equal(src.image_backbone.weight, dst.image_backbone.weight)
    build.load_init_weights(dst, cfg)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    assert "loaded 7 tensors; 0 missing, 0 unexpected" in caplog.text
    without_map = load_config(tmp_path / "c.yaml", [f"model.init_from={tmp_path / 'p.safetensors'}"])
    fresh = build_tiny(seed=2)
    build.load_init_weights(fresh, without_map)
    assert not torch.equal(src.image_backbone.weight, fresh.image_backbone.weight)  # the trunk.* keys did not fit
    bad = load_config(tmp_path / "c.yaml", [f"model.init_from={tmp_path / 'nope.safetensors'}"])
    with pytest.raises(build.BuildError, match="model.init_from: weights not found: .*nope.safetensors"):
        build.load_init_weights(dst, bad)
