"""The training loop on a tiny model: run-folder layout, bit-identical resume, NaN handling, accumulation, AMP."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from bevbridge.engine import EngineError, Trainer, TrainingDiverged
from tests.engine_tiny import MSEEvaluator, TinyDataset, build_tiny, tiny_config


def _trainer(cfg, out, n_train=10, model=None, val=None, **kw):
    return Trainer(cfg, model or build_tiny(), TinyDataset(n_train), val or TinyDataset(5, start=100),
                   {"tiny": MSEEvaluator()}, out, **kw)


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.module.state_dict().items()}


def test_fit_writes_the_documented_run_folder(tmp_path):
    cfg = tiny_config(train={"ema": True}, eval={"every_steps": 4, "best_metric": "tiny/mse", "best_mode": "min"})
    before = _weights(t := _trainer(cfg, tmp_path / "run"))
    res = t.fit()
    run = tmp_path / "run"
    assert res.step == 8 and res.skipped_steps == 0
    assert (run / "config.yaml").is_file() and any((run / "tb").iterdir())
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert ckpts == ["step_00000004", "step_00000008"]
    for c in ckpts:
        assert {p.name for p in (run / "checkpoints" / c).iterdir()} == {"model.safetensors", "ema.safetensors",
                                                                         "state.pt"}
    state = torch.load(run / "checkpoints" / "step_00000008" / "state.pt", weights_only=True)
    assert state["step"] == 8 and state["ema_updates"] == 8 and len(state["rng"]) == 1
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    m4 = json.loads((run / "eval" / "step_00000004" / "metrics.json").read_text())
    m8 = json.loads((run / "eval" / "step_00000008" / "metrics.json").read_text())
    better = min((m4, m8), key=lambda m: m["metrics"]["tiny/mse"])  # best_mode min
    assert best["metric"] == "tiny/mse" and best["step"] == better["step"]
    assert best["value"] == pytest.approx(better["metrics"]["tiny/mse"])
    assert m8["step"] == 8 and m8["ema"] is True and m8["metrics"]["tiny/count"] == 5.0
    assert m8["metrics"]["tiny/mse"] == pytest.approx(res.metrics["tiny/mse"])
    assert m4["metrics"]["tiny/mse"] != m8["metrics"]["tiny/mse"]
    # training moved the weights; the saved weights are the trained ones
    after = _weights(t)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    saved = load_file(run / "checkpoints" / "step_00000008" / "model.safetensors")
    assert all(torch.equal(saved[k], after[k]) for k in after)


@pytest.mark.parametrize("mode", ["min", "max"])
def test_the_best_checkpoint_is_the_best_evaluation_and_survives_pruning(tmp_path, mode):
    """Four evaluations, one checkpoint kept besides the best: best.json names the step whose metric is the best in
    ``best_mode`` (with "max" on an error that falls, that is an early step, not the last), and that checkpoint
    folder still exists. Catches a best that is merely the latest, a comparison with the wrong sign, and pruning
    that deletes the best checkpoint."""
    cfg = tiny_config(train={"keep_last": 1}, eval={"every_steps": 2, "best_metric": "tiny/mse", "best_mode": mode})
    _trainer(cfg, tmp_path / "run").fit()
    run = tmp_path / "run"
    values = {int(d.name.split("_")[1]): json.loads((d / "metrics.json").read_text())["metrics"]["tiny/mse"]
              for d in (run / "eval").iterdir()}
    assert sorted(values) == [2, 4, 6, 8] and len(set(values.values())) == 4
    want = (min if mode == "min" else max)(values, key=values.get)
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert best["step"] == want and best["value"] == pytest.approx(values[want])
    assert (run / "checkpoints" / best["checkpoint"] / "model.safetensors").is_file()
    if mode == "max":
        assert want != 8  # the error fell: the "best" under max is an early step, kept through pruning


def test_loss_goes_down(tmp_path):
    cfg = tiny_config(train={"max_steps": 60, "ckpt_every": 60}, eval={"every_steps": 0})
    t = _trainer(cfg, tmp_path / "run", n_train=16, val=TinyDataset(16))  # fit the training set
    first = t.evaluate()["tiny/mse"]
    last = t.fit().metrics["tiny/mse"]
    assert last < 0.5 * first, (first, last)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_is_bit_identical(tmp_path, num_workers):
    """N steps straight == N/2 steps, a new process-like Trainer, --resume, N/2 steps: exact weights and state."""
    cfg = tiny_config(data={"batch_size": 2, "num_workers": num_workers},
                      train={"max_steps": 8, "ckpt_every": 100, "ema": True}, eval={"every_steps": 3})
    # 10 samples / batch 2 = 5 batches per epoch: the resume point (step 4) is mid-epoch and training crosses epochs
    straight = _trainer(cfg, tmp_path / "a")
    straight.fit()
    first = _trainer(cfg, tmp_path / "b")
    assert first.fit(stop_at=4).step == 4
    torch.manual_seed(12345)  # a resumed process starts with different RNG states and a different model init
    resumed = _trainer(cfg, tmp_path / "b", model=build_tiny(seed=99))
    assert resumed.fit(resume=True).step == 8
    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a), "weights differ after resume"
    assert all(torch.equal(straight.ema.shadow[k], resumed.ema.shadow[k]) for k in a), "EMA differs after resume"
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    assert straight.epoch == resumed.epoch == 1 and straight.batch_in_epoch == resumed.batch_in_epoch == 3


def test_resume_without_data_order_restoration_would_differ(tmp_path):
    """The resume test can fail: skipping the restored data position changes the result."""
    cfg = tiny_config(train={"max_steps": 6, "ckpt_every": 100})
    straight = _trainer(cfg, tmp_path / "a")
    straight.fit()
    first = _trainer(cfg, tmp_path / "b")
    first.fit(stop_at=3)
    resumed = _trainer(cfg, tmp_path / "b")
    resumed.load(tmp_path / "b")
    resumed.batch_in_epoch = 0  # forget where in the epoch we were
    resumed.ckpts.root = tmp_path / "c"  # fit() would refuse a folder with checkpoints and no resume
    resumed.fit()
    a, b = _weights(straight), _weights(resumed)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_existing_run_needs_resume(tmp_path):
    cfg = tiny_config(train={"max_steps": 2})
    _trainer(cfg, tmp_path / "run").fit()
    with pytest.raises(EngineError, match="already holds checkpoints; pass --resume"):
        _trainer(cfg, tmp_path / "run").fit()
    with pytest.raises(EngineError, match="checkpoint not found: .*nowhere"):
        _trainer(cfg, tmp_path / "other").fit(resume=tmp_path / "nowhere")
    with pytest.raises(EngineError, match="no complete checkpoint"):
        _trainer(cfg, tmp_path / "other").fit(resume=True)  # a run folder with no checkpoint yet


def test_nan_loss_skips_the_step_then_aborts(tmp_path, caplog):
    # every sample is NaN: every step is bad
    ds_nan = TinyDataset(6, nan_tokens=tuple(f"tok{i:04d}" for i in range(6)))
    cfg = tiny_config(train={"max_steps": 10, "max_bad_steps": 3, "ckpt_every": 1})
    t = Trainer(cfg, build_tiny(), ds_nan, None, None, tmp_path / "run")
    w0 = _weights(t)
    with pytest.raises(TrainingDiverged, match=r"3 steps in a row had a non-finite loss.*train|lower optim.lr"):
        t.fit()
    assert t.step == 2 and t.skipped == 3  # the third bad step in a row aborts (before the step counter moves)
    assert all(torch.equal(w0[k], v) for k, v in _weights(t).items()), "a skipped step changed the weights"
    assert "non-finite loss" in caplog.text and "step skipped" in caplog.text
    assert (tmp_path / "run" / "checkpoints" / "step_00000002").is_dir()


def test_isolated_nan_batches_are_skipped_and_training_continues(tmp_path):
    ds = TinyDataset(8, nan_tokens=("tok0003",))
    cfg = tiny_config(train={"max_steps": 8, "max_bad_steps": 2, "ckpt_every": 100})
    t = Trainer(cfg, build_tiny(), ds, None, None, tmp_path / "run")
    res = t.fit()
    assert res.step == 8 and res.skipped_steps == 2  # the NaN sample is in one batch per epoch, 2 epochs
    assert all(torch.isfinite(v).all() for v in t.module.state_dict().values())


def test_grad_accumulation_matches_a_bigger_batch(tmp_path):
    grads = []
    for bs, accum in ((4, 1), (2, 2), (1, 4)):
        cfg = tiny_config(data={"batch_size": bs}, train={"grad_accum": accum, "max_steps": 1})
        t = Trainer(cfg, build_tiny(dropout=0.0), TinyDataset(8), None, None, tmp_path / f"run{bs}")
        t.fit()
        grads.append({n: p.grad.clone() for n, p in t.module.named_parameters()})
    for g in grads[1:]:
        for n in g:
            torch.testing.assert_close(g[n], grads[0][n], rtol=1e-5, atol=1e-7)


def test_bf16_autocast_on_cpu_trains(tmp_path):
    """bf16 autocast reaches the model's layers while weights stay float32 (``amp_allow_emulated`` so that it runs on
    any CPU: the tiny model is cheap even where bf16 is emulated)."""
    cfg = tiny_config(train={"amp": "bf16", "amp_allow_emulated": True, "max_steps": 4})
    t = _trainer(cfg, tmp_path / "run")
    seen = []
    t.module.head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    res = t.fit()
    assert res.skipped_steps == 0 and torch.bfloat16 in seen
    assert all(p.dtype == torch.float32 for p in t.module.parameters())


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_half_precision_on_a_cpu_follows_its_bf16_support(tmp_path, caplog, monkeypatch, amp, native):
    """On a CPU with native bfloat16, fp16 falls back to bf16 and bf16 runs; without it both stay float32 (bf16 is
    ~20x slower there) with one log line saying why, and the decision is recorded in the run's metrics.json. Catches
    a silent fallback to an emulated bf16 and a decision that is made but not recorded."""
    import logging

    monkeypatch.setattr("bevbridge.engine.amp.cpu_has_native_bf16", lambda: native)
    caplog.set_level(logging.INFO, logger="bevbridge.engine.amp")
    cfg = tiny_config(train={"amp": amp, "max_steps": 2}, eval={"every_steps": 2})
    t = _trainer(cfg, tmp_path / "run")
    want = "bf16" if native else "none"
    assert t.precision.mode == want and t.precision.scaler is None
    amp_lines = [r for r in caplog.records if r.name == "bevbridge.engine.amp"]
    if native and amp == "bf16":
        assert not amp_lines
    else:
        assert len(amp_lines) == 1 and f"train.amp={amp}" in amp_lines[0].getMessage()
        assert ("no native bfloat16" in amp_lines[0].getMessage()) == (not native)
    t.fit()
    record = json.loads((tmp_path / "run" / "eval" / "step_00000002" / "metrics.json").read_text())
    assert record["amp"] == want and record["amp_requested"] == amp


def test_native_modes_say_what_the_device_runs(monkeypatch):
    """``Precision.native_modes``: what test_configs parametrises on. Catches bf16 offered on a CPU that emulates
    it, and fp16 offered on a CPU (autocast fp16 there is not a training mode we support)."""
    from bevbridge.engine.amp import Precision

    for native, want in ((True, ("none", "bf16")), (False, ("none",))):
        monkeypatch.setattr("bevbridge.engine.amp.cpu_has_native_bf16", lambda native=native: native)
        assert Precision.native_modes("cpu") == want
        for mode in want:  # a native mode runs as asked
            assert Precision(mode, torch.device("cpu")).mode == mode


def test_model_scalars_and_losses_reach_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    t = _trainer(tiny_config(train={"max_steps": 4}, optim={"lr_mult": {"image_backbone.": 0.1}}), tmp_path / "run")
    t.fit()
    t.run_log.close()
    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("train/loss", "train/loss_reg", "train/loss_gate", "train/mae", "train/lr", "train/lr_image_backbone.",
                "train/grad_norm", "train/samples_per_s", "model/gate", "eval/tiny/mse"):
        assert tag in tags, (tag, sorted(tags))
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 4]


def test_too_small_training_set_is_a_clear_error(tmp_path):
    with pytest.raises(EngineError, match="fewer than one batch per process"):
        Trainer(tiny_config(data={"batch_size": 4}), build_tiny(), TinyDataset(3), None, None, tmp_path)


class _EvenOnly(torch.utils.data.Sampler):
    """A dataset-provided sampler (as the data layer's CBGS one will be): only even indices, epoch-dependent order."""

    def __init__(self, n, seed):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        evens = torch.arange(0, self.n, 2)
        return iter(evens[torch.randperm(len(evens), generator=g)].tolist())

    def __len__(self):
        return (self.n + 1) // 2


class _SampledDataset(TinyDataset):
    def __init__(self, n):
        super().__init__(n)
        self.seen = []

    def make_sampler(self, num_replicas, rank, seed, shuffle):
        assert (num_replicas, rank, shuffle) == (1, 0, True)
        return _EvenOnly(len(self), seed)

    def __getitem__(self, i):
        self.seen.append(i)
        return super().__getitem__(i)


def test_a_dataset_provided_sampler_is_used(tmp_path):
    ds = _SampledDataset(8)
    Trainer(tiny_config(train={"max_steps": 6}), build_tiny(), ds, None, None, tmp_path).fit()
    assert len(ds.seen) == 12 and set(ds.seen) == {0, 2, 4, 6}  # 3 epochs of the 4 even samples


def test_the_number_of_workers_does_not_change_training(tmp_path):
    """Augmentation is seeded per (seed, epoch, sample): 0 or 2 loader workers train to the same weights."""
    runs = []
    for workers in (0, 2):
        cfg = tiny_config(data={"num_workers": workers}, train={"max_steps": 6, "ckpt_every": 100})
        t = Trainer(cfg, build_tiny(), TinyDataset(10, noise=0.5), None, None, tmp_path / f"w{workers}")
        t.fit()
        runs.append(_weights(t))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_max_epochs_sets_the_schedule_length_from_the_loader(tmp_path):
    cfg = tiny_config(data={"batch_size": 2}, train={"max_epochs": 3, "grad_accum": 2, "ckpt_every": 100})
    t = _trainer(cfg, tmp_path / "run", n_train=10)  # 10 samples / batch 2 = 5 batches -> 2 optimizer steps
    assert cfg.train.max_steps == 3 * 2 and t.schedule.total_steps == 6
    assert t.fit().step == 6
    assert "max_steps: 6" in (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(EngineError, match="train.max_epochs"):
        _trainer(tiny_config(data={"batch_size": 2}, train={"max_epochs": 1, "grad_accum": 8}), tmp_path / "r2",
                 n_train=10)
