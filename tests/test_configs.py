"""One test over every config (timm's test_models style): adding a config adds its tests.

- every ``configs/**/*.yaml`` resolves against the schema (its ``_base_`` chain included);
- every ``*_synth.yaml`` builds, runs forward + loss + backward on a random batch of 2 with a finite loss and a
  finite gradient for EVERY trainable parameter, and ``predict`` returns one Prediction per sample, in order; the
  same step runs under each autocast mode the CPU supports natively (``Precision.native_modes``: bf16 only where it
  is not emulated, which would be ~20x slower);
- every paper-scale config builds on the meta device, and ``bevbridge summary`` reports its parameters.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from bevbridge.config import load_config
from bevbridge.data.random_batch import random_batch
from bevbridge.engine import build
from bevbridge.engine.amp import Precision
from bevbridge.engine.summary import format_summary, summarize
from bevbridge.engine.train_step import TrainStep
from bevbridge.models.config_common import ModelConfig
from bevbridge.models.contract import BEVModel

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))
SYNTH = [p for p in CONFIGS if p.stem.endswith("_synth")]
PAPER = [p for p in CONFIGS if not p.stem.endswith("_synth")]


def _id(p: Path) -> str:
    return f"{p.parent.name}/{p.stem}"


def test_there_are_configs():
    assert SYNTH and PAPER


@pytest.mark.parametrize("path", CONFIGS, ids=_id)
def test_config_resolves(path):
    """Would catch: a key renamed in a schema but not in a YAML, a broken _base_ chain, a kind without a schema."""
    cfg = load_config(path)
    assert cfg.model is not None, f"{path} has no model section"
    needs = cfg.model.data_needs()
    for name in cfg.eval.evaluators:
        assert name in needs.tasks, f"{path}: evaluator {name} but the model predicts {needs.tasks}"


def _without_trained_weights(path: Path) -> list[str]:
    """Overrides that drop the ``init_from`` of the model and of its nested model sections (a BridgeTA teacher is
    a trained run that a fresh clone does not have): random weights test the step's mechanics all the same, and the
    after-init hooks (the assistant copied from the teacher) still run."""
    m = load_config(path).model
    out = ["model.init_from=null"] if m.init_from is not None else []
    for f in dataclasses.fields(m):
        sub = getattr(m, f.name)
        if isinstance(sub, ModelConfig) and sub.init_from is not None:
            out.append(f"model.{f.name}.init_from=null")
    return out


@pytest.mark.parametrize("amp", Precision.native_modes("cpu"))
@pytest.mark.parametrize("path", SYNTH, ids=_id)
def test_synth_config_trains_a_step(path, amp):
    """Would catch: a parameter that never receives a gradient (a branch left out of the graph, a detached
    residual; DDP would hang or need find_unused_parameters), a non-finite loss on a well-formed batch, a loss that
    breaks under autocast, ``predict`` dropping or reordering samples, a model that ignores its own DataNeeds."""
    cfg = load_config(path, ["train.device=cpu", *_without_trained_weights(path)])
    model = build.build_model(cfg)
    assert isinstance(model, BEVModel), f"{type(model).__name__} does not follow models/contract.py"
    model.train()
    needs = model.data_needs()
    batch = random_batch(needs, batch_size=2, seed=0)
    losses = TrainStep(model, Precision(amp, torch.device("cpu")))(batch)
    assert torch.isfinite(losses["loss"]), {k: float(v) for k, v in losses.items()}
    losses["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{len(missing)} trainable parameters got no gradient, e.g. {missing[:5]}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients in {bad[:5]}"
    model.eval()
    with torch.no_grad():
        preds = model.predict(model(batch), batch)
    assert [p.token for p in preds] == batch.tokens
    if "detection" in needs.tasks:
        assert all(p.boxes is not None and p.boxes.shape[-1] == 9 and len(p.scores) == len(p.boxes) for p in preds)
    if "segmentation" in needs.tasks:
        assert all(p.seg_probs.shape == (len(needs.map_classes), *needs.map_grid.shape) for p in preds)
    if "captioning" in needs.tasks:
        assert all(p.captions is not None and
                   len(p.captions) == len(p.caption_boxes if p.caption_boxes is not None else p.boxes) for p in preds)


@pytest.mark.parametrize("path", PAPER, ids=_id)
def test_paper_config_builds_on_meta_and_summarises(path, capsys):
    """Would catch: a paper-scale config that no longer builds (a constructor reading a file, a shape mismatch
    between modules at the published sizes), or a summary that miscounts shared/frozen parameters."""
    report = summarize(load_config(path), device="meta", flops=False, config_path=str(path))
    total = report["parameters"]["(total)"]
    assert total["trainable"] + total["frozen"] > 1_000_000
    rows = {k: v for k, v in report["parameters"].items() if k != "(total)"}
    assert sum(r["trainable"] for r in rows.values()) == total["trainable"]
    print(format_summary(report))
