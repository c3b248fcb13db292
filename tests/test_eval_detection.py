"""`bevbridge eval-detections` and the devkit DetectionEval wrapper."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_cli import bevbridge

from bevbridge.data.batch import ATTRIBUTE_NAMES, DETECTION_CLASSES
from bevbridge.eval.detection import evaluate_detections, split_sample_tokens
from bevbridge.eval.detection_export import DetectionResults
from bevbridge.geometry import pose_matrix


def test_eval_detections_missing_results_file_is_one_clear_line(tmp_path):
    r = bevbridge("eval-detections", "--dataroot", str(tmp_path), "--version", "v1.0-mini", "--split", "mini_val",
                  "--results", str(tmp_path / "missing.json"))
    assert r.returncode == 1
    expected = f"bevbridge eval-detections: results file not found: {tmp_path}/missing.json"
    assert r.stderr.strip().splitlines() == [expected]


def test_eval_detections_missing_tables_are_named(tmp_path):
    results = tmp_path / "r.json"
    results.write_text('{"meta": {}, "results": {}}')
    r = bevbridge("eval-detections", "--dataroot", str(tmp_path), "--version", "v1.0-mini", "--split", "mini_val",
                  "--results", str(results))
    assert r.returncode == 1 and f"{tmp_path}/v1.0-mini is not a folder" in r.stderr


# ------------------------------------------------------------------------------------ end to end on the synthetic world
def _gt_as_ego_predictions(nusc, token: str, yaw_offset: float = 0.0, shift: float = 0.0):
    """The devkit's GT boxes of one sample, moved to the key ego frame with the devkit's own Box transforms, as our
    ego-frame arrays (boxes [n, 9], labels, GT attribute indices) plus the sample's ego2global.

    Boxes the devkit drops from the GT (no lidar or radar point) are left out: as predictions they would be false
    positives. ``shift`` moves each box along its heading, ``yaw_offset`` turns it (to check the TP errors)."""
    from nuscenes.eval.detection.utils import category_to_detection_name
    from pyquaternion import Quaternion

    sample = nusc.get("sample", token)
    pose = nusc.get("ego_pose", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])
    q_pose = Quaternion(pose["rotation"])
    rows, labels, attrs = [], [], []
    for ann_token in sample["anns"]:
        ann = nusc.get("sample_annotation", ann_token)
        name = category_to_detection_name(ann["category_name"])
        if name is None or ann["num_lidar_pts"] + ann["num_radar_pts"] == 0:
            continue
        box = nusc.get_box(ann_token)
        box.velocity = nusc.box_velocity(ann_token)
        box.translate(-np.array(pose["translation"]))
        box.rotate(q_pose.inverse)
        yaw = box.orientation.yaw_pitch_roll[0]
        w, l, h = box.wlh  # noqa: E741
        centre = box.center + shift * np.array([np.cos(yaw), np.sin(yaw), 0.0])
        rows.append([*centre, l, w, h, yaw + yaw_offset, *np.nan_to_num(box.velocity[:2])])
        labels.append(DETECTION_CLASSES.index(name))
        attr = nusc.get("attribute", ann["attribute_tokens"][0])["name"] if ann["attribute_tokens"] else ""
        attrs.append(ATTRIBUTE_NAMES.index(attr) if attr else -1)
    ego2global = pose_matrix(np.array(pose["translation"]), np.array(pose["rotation"]))
    return np.array(rows).reshape(-1, 9), np.array(labels, dtype=np.int64), np.array(attrs, dtype=np.int64), ego2global


def _export(nusc, tokens, path, **perturb) -> dict[str, int]:
    res, counts = DetectionResults(), dict.fromkeys(DETECTION_CLASSES, 0)
    for t in tokens:
        boxes, labels, attrs, ego2global = _gt_as_ego_predictions(nusc, t, **perturb)
        res.add(t, torch.from_numpy(boxes).float(), torch.ones(len(boxes)), torch.from_numpy(labels),
                torch.from_numpy(ego2global), attrs)
        for lab in labels:
            counts[DETECTION_CLASSES[lab]] += 1
    res.write(path, tokens)
    return counts


def test_gt_boxes_as_predictions_score_full_marks(synth_world, tmp_path):
    nusc = synth_world.nusc
    tokens = split_sample_tokens(nusc, synth_world.val_split)
    val_scenes = synth_world.split_scenes(synth_world.val_split)
    assert len(tokens) == synth_world.params["samples_per_scene"] * len(val_scenes)
    counts = _export(nusc, tokens, tmp_path / "gt.json")
    assert all(n > 0 for n in counts.values()), counts  # every class is scored, so mAP covers all ten

    out = tmp_path / "metrics.json"
    r = bevbridge("eval-detections", "--dataroot", str(synth_world.dataroot), "--version", synth_world.version,
                  "--split", synth_world.val_split, "--results", str(tmp_path / "gt.json"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    m = json.loads(out.read_text())
    assert m["mAP"] >= 0.99, r.stdout
    assert m["NDS"] >= 0.99, r.stdout
    for short in ("mATE", "mASE", "mAOE", "mAVE", "mAAE"):
        assert m[short] < 0.01, (short, r.stdout)
    assert all(m[f"AP/{c}"] >= 0.99 for c in DETECTION_CLASSES), r.stdout
    assert "mAP   0.99" in r.stdout or "mAP   1.0000" in r.stdout  # the printed table
    assert f"({len(tokens)} samples)" in r.stdout

    # the same boxes moved 0.3 m along their heading and turned by 0.2 rad: still found at every distance threshold
    # (0.5, 1, 2, 4 m), and the errors show up where they belong
    _export(nusc, tokens, tmp_path / "moved.json", shift=0.3, yaw_offset=0.2)
    moved = evaluate_detections(tmp_path / "moved.json", nusc=nusc, split=synth_world.val_split)
    assert moved["mAP"] >= 0.99
    assert moved["mATE"] == pytest.approx(0.3, abs=0.01) and moved["mAOE"] == pytest.approx(0.2, abs=0.01)
    assert moved["mASE"] < 0.01 and moved["mAVE"] < 0.01
    assert moved["NDS"] < m["NDS"] - 0.03


def test_split_resolution_on_the_synthetic_world(synth_world, tmp_path):
    nusc = synth_world.nusc
    train = split_sample_tokens(nusc, synth_world.train_split)
    val = split_sample_tokens(nusc, synth_world.val_split)
    assert not set(train) & set(val) and len(train) + len(val) == len(nusc.sample)
    with pytest.raises(ValueError, match="unknown split 'nope'.*splits.json"):
        split_sample_tokens(nusc, "nope")
    with pytest.raises(ValueError, match="'val' is a predefined nuScenes split that needs a version ending in "
                                         "'trainval'"):
        split_sample_tokens(nusc, "val")
    # a results file missing one sample: the CLI says how many and names one
    path = tmp_path / "partial.json"
    res = DetectionResults()
    for t in val[1:]:
        res.add(t, np.zeros((0, 9)), [], [], np.eye(4))
    res.write(path)
    r = bevbridge("eval-detections", "--dataroot", str(synth_world.dataroot), "--version", synth_world.version,
                  "--split", synth_world.val_split, "--results", str(path))
    assert r.returncode == 1
    assert f"1 of the split's {len(val)} sample tokens are missing" in r.stderr and val[0] in r.stderr
