"""eval.seg_protocol: CTAB's 102.4 m map predictions scored on BEVCar's 100 m / 0.5 m grid at BEVCar's thresholds,
checked against independent float64 computations, and the protocol named in every metrics.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bevbridge import cli
from bevbridge.config import from_dict
from bevbridge.config.schema import ExperimentConfig
from bevbridge.models.ctab.config import CTAB_MAP_CLASSES
from bevbridge.engine import build
from bevbridge.eval.evaluators import SegmentationEvaluator
from bevbridge.eval.seg_protocol import BEVCAR_THRESHOLDS, seg_protocol, to_protocol_grid
from bevbridge.geometry import BEVGrid
from bevbridge.models.contract import DataNeeds
from tests.engine_tiny import TinyDataset, build_tiny

CTAB = BEVGrid.square(51.2, 0.512)  # CTAB's segmentation output: 200x200 over 102.4 m
BEVCAR = BEVGrid(-50.0, 50.0, -50.0, 50.0, 0.5)


def test_bevcar_protocol_is_100m_at_half_a_metre_with_its_twelve_thresholds():
    """Would catch: the BEVCar grid or threshold set mistyped (e.g. 0.25..0.75, or 102.4 m kept)."""
    p = seg_protocol("bevcar")
    assert p.grid == BEVCAR and p.grid.shape == (200, 200)
    assert p.thresholds == pytest.approx([0.25 + 0.05 * k for k in range(12)])
    assert seg_protocol("native").grid is None
    with pytest.raises(ValueError, match="eval.seg_protocol must be one of native, bevcar, got 'bevfusion'"):
        seg_protocol("bevfusion")


@pytest.mark.parametrize("x, y", [(20.3, -7.8), (-43.1, 31.9), (0.1, 0.1)])
def test_a_one_hot_cell_lands_in_the_bevcar_cells_at_its_position(x, y):
    """A ground-truth cell at a known metric position on the CTAB grid lands on exactly the BEVCar cells whose
    centres it contains (computed here in float64 from the grid definitions). Would catch: x and y swapped (H is
    along y), an axis flipped, a half-cell offset (cell corners taken for centres), or the 102.4 m extent stretched
    onto 100 m (scaling instead of cropping)."""
    ix, iy = int(np.floor((x + 51.2) / 0.512)), int(np.floor((y + 51.2) / 0.512))
    gt = torch.zeros(1, 1, 200, 200, dtype=torch.uint8)
    gt[0, 0, iy, ix] = 1
    _, g = to_protocol_grid(torch.zeros(1, 1, 200, 200), gt, CTAB, BEVCAR)
    # the BEVCar cells (jx, jy) whose centres -50 + (j + 0.5) * 0.5 fall inside [-51.2 + i * 0.512, + 0.512)
    c = -50.0 + (np.arange(200) + 0.5) * 0.5
    in_x = (c >= -51.2 + ix * 0.512) & (c < -51.2 + (ix + 1) * 0.512)
    in_y = (c >= -51.2 + iy * 0.512) & (c < -51.2 + (iy + 1) * 0.512)
    expected = in_y[:, None] & in_x[None, :]
    assert g.shape == (1, 1, 200, 200) and g.dtype == torch.bool
    assert np.array_equal(g[0, 0].numpy(), expected) and expected.sum() >= 1
    # and the BEVCar cell containing (x, y) itself is among them
    assert g[0, 0, int(np.floor((y + 50) / 0.5)), int(np.floor((x + 50) / 0.5))]


def test_probabilities_are_interpolated_at_the_bevcar_cell_centres():
    """A probability field linear in (x, y) on the CTAB grid, read back at the BEVCar centres, is the same linear
    function of the BEVCar centres (bilinear interpolation is exact on it). Would catch: x/y swapped (the two
    slopes differ), a half-cell or whole-cell shift (0.25 m * slope is far above the tolerance), a flip."""
    def field(xs, ys):
        return 0.5 + 0.004 * xs[None, :] - 0.002 * ys[:, None]

    c_native = -51.2 + (np.arange(200) + 0.5) * 0.512
    probs = torch.from_numpy(field(c_native, c_native)).float()[None, None]
    p, _ = to_protocol_grid(probs, torch.zeros(1, 1, 200, 200), CTAB, BEVCAR)
    c = -50.0 + (np.arange(200) + 0.5) * 0.5
    np.testing.assert_allclose(p[0, 0].double().numpy(), field(c, c), atol=2e-6)


def _reference_ious(probs: np.ndarray, gt: np.ndarray, thresholds) -> np.ndarray:
    """Independent float64 scoring on the BEVCar grid: bilinear probabilities and containing-cell ground truth from
    the CTAB grid written out with numpy, then split-level TP/FP/FN per class and threshold -> IoU [C, T]."""
    B, C = probs.shape[:2]
    c = -50.0 + (np.arange(200) + 0.5) * 0.5
    u = (c + 51.2) / 0.512 - 0.5  # continuous CTAB cell coordinate of each BEVCar centre (same along x and y)
    i0 = np.floor(u).astype(int)
    w1 = u - i0

    def lerp(a, axis):  # linear interpolation along one axis, zero outside
        a = np.moveaxis(a, axis, -1)
        pad = np.concatenate([a, np.zeros_like(a[..., :1])], -1)
        lo, hi = np.where(i0 >= 0, i0, -1), np.where(i0 + 1 < 200, i0 + 1, -1)
        out = pad[..., lo] * (1 - w1) + pad[..., hi] * w1
        return np.moveaxis(out, -1, axis)

    p = lerp(lerp(probs.astype(np.float64), 3), 2)
    k = np.floor((c + 51.2) / 0.512).astype(int)
    g = gt[:, :, k][:, :, :, k].astype(bool)
    ious = np.zeros((C, len(thresholds)))
    for ci in range(C):
        for ti, t in enumerate(thresholds):
            pred = p[:, ci] >= t
            tp = np.sum(pred & g[:, ci])
            fp = np.sum(pred & ~g[:, ci])
            fn = np.sum(~pred & g[:, ci])
            ious[ci, ti] = tp / (tp + fp + fn)
    return ious


def test_iou_at_the_bevcar_thresholds_matches_an_independent_float64_computation():
    """Would catch: the native thresholds (0.35..0.65) kept under the BEVCar protocol, IoU@max taken over the wrong
    set, counts taken on the native grid instead of the 100 m one, or GT and probabilities resampled differently."""
    g = torch.Generator().manual_seed(0)
    classes = ("drivable_area", "ped_crossing", "walkway", "vehicle")
    # smooth-ish fields (a random 25x25 pattern upsampled) so the 0.5 m resampling matters at region borders
    probs = torch.nn.functional.interpolate(torch.rand(2, 4, 25, 25, generator=g), size=(200, 200),
                                            mode="bilinear", align_corners=False)
    gt = (torch.nn.functional.interpolate(torch.rand(2, 4, 25, 25, generator=g), size=(200, 200), mode="nearest")
          > 0.5).to(torch.uint8)
    ev = SegmentationEvaluator(classes, CTAB, "bevcar")
    ev.meter.reset()
    ev.update([type("P", (), {"seg_probs": probs[i]})() for i in range(2)], type("B", (), {"gt_masks": gt})())
    m = ev.compute()
    ref = _reference_ious(probs.numpy(), gt.numpy(), BEVCAR_THRESHOLDS)
    # a float32 probability within ~1e-7 of a threshold may fall on the other side: one cell moves an IoU by < 1e-4
    for ci, c in enumerate(classes):
        for ti, t in enumerate(BEVCAR_THRESHOLDS):
            assert m[f"IoU@{t:g}/{c}"] == pytest.approx(ref[ci, ti], abs=2e-4), (c, t)
        assert m[f"IoU@max/{c}"] == pytest.approx(ref[ci].max(), abs=2e-4)
        assert m[f"threshold@max/{c}"] in BEVCAR_THRESHOLDS
    assert m["mIoU-4@max"] == pytest.approx(ref.max(1).mean(), abs=2e-4)
    assert "IoU@0.25/walkway" in m and "IoU@0.8/walkway" in m and set(m) == set(ev.metric_names())
    # the same predictions on the native protocol: another grid and another threshold set, so other numbers
    native = SegmentationEvaluator(classes, CTAB, "native")
    native.meter.update(probs, gt)
    assert "IoU@0.25/walkway" not in native.compute()


def test_protocol_record_names_the_grid_and_thresholds():
    """Would catch: metrics.json recording the model's grid under the BEVCar protocol (or nothing)."""
    bevcar = SegmentationEvaluator(CTAB_MAP_CLASSES, CTAB, "bevcar").protocol()
    assert bevcar["name"] == "bevcar" and bevcar["grid"] == {"x_range": [-50.0, 50.0], "y_range": [-50.0, 50.0],
                                                             "res": 0.5, "shape": [200, 200]}
    assert bevcar["thresholds"] == list(BEVCAR_THRESHOLDS) and bevcar["native_grid"]["shape"] == [200, 200]
    assert bevcar["native_grid"]["x_range"] == [-51.2, 51.2] and bevcar["resampling"] != "none"
    native = SegmentationEvaluator(CTAB_MAP_CLASSES, CTAB).protocol()
    assert native["name"] == "native" and native["grid"] == native["native_grid"] and native["resampling"] == "none"
    assert native["thresholds"] == pytest.approx([0.35, 0.40, 0.45, 0.50, 0.55, 0.60, 0.65])
    with pytest.raises(ValueError, match="needs the model's map grid"):
        SegmentationEvaluator(CTAB_MAP_CLASSES, None, "bevcar")


