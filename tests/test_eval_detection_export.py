"""Detection export (ego -> devkit global JSON) and results-file checks; no dataset needed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nuscenes.utils.data_classes import Box
from pyquaternion import Quaternion

from bevbridge.data.batch import ATTRIBUTE_NAMES, DETECTION_CLASSES
from bevbridge.eval.detection import load_results
from bevbridge.eval.detection_export import (
    SPEED_THRESHOLD,
    DetectionResults,
    boxes_to_devkit,
    default_attribute,
    devkit_to_boxes,
)
from bevbridge.geometry import make_transform, rotation_z


def _pose(rng: np.random.Generator) -> np.ndarray:
    """A yaw-only ego pose far from the origin, like nuScenes' (x, y in the hundreds of metres)."""
    return make_transform(rotation_z(np.array(rng.uniform(-math.pi, math.pi))), rng.uniform(-2000, 2000, 3))


def _boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    b = np.zeros((n, 9))
    b[:, 0:3] = rng.uniform(-50, 50, (n, 3))
    b[:, 3:6] = rng.uniform(0.3, 12, (n, 3))
    b[:, 6] = rng.uniform(-math.pi, math.pi, n)
    b[:, 7:9] = rng.uniform(-15, 15, (n, 2))
    return b


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 30))
def test_export_round_trip(seed, n):
    rng = np.random.default_rng(seed)
    T, boxes = _pose(rng), _boxes(rng, n)
    scores, labels = rng.random(n), rng.integers(0, 10, n)
    records = boxes_to_devkit("tok", torch.from_numpy(boxes).float(), torch.from_numpy(scores),
                              torch.from_numpy(labels), torch.from_numpy(T))
    assert len(records) == n
    back = devkit_to_boxes(records, T)
    order = np.argsort(-scores, kind="stable")
    d = back["boxes"] - boxes[order]
    d[:, 6] = (d[:, 6] + math.pi) % (2 * math.pi) - math.pi
    np.testing.assert_allclose(d, 0, atol=1e-3)  # float32 inputs
    np.testing.assert_allclose(back["scores"], scores[order])
    np.testing.assert_array_equal(back["labels"], labels[order])
    json.dumps(records)  # plain JSON types only


def test_export_agrees_with_the_devkits_box_transform():
    """The devkit moves an ego-frame Box to global with rotate(q) then translate(t): the same numbers."""
    rng = np.random.default_rng(3)
    T, boxes = _pose(rng), _boxes(rng, 6)
    rec = boxes_to_devkit("tok", boxes, np.linspace(1, 0.5, 6), np.arange(6), T)
    q_pose = Quaternion(matrix=T[:3, :3])
    for b, r in zip(boxes, rec):
        box = Box(b[:3], [b[4], b[3], b[5]], Quaternion(axis=[0, 0, 1], angle=b[6]), velocity=(b[7], b[8], 0.0))
        box.rotate(q_pose)
        box.translate(T[:3, 3])
        np.testing.assert_allclose(r["translation"], box.center, atol=1e-9)
        np.testing.assert_allclose(r["size"], box.wlh, atol=1e-12)
        np.testing.assert_allclose(r["velocity"], box.velocity[:2], atol=1e-9)
        dyaw = Quaternion(r["rotation"]).yaw_pitch_roll[0] - box.orientation.yaw_pitch_roll[0]
        assert abs((dyaw + math.pi) % (2 * math.pi) - math.pi) < 1e-9
        assert len(r["rotation"]) == 4 and r["rotation"][1:3] == [0.0, 0.0]


def test_attribute_rules():
    fast, slow = SPEED_THRESHOLD + 0.01, SPEED_THRESHOLD - 0.01
    expected = {
        "car": ("vehicle.moving", "vehicle.parked"), "truck": ("vehicle.moving", "vehicle.parked"),
        "trailer": ("vehicle.moving", "vehicle.parked"), "construction_vehicle": ("vehicle.moving", "vehicle.parked"),
        "bus": ("vehicle.moving", "vehicle.stopped"), "bicycle": ("cycle.with_rider", "cycle.without_rider"),
        "motorcycle": ("cycle.with_rider", "cycle.without_rider"),
        "pedestrian": ("pedestrian.moving", "pedestrian.standing"), "barrier": ("", ""), "traffic_cone": ("", ""),
    }
    assert set(expected) == set(DETECTION_CLASSES)
    for name, (moving, still) in expected.items():
        assert default_attribute(name, fast) == moving and default_attribute(name, slow) == still, name
    with pytest.raises(ValueError, match="unknown detection class"):
        default_attribute("van", 1.0)
    # through the exporter: speed is measured on the velocity (frame-independent), explicit attrs win
    T = np.eye(4)
    b = np.array([[0, 0, 0, 4, 2, 1.5, 0, 0.3, 0.0], [5, 0, 0, 4, 2, 1.5, 0, 0.1, 0.1]])
    rec = boxes_to_devkit("tok", b, [0.9, 0.8], [0, 0], T)
    assert [r["attribute_name"] for r in rec] == ["vehicle.moving", "vehicle.parked"]
    rec = boxes_to_devkit("tok", b, [0.9, 0.8], [0, 0], T, attrs=[ATTRIBUTE_NAMES.index("vehicle.stopped"), -1])
    assert [r["attribute_name"] for r in rec] == ["vehicle.stopped", "vehicle.parked"]


