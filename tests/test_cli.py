"""The `bevbridge` console script: help lists every subcommand; unbuilt ones fail loudly; bad overrides are one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ["synth", "train", "eval", "infer", "viz", "bench", "demo", "config", "check-data"]


def bevbridge(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("bevbridge")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "bevbridge.cli"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's code, whatever the venv points at
    return subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=cwd, timeout=120, env=env)


def test_console_script_is_installed():
    assert Path(sys.executable).with_name("bevbridge").exists() or shutil.which("bevbridge")


def test_help_lists_every_subcommand():
    r = bevbridge("--help")
    assert r.returncode == 0
    for name in SUBCOMMANDS:
        assert f"\n    {name} " in r.stdout, name


@pytest.fixture
def config(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text("name: exp\noptim:\n  lr: 1.0e-3\n")
    return p


def test_bad_override_prints_one_clear_line(config):
    r = bevbridge("train", str(config), "optim.lrr=2e-4")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "optim.lrr" in lines[0] and "did you mean 'lr'" in lines[0] and "valid keys under 'optim'" in lines[0]


def test_config_prints_the_resolved_config(config):
    r = bevbridge("config", str(config), "optim.lr=2e-4", "data.batch_size=2")
    assert r.returncode == 0, r.stderr
    resolved = yaml.safe_load(r.stdout)
    assert resolved["optim"]["lr"] == pytest.approx(2e-4) and resolved["data"]["batch_size"] == 2


@pytest.mark.parametrize("args", [["train"], ["eval", "--ckpt", "x"], ["infer", "--ckpt", "x", "--out", "r.json"]])
def test_engine_commands_without_a_model_fail_with_one_line(config, args, tmp_path):
    r = bevbridge(args[0], str(config), *args[1:], cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith(f"bevbridge {args[0]}: ") and "no model" in lines[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()  # nothing was done


def test_synth_writes_a_world_and_says_where(tmp_path):
    out = tmp_path / "world"
    r = bevbridge("synth", "--out", str(out), "--scenes", "1", "--samples-per-scene", "2", "--image-size", "32", "56",
                  "--sweeps", "0", "1", "0", "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert str(out) in r.stdout and " s" in r.stdout
    assert (out / "v1.0-mini" / "sample.json").is_file() and (out / "synth_manifest.json").is_file()
    r = bevbridge("synth", "--out", str(out), "--samples-per-scene", "0")
    assert r.returncode == 2 and "samples_per_scene" in r.stderr and len(r.stderr.strip().splitlines()) == 1