def test_build_evaluators_passes_the_configured_protocol_and_the_models_grid():
    """Would catch: eval.seg_protocol read but not handed to the evaluator (always native)."""
    cfg = from_dict(ExperimentConfig, {"eval": {"evaluators": ["segmentation"], "seg_protocol": "bevcar"}})
    needs = DataNeeds(images=False, map_grid=CTAB, map_classes=CTAB_MAP_CLASSES, tasks=("segmentation",))
    ev = build.build_evaluators(cfg, needs)["segmentation"]
    assert ev.eval_grid == BEVCAR and ev.native_grid == CTAB and ev.meter.thresholds == BEVCAR_THRESHOLDS


class _FixedSegEvaluator(SegmentationEvaluator):
    """The real evaluator fed one fixed CTAB-grid prediction per sample (the tiny model predicts no maps)."""

    def update(self, preds, batch) -> None:
        g = torch.Generator().manual_seed(len(preds))
        probs = torch.rand(len(preds), 2, 200, 200, generator=g)
        gt = type("B", (), {"gt_masks": (torch.rand(len(preds), 2, 200, 200, generator=g) > 0.5)})()
        super().update([type("P", (), {"seg_probs": p})() for p in probs], gt)


@pytest.mark.parametrize("protocol", ["native", "bevcar"])
def test_every_metrics_json_names_the_segmentation_protocol(monkeypatch, tmp_path, protocol):
    """`bevbridge train` (the trainer's evaluation) and `bevbridge eval` both record the protocol. Would catch: the
    record dropped from one of the writers, or the config's choice not reaching it."""
    monkeypatch.setattr(build, "build_model", lambda cfg, init=True: build_tiny(cfg.train.seed))
    monkeypatch.setattr(build, "build_datasets",
                        lambda data, needs, seed=0, train=True: (TinyDataset(6), TinyDataset(3, start=100)))
    monkeypatch.setattr(build, "build_evaluators", lambda cfg, needs, out_dir=None: {
        "segmentation": _FixedSegEvaluator(("walkway", "vehicle"), CTAB, cfg.eval.seg_protocol)})
    config = tmp_path / "tiny.yaml"
    config.write_text("name: tiny\ndata: {batch_size: 2, num_workers: 0}\nschedule: {warmup_steps: 1}\n"
                      "train: {max_steps: 2, device: cpu, log_every: 1, ckpt_every: 2}\n")
    run = tmp_path / "run"
    assert cli.main(["train", str(config), "--out", str(run), f"eval.seg_protocol={protocol}"]) == 0
    assert cli.main(["eval", str(config), "--ckpt", str(run), "--out", str(tmp_path / "ev"),
                     f"eval.seg_protocol={protocol}"]) == 0
    shape = [200, 200]
    for path in (run / "eval" / "step_00000002" / "metrics.json", tmp_path / "ev" / "metrics.json"):
        record = json.loads(path.read_text())
        p = record["protocols"]["segmentation"]
        assert p["name"] == protocol and p["grid"]["shape"] == shape, path
        assert p["grid"]["res"] == (0.5 if protocol == "bevcar" else 0.512)
        t = p["thresholds"]
        assert len(t) == (12 if protocol == "bevcar" else 7)
        assert f"segmentation/IoU@{t[0]:g}/walkway" in record["metrics"]