def test_top_500_by_score():
    rng = np.random.default_rng(0)
    scores = rng.random(700)
    rec = boxes_to_devkit("tok", _boxes(rng, 700), scores, np.zeros(700, dtype=np.int64), np.eye(4))
    kept = np.array([r["detection_score"] for r in rec])
    assert len(rec) == 500 and (np.diff(kept) <= 0).all()
    assert kept.min() == pytest.approx(np.sort(scores)[-500])


def test_bad_inputs_fail_with_the_sample_named():
    b = np.array([[0, 0, 0, 4, 2, 1.5, 0, 0, 0]], dtype=float)
    with pytest.raises(ValueError, match="sample s1: boxes must be"):
        boxes_to_devkit("s1", b[:, :7], [1.0], [0], np.eye(4))
    with pytest.raises(ValueError, match="labels must index"):
        boxes_to_devkit("s1", b, [1.0], [10], np.eye(4))
    with pytest.raises(ValueError, match="finite"):
        boxes_to_devkit("s1", b, [math.nan], [0], np.eye(4))
    with pytest.raises(ValueError, match="> 0"):
        boxes_to_devkit("s1", b * [1, 1, 1, 0, 1, 1, 1, 1, 1], [1.0], [0], np.eye(4))
    assert boxes_to_devkit("s1", np.zeros((0, 9)), [], [], np.eye(4)) == []


def test_results_dedupe_merge_and_atomic_write(tmp_path):
    rng = np.random.default_rng(1)
    b, T = _boxes(rng, 3), _pose(rng)
    a = DetectionResults()
    a.add("s1", b, [0.5, 0.7, 0.6], [0, 1, 2], T)
    a.add("s1", b, [0.5, 0.7, 0.6], [0, 1, 2], T)  # e.g. padded DistributedSampler: identical -> kept once
    other = DetectionResults()
    other.add("s2", np.zeros((0, 9)), [], [], T)
    other.add("s1", b + 1e-7, [0.5, 0.7, 0.6], [0, 1, 2], T)  # the same sample on another GPU, float noise
    a.merge(other).merge(dict(other.results))
    assert sorted(a.results) == ["s1", "s2"] and len(a.results["s1"]) == 3 and a.results["s2"] == []
    with pytest.raises(ValueError, match="s1 was submitted twice with different predictions"):
        a.add("s1", b, [0.5, 0.7, 0.6], [0, 1, 3], T)

    path = tmp_path / "results.json"
    with pytest.raises(ValueError, match=r"1 of the split's 3 samples .* \(e\.g\. s3\)"):
        a.write(path, ["s1", "s2", "s3"])
    assert not path.exists() and not list(tmp_path.iterdir())  # nothing half-written
    with pytest.raises(ValueError, match=r"not in the split \(e\.g\. s2\)"):
        a.write(path, ["s1"])
    a.write(path, ["s2", "s1"], meta={"use_radar": True})
    data = json.loads(path.read_text())
    assert list(data["results"]) == ["s2", "s1"] and data["meta"]["use_radar"] is True
    assert load_results(path, ["s1", "s2"])["results"]["s1"] == a.results["s1"]


def _write(tmp_path, results, name="r.json"):
    p = tmp_path / name
    p.write_text(json.dumps({"meta": {"use_camera": True}, "results": results}))
    return p


def test_load_results_errors_are_specific(tmp_path):
    box = boxes_to_devkit("s1", np.array([[0, 0, 0, 4, 2, 1.5, 0, 0, 0]]), [0.9], [0], np.eye(4))[0]
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_results(tmp_path / "nope.json", ["s1"])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_results(bad, ["s1"])
    with pytest.raises(ValueError, match=r"2 of the split's 3 sample tokens are missing .*e\.g\. s2"):
        load_results(_write(tmp_path, {"s1": [box]}), ["s1", "s2", "s3"])
    with pytest.raises(ValueError, match="not in the split"):
        load_results(_write(tmp_path, {"s1": [box], "zz": []}), ["s1"])
    with pytest.raises(ValueError, match="'van' is not a nuScenes detection class"):
        load_results(_write(tmp_path, {"s1": [{**box, "detection_name": "van"}]}), ["s1"])
    with pytest.raises(ValueError, match="'vehicle.flying' is not a nuScenes attribute"):
        load_results(_write(tmp_path, {"s1": [{**box, "attribute_name": "vehicle.flying"}]}), ["s1"])
    with pytest.raises(ValueError, match="rotation must be a list of 4 numbers"):
        load_results(_write(tmp_path, {"s1": [{**box, "rotation": [1, 0, 0]}]}), ["s1"])
    with pytest.raises(ValueError, match="at most 500"):
        load_results(_write(tmp_path, {"s1": [box] * 501}), ["s1"])
    with pytest.raises(ValueError, match="'meta'"):
        bad.write_text(json.dumps({"results": {}}))
        load_results(bad, ["s1"])
