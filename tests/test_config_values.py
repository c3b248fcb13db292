"""Config values that load but would break a run later are refused at load time with the loader's one-line error:
non-finite floats, reversed ranges, zero sizes, unsafe run names, a best metric no evaluator produces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bevbridge.config import ConfigError, load_config
from bevbridge.engine import EngineError, Trainer
from bevbridge.engine.best import check_best_metric
from bevbridge.eval.evaluators import CaptioningEvaluator, DetectionEvaluator, SegmentationEvaluator
from bevbridge.models.ctab.config import CTAB_MAP_CLASSES
from tests.engine_tiny import MSEEvaluator, TinyDataset, build_tiny, tiny_config


@pytest.fixture
def cfg_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\nmodel: {kind: ctab}\n")
    return p


@pytest.mark.parametrize("override, expected", [
    ("optim.grad_clip=nan", r"config key 'optim.grad_clip' \(from override 'optim.grad_clip=nan'\): expected a finite "
                            r"float, got nan"),
    ("optim.lr=inf", r"'optim.lr' .*expected a finite float, got inf"),
    ("schedule.min_lr_ratio=-inf", r"'schedule.min_lr_ratio' .*finite float, got -inf"),
    ("model.huw_max_log_sigma=NaN", r"'model.huw_max_log_sigma' .*finite float"),
    ("optim.betas=[0.9, .nan]", r"'optim.betas\[1\]' .*finite float"),
    ("optim.lr_mult={image_backbone.: .inf}", r"'optim.lr_mult.image_backbone.' .*finite float"),
    ("data.image_aug.rot_range=[5, -5]",
     r"'data.image_aug.rot_range' .*\(low, high\) with low <= high, got \(5.0, -5.0\)"),
    ("data.image_aug.resize_range=[0.1, -0.1]", r"'data.image_aug.resize_range' .*low <= high"),
    ("data.image_aug.crop_h_range=[-0.1, 0.0]", r"'data.image_aug.crop_h_range' .*at or above 0.0"),
    ("data.bev_aug.scale_range=[1.05, 0.95]", r"'data.bev_aug.scale_range' .*low <= high"),
    ("data.bev_aug.scale_range=[0.0, 1.0]", r"'data.bev_aug.scale_range' .*must be > 0"),
    ("data.bev_aug.flip_x_prob=1.5", r"'data.bev_aug.flip_x_prob' .*\[0, 1\]"),
    ("data.image_size=[0, 704]",
     r"config key 'data.image_size' \(from override .*\): must be positive, got \(0, 704\)"),
    ("model.image.input_size=[256, 0]", r"'model.image.input_size' .*must be positive"),
    ("model.depth.depth_range=[60, 1, 0.5]", r"'model.depth.depth_range' .*low < high, got \(60.0, 1.0\)"),
    ("model.depth.depth_range=[1, 60, 0]", r"'model.depth.depth_range' .*step must be > 0"),
    ("model.depth.z_range=[3, 3]", r"'model.depth.z_range' .*low < high"),
    ("model.radar.z_range=[3, -5]", r"'model.radar.z_range' .*low < high"),
    ("model.head.post_center_range=[61, -61, -10, -61, 61, 10]", r"'model.head.post_center_range' .*each min < max"),
    ("model.seg={out_size: 0}", r"'model.seg.out_size' .*must be positive"),
    ("name=../elsewhere", r"config key 'name' \(from override 'name=../elsewhere'\): must be one plain folder name"),
    ("name=a/b", r"'name' .*one plain folder name"),
    ("name=.hidden", r"'name' .*one plain folder name"),
    ("name=", r"'name' .*one plain folder name"),
    ("eval.best_metric=NDS", r"'eval.best_metric' .*must be <evaluator>/<metric> \(e.g. detection/NDS\)"),
    ("train.max_overflow_steps=0", r"'train.max_overflow_steps' .*>= 1"),
])
def test_bad_values_fail_at_load_with_one_line_naming_the_key(cfg_file, override, expected):
    """Would catch: NaN slipping past `x > 0` checks (grad_clip=nan turns every gradient into NaN after the
    finiteness check), a reversed range sampled by rng.uniform (silently swapped or empty), a zero image size
    reaching a conv, a run name escaping train.out_dir."""
    with pytest.raises(ConfigError, match=expected) as e:
        load_config(cfg_file, [override])
    assert "\n" not in str(e.value)


def test_yaml_nan_and_inf_in_a_file_name_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\noptim:\n  weight_decay: .nan\n")
    with pytest.raises(ConfigError, match=r"'optim.weight_decay' \(from .*c.yaml\): expected a finite float"):
        load_config(p)


def test_every_shipped_config_still_loads():
    """The checks must not refuse a config we ship (a degenerate (0, 0) crop range is allowed, for instance)."""
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))
    assert configs
    for c in configs:
        load_config(c)


# ------------------------------------------------------------------------------------------------ eval.best_metric
def _evaluators():
    return {"detection": DetectionEvaluator("data/synth", "v1.0-mini", "mini_val"),
            "segmentation": SegmentationEvaluator(CTAB_MAP_CLASSES), "captioning": CaptioningEvaluator()}


@pytest.mark.parametrize("name", ["detection/NDS", "detection/AP/car", "detection/mATE", "segmentation/mIoU-7@max",
                                  "segmentation/IoU@0.5/walkway", "captioning/CIDEr@0.5", "captioning/recall@0.25"])
def test_best_metric_names_the_evaluators_produce_are_accepted(name):
    check_best_metric(name, _evaluators())


@pytest.mark.parametrize("name, expected", [
    ("segmentation/mIoU7@max", r"'segmentation/mIoU7@max' is not a metric of eval.evaluators .*did you mean "
                               r"'segmentation/mIoU-7@max'"),
    ("detection/nds", r"did you mean 'detection/NDS'"),
    ("seg/mIoU-7@max", r"names no evaluator slot of eval.evaluators \(detection, segmentation, captioning\)"),
])
def test_an_unknown_best_metric_is_refused_with_the_valid_names(name, expected):
    """Would catch: a misspelt best metric accepted (then only a warning at every evaluation, and no best
    checkpoint is ever kept)."""
    with pytest.raises(EngineError, match=expected) as e:
        check_best_metric(name, _evaluators())
    msg = str(e.value)
    assert "\n" not in msg and "detection/AP/<class>" in msg and "segmentation/mIoU-4@max" in msg
    assert "captioning/BLEU-4@0.25" in msg


def test_mIoU_subsets_are_valid_only_with_their_classes():
    ev = SegmentationEvaluator(("drivable_area", "ped_crossing", "walkway", "vehicle"))
    check_best_metric("segmentation/mIoU-4@max", {"segmentation": ev})
    with pytest.raises(EngineError, match="mIoU-7@max"):
        check_best_metric("segmentation/mIoU-7@max", {"segmentation": ev})


def test_declared_metric_names_are_what_the_evaluators_compute(monkeypatch):
    """Would catch: metric_names drifting from compute() (a valid best metric refused, or a never-produced one
    accepted)."""
    seg = SegmentationEvaluator(CTAB_MAP_CLASSES)
    g = torch.Generator().manual_seed(0)
    seg.meter.update(torch.rand(2, 7, 8, 8, generator=g), torch.rand(2, 7, 8, 8, generator=g) > 0.5)
    assert set(seg.compute()) == set(seg.metric_names())

    import bevbridge.eval.captioning as captioning

    cap = CaptioningEvaluator()
    monkeypatch.setattr(captioning, "score_captions",  # java-free: only the keys matter here
                        lambda refs, cands: {m: np.zeros(len(refs)) for m in captioning.CAPTION_METRICS})
    box = np.array([[0.0, 0, 0, 4, 2, 1.5, 0, 0, 0]])
    cap.meter.update(box, ["a car"], box, ["a car"])
    assert set(cap.compute()) == set(cap.metric_names())


def test_detection_metric_names_are_what_the_devkit_evaluation_returns(synth_world):
    """The detection names against a real devkit evaluation (one box per sample of the synthetic val split)."""
    from bevbridge.eval.detection import split_sample_tokens

    ev = DetectionEvaluator(synth_world.dataroot, synth_world.version, synth_world.val_split)
    for token in split_sample_tokens(ev.nusc, synth_world.val_split):
        ev.results.add(token, torch.tensor([[5.0, 0, 0, 4, 2, 1.5, 0, 0, 0]]), torch.ones(1),
                       torch.zeros(1, dtype=torch.long), torch.eye(4, dtype=torch.float64))
    assert set(ev.compute()) == set(ev.metric_names())


def test_the_trainer_refuses_an_unknown_best_metric_before_the_first_step(tmp_path):
    cfg = tiny_config(eval={"best_metric": "tiny/mae"})
    with pytest.raises(EngineError, match=r"'tiny/mae' is not a metric .*valid: tiny/mse, tiny/count"):
        Trainer(cfg, build_tiny(), TinyDataset(10), TinyDataset(5, start=100), {"tiny": MSEEvaluator()}, tmp_path)
    with pytest.raises(EngineError, match="eval.evaluators is empty"):
        Trainer(tiny_config(eval={"best_metric": "tiny/mse"}), build_tiny(), TinyDataset(10), None, None, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_train_refuses_an_unknown_best_metric_before_opening_the_datasets(monkeypatch, tmp_path, capsys):
    """Would catch: the check placed after the (on trainval, minutes long) dataset opening, or a traceback."""
    from bevbridge import cli
    from bevbridge.engine import build

    monkeypatch.setattr(build, "build_model", lambda cfg, init=True: build_tiny())
    monkeypatch.setattr(build, "build_evaluators", lambda cfg, needs, out_dir=None: {"tiny": MSEEvaluator()})
    monkeypatch.setattr(build, "build_datasets", lambda *a, **k: pytest.fail("datasets opened before the check"))
    config = tmp_path / "tiny.yaml"
    config.write_text("name: tiny\ntrain: {device: cpu}\neval: {best_metric: tiny/MSE}\n")
    assert cli.main(["train", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        "bevbridge train: eval.best_metric 'tiny/MSE' is not a metric of eval.evaluators (tiny) (did you mean "
        "'tiny/mse'?); valid: tiny/mse, tiny/count")
