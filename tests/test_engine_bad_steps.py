"""Steps that must not update the weights: a finite loss with an infinite gradient, fp16 overflows; and a run that
keeps producing them stops with one line (faults injected through gradient hooks on the tiny model)."""

from __future__ import annotations

import pytest
import torch

from bevbridge import cli
from bevbridge.engine import Trainer, TrainingDiverged, build
from tests.engine_tiny import MSEEvaluator, TinyDataset, TinyModel, tiny_config


class InfGradModel(TinyModel):
    """The tiny model whose ``head.weight`` gradient is +inf at the forward passes listed in ``bad_calls`` (all when
    None); its loss stays finite."""

    def __init__(self, bad_calls=None):
        torch.manual_seed(3)
        super().__init__(dropout=0.0)
        self.calls, self.bad_calls = 0, bad_calls
        self.head.weight.register_hook(self._poison)

    def forward(self, batch):
        self.calls += 1
        return super().forward(batch)

    def _poison(self, grad):
        if self.bad_calls is None or self.calls in self.bad_calls:
            return torch.full_like(grad, float("inf"))
        return grad


def _weights(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_a_finite_loss_with_an_infinite_gradient_is_skipped_and_counted(tmp_path, caplog):
    """Would catch: an infinite gradient norm clipped to zero (or to NaN) and stepped with, or not counted."""
    model = InfGradModel(bad_calls={3})
    cfg = tiny_config(train={"max_steps": 5, "max_bad_steps": 2, "ckpt_every": 100})
    t = Trainer(cfg, model, TinyDataset(10), None, None, tmp_path / "run")
    seen = []
    orig = t._train_step

    def step(batches):
        before = _weights(t.module)
        out = orig(batches)
        seen.append((out["ok"], all(torch.equal(before[k], v) for k, v in _weights(t.module).items())))
        return out

    t._train_step = step
    res = t.fit()
    assert res.step == 5 and res.skipped_steps == 1
    assert seen[2] == (False, True)  # step 3: skipped, weights untouched
    assert all(ok and not same for ok, same in seen[:2] + seen[3:])
    assert "non-finite gradient norm (inf)" in caplog.text
    assert all(torch.isfinite(v).all() for v in t.module.state_dict().values())


def test_fp16_overflows_in_a_row_abort_with_their_own_limit(tmp_path):
    """Would catch: GradScaler-skipped steps never counted (a run stuck in overflow runs forever), or counted against
    max_bad_steps (a normal fp16 start would be stopped), or a streak that is not reset by a good step."""
    cfg = tiny_config(train={"max_steps": 20, "max_bad_steps": 2, "max_overflow_steps": 4, "ckpt_every": 100})

    def fp16_trainer(model, out):
        t = Trainer(cfg, model, TinyDataset(10), None, None, tmp_path / out)
        t.precision.scaler = torch.amp.GradScaler("cpu")  # fp16's GradScaler (CUDA-only autocast is not needed)
        return t

    t = fp16_trainer(InfGradModel(bad_calls={2, 3, 4, 6, 7, 8}), "isolated")  # streaks of 3 < 4
    assert t.fit().step == 20 and t.skipped == 6 and t.overflow_in_row == 0
    stuck = fp16_trainer(InfGradModel(), "stuck")
    w0 = _weights(stuck.module)
    with pytest.raises(TrainingDiverged, match=r"at step 4: 4 steps in a row overflowed in fp16 .*scale fell to 4096"):
        stuck.fit()
    assert stuck.skipped == 4 and all(torch.equal(w0[k], v) for k, v in _weights(stuck.module).items())


def test_a_diverging_train_command_exits_1_with_one_line(monkeypatch, tmp_path, capsys):
    """Would catch: TrainingDiverged escaping as a traceback, or the CLI exiting 0 after giving up."""
    monkeypatch.setattr(build, "build_model", lambda cfg, init=True: InfGradModel())
    monkeypatch.setattr(build, "build_datasets",
                        lambda data, needs, seed=0, train=True: (TinyDataset(10), TinyDataset(5, start=100)))
    monkeypatch.setattr(build, "build_evaluators", lambda cfg, needs, out_dir=None: {"tiny": MSEEvaluator()})
    config = tmp_path / "tiny.yaml"
    config.write_text("name: tiny\ndata: {batch_size: 2, num_workers: 0}\n"
                      "train: {max_steps: 10, device: cpu, max_bad_steps: 3}\n")
    assert cli.main(["train", str(config), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("bevbridge train: training aborted at step 3: 3 steps in a row had a non-finite loss or "
                           "gradient (last: non-finite gradient norm (inf))")
