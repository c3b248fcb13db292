"""Checkpoints: safetensors + weights-only state, atomic under a kill (SIGKILL at chosen points), last-k + best,
init_from with a prefix map."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from safetensors.torch import save_file

from bevbridge.engine import checkpoint as ckpt_mod
from bevbridge.engine.checkpoint import CheckpointManager, ModelWeights, model_weights, read_state
from bevbridge.weights import checkpoint_dir_of, load_pretrained, read_weights
from tests.engine_tiny import TinyModel


def _state(step):
    return {"step": step, "optimizer": {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 1e-3,
            "betas": (0.9, 0.99), "name": "decay"}]}, "rng": [{"torch": torch.get_rng_state()}], "best": {}}


def test_save_load_weights_only(tmp_path):
    m = TinyModel()
    mgr = CheckpointManager(tmp_path / "checkpoints", keep_last=2)
    d = mgr.save(5, model_weights(m), _state(5), ema_state=m.state_dict())
    assert d.name == "step_00000005" and mgr.latest() == d
    state = read_state(d)  # torch.load(weights_only=True) inside
    assert state["step"] == 5 and state["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)
    w, src = read_weights(d)
    assert src.endswith("model.safetensors") and all(torch.equal(w[k], v) for k, v in m.state_dict().items())
    assert read_weights(d, prefer_ema=True)[1].endswith("ema.safetensors")
    assert checkpoint_dir_of(tmp_path) == d  # a run folder resolves to its latest checkpoint
    assert checkpoint_dir_of(d / "model.safetensors") == d


def test_a_kill_during_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    m = TinyModel()
    mgr = CheckpointManager(tmp_path, keep_last=3)
    good = mgr.save(1, model_weights(m), _state(1))

    def killed(*a, **k):
        raise KeyboardInterrupt  # as if the process died while writing state.pt

    monkeypatch.setattr(ckpt_mod.torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        mgr.save(2, model_weights(m), _state(2))
    assert mgr.latest() == good and not (tmp_path / "step_00000002").exists()
    assert read_state(good)["step"] == 1
    # a real kill leaves the temporary folder behind: it never counts as a checkpoint and the next save removes it
    (tmp_path / ".step_00000002.tmpxyz").mkdir()
    (tmp_path / ".step_00000002.tmpxyz" / "model.safetensors").write_bytes(b"half")
    assert mgr.all() == [good]
    monkeypatch.undo()
    mgr.save(3, model_weights(m), _state(3))
    assert not list(tmp_path.glob(".step_*")) and [p.name for p in mgr.all()] == ["step_00000001", "step_00000003"]


def test_keep_last_k_and_best(tmp_path):
    m = TinyModel()
    mgr = CheckpointManager(tmp_path, keep_last=2)
    mgr.save(1, model_weights(m), _state(1))
    mgr.set_best(1, "tiny/mse", 0.5)
    for step in (2, 3, 4):
        mgr.save(step, model_weights(m), _state(step))
    assert [p.name for p in mgr.all()] == ["step_00000001", "step_00000003", "step_00000004"]
    assert mgr.best()["checkpoint"] == "step_00000001"


def test_init_from_with_prefix_map_reports_missing_and_unexpected(tmp_path, caplog):
    src = TinyModel(hidden=16)
    # a "pretrained" file with other names: backbone.* for image_backbone.*, an extra key, and a head of another shape
    state = {k.replace("image_backbone.", "backbone."): v for k, v in src.state_dict().items() if not k.startswith("head")}
    state["extra.weight"] = torch.zeros(2)
    state["head.weight"] = torch.zeros(3, 16)
    save_file(state, tmp_path / "pre.safetensors")
    dst = TinyModel(hidden=16)
    with caplog.at_level(logging.INFO):
        rep = load_pretrained(dst, tmp_path / "pre.safetensors", {"backbone.": "image_backbone."})
    assert torch.equal(dst.image_backbone.weight, src.image_backbone.weight)
    assert rep.unexpected == ["extra.weight"]
    assert rep.missing == ["head.bias"] and rep.mismatched[0].startswith("head.weight (file (3, 16)")
    assert "image_backbone.weight" in rep.loaded and "missing keys: head.bias" in caplog.text
    assert "unexpected keys: extra.weight" in caplog.text


def test_init_from_does_not_report_the_rebuilt_frozen_modules_as_missing(tmp_path, caplog):
    """A checkpoint leaves out a frozen module rebuilt from its own files (the captioner's language model): loading
    it must not warn about those keys, but must still report a key that is genuinely missing, and must still list
    the keys of a frozen module that checkpoints do keep. Catches: the exclusion dropped (hundreds of LM keys in a
    warning on every caption-stage continuation), or applied to every frozen module / every key (a frozen detector
    silently left at its init)."""
    from bevbridge.models.freeze import checkpoint_state_dict, freeze

    def build():
        m = nn.ModuleDict({"lm": nn.Linear(4, 4), "detector": nn.Linear(4, 3), "head": nn.Linear(3, 2)})
        freeze(m["lm"], in_checkpoint=False)
        freeze(m["detector"])
        return m

    state = checkpoint_state_dict(build())
    assert not any(k.startswith("lm.") for k in state) and "detector.weight" in state
    del state["head.bias"], state["detector.bias"]
    save_file(state, tmp_path / "ckpt.safetensors")
    with caplog.at_level(logging.WARNING):
        rep = load_pretrained(build(), tmp_path / "ckpt.safetensors")
    assert sorted(rep.missing) == ["detector.bias", "head.bias"]
    assert "lm." not in caplog.text and "missing keys: detector.bias, head.bias" in caplog.text


def test_init_from_a_torch_state_dict_file(tmp_path):
    src = TinyModel()
    torch.save({"state_dict": src.state_dict(), "meta": {"epoch": 12}}, tmp_path / "mmcv.pth")  # mmcv layout
    dst = TinyModel()
    rep = load_pretrained(dst, tmp_path / "mmcv.pth")
    assert not rep.missing and not rep.unexpected and torch.equal(dst.head.weight, src.head.weight)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth: not a safetensors file"):
        read_weights(tmp_path / "junk.pth")


_SAVER = r"""
import os, signal, sys, torch
from bevbridge.engine.checkpoint import CheckpointManager, ModelWeights
root, kill_step, kill_at = sys.argv[1], int(sys.argv[2]), sys.argv[3]
mgr = CheckpointManager(root, keep_last=2)

def hook(event, path):  # die exactly here, as a SIGKILL from outside would
    if step == kill_step and f"{event}:{path.name}".startswith(kill_at):
        os.kill(os.getpid(), signal.SIGKILL)

mgr.on_write = hook
for step in range(1, kill_step + 1):
    w = {"w": torch.full((256, 256), float(step))}
    mgr.save(step, ModelWeights(w, "tiny"), {"step": step, "opt": torch.full((64,), float(step))}, ema_state=w)
"""


@pytest.mark.parametrize("kill_at, survives", [("file:model.safetensors", False), ("complete:step_00000003", True)])
def test_sigkill_during_a_save_leaves_usable_checkpoints(tmp_path, kill_at, survives):
    """SIGKILL at a chosen point of saving step 3 (after model.safetensors is written, the other files not yet;
    after the rename, before pruning), from the CheckpointManager.on_write hook, not by timing. Would catch: a
    half-written checkpoint under a real name (listed, resumed, evaluated), a leftover temp folder counted as a
    checkpoint or never removed, pruning that loses the previous checkpoints."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", _SAVER, str(tmp_path), "3", kill_at], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(repo)}, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    mgr = CheckpointManager(tmp_path, keep_last=2)
    names = [d.name for d in mgr.all()]
    assert names == (["step_00000001", "step_00000002", "step_00000003"] if survives else
                     ["step_00000001", "step_00000002"])  # pruning had not run yet: nothing lost
    assert bool(list(tmp_path.glob(".step_00000003.tmp*"))) is not survives  # the killed save's temp folder
    for d in mgr.all():  # every checkpoint under a real name is complete and consistent
        step = int(d.name.split("_")[1])
        assert read_state(d)["step"] == step and read_weights(d)[0]["w"][0, 0] == step
        assert read_weights(d, prefer_ema=True)[0]["w"][-1, -1] == step
    # the next process saves on: the leftover is removed and pruning keeps the last two
    w = {"w": torch.full((4,), 4.0)}
    mgr.save(4, ModelWeights(w, "tiny"), {"step": 4})
    assert not list(tmp_path.glob(".step_*")) and [d.name for d in mgr.all()][-1] == "step_00000004"
    assert len(mgr.all()) == 2
