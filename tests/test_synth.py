"""The synthetic world: the official devkit loads it unmodified, and cameras, radar, LiDAR, map and annotations agree.

Everything geometric is checked through the devkit's own tables (calibrated_sensor, ego_pose, sample_annotation), so
these tests catch any disagreement between what is written and what is rendered.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from nuscenes.eval.detection.config import config_factory
from nuscenes.eval.detection.evaluate import DetectionEval
from nuscenes.eval.detection.utils import category_to_detection_name
from nuscenes.map_expansion.map_api import NuScenesMap
from nuscenes.utils.data_classes import LidarPointCloud, RadarPointCloud

from bevbridge.data import synth
from bevbridge.data.batch import DETECTION_CLASSES
from bevbridge.geometry import invert_transform, pose_matrix, quaternion_to_yaw, transform_points

CAMS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT")
RADARS = ("RADAR_FRONT", "RADAR_FRONT_LEFT", "RADAR_FRONT_RIGHT", "RADAR_BACK_LEFT", "RADAR_BACK_RIGHT")


# ---------------------------------------------------------------------------------------------------------- helpers
def sensor2global(nusc, sd_token: str) -> np.ndarray:
    sd = nusc.get("sample_data", sd_token)
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    pose = nusc.get("ego_pose", sd["ego_pose_token"])
    return pose_matrix(np.array(pose["translation"]), np.array(pose["rotation"])) @ \
        pose_matrix(np.array(cs["translation"]), np.array(cs["rotation"]))


def annotation_boxes(nusc, sample) -> tuple[np.ndarray, list[dict]]:
    """Global boxes ``[n, 7] = (x, y, z, l, w, h, yaw)`` of a sample's annotations (devkit size is w, l, h)."""
    anns = [nusc.get("sample_annotation", t) for t in sample["anns"]]
    boxes = np.array([[*a["translation"], a["size"][1], a["size"][0], a["size"][2],
                       float(quaternion_to_yaw(np.array(a["rotation"])))] for a in anns]).reshape(-1, 7)
    return boxes, anns


def box_frame(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Points ``[N, 3]`` in every box's frame: ``[N, M, 3]``."""
    rel = points[:, None, :3] - boxes[None, :, :3]
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    return np.stack([c * rel[..., 0] + s * rel[..., 1], -s * rel[..., 0] + c * rel[..., 1], rel[..., 2]], -1)


def surface_distance(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``[N, M]`` distance from each point to each box's surface (0 on a face)."""
    q = np.abs(box_frame(points, boxes)) - boxes[None, :, 3:6] / 2
    outside = np.linalg.norm(np.maximum(q, 0), axis=-1)
    inside = np.minimum(q.max(-1), 0)
    return np.abs(outside + inside)


def samples_of(nusc, scene_names) -> list[dict]:
    return [s for s in nusc.sample if nusc.get("scene", s["scene_token"])["name"] in set(scene_names)]


# ------------------------------------------------------------------------------------------------------ devkit loads
def test_devkit_loads_every_table_and_file(synth_world):
    nusc = synth_world.nusc
    p = synth_world.params
    assert len(nusc.scene) == p["scenes"] and len(nusc.sample) == p["scenes"] * p["samples_per_scene"]
    assert {s["name"] for s in nusc.scene} == set(synth_world.scenes)
    H, W = p["image_size"]
    for sample in nusc.sample:
        assert set(sample["data"]) == set(CAMS) | set(RADARS) | {"LIDAR_TOP"}
        for ch, token in sample["data"].items():
            sd = nusc.get("sample_data", token)
            assert sd["is_key_frame"] and sd["timestamp"] == sample["timestamp"]
            path = Path(nusc.get_sample_data_path(token))
            assert path.is_file(), path
            if ch.startswith("CAM"):
                img = cv2.imread(str(path))
                assert img.shape == (H, W, 3) and (sd["height"], sd["width"]) == (H, W)
    # sweeps exist between keyframes and chain through prev/next in time order
    lidar = [sd for sd in nusc.sample_data if nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
             ["sensor_token"] == nusc.field2token("sensor", "channel", "LIDAR_TOP")[0]]
    assert any(not sd["is_key_frame"] for sd in lidar)
    for sd in lidar:
        if sd["next"]:
            assert nusc.get("sample_data", sd["next"])["timestamp"] > sd["timestamp"]
    # every detection class is annotated, with the devkit's category names
    names = {category_to_detection_name(a["category_name"]) for a in nusc.sample_annotation}
    assert set(DETECTION_CLASSES) <= names
    splits = json.loads((synth_world.dataroot / synth_world.version / "splits.json").read_text())
    assert set(splits[synth_world.train_split]) | set(splits[synth_world.val_split]) == set(synth_world.scenes)
    assert not set(splits[synth_world.train_split]) & set(splits[synth_world.val_split])


def test_lidar_and_radar_files_load_with_the_devkit(synth_world):
    nusc = synth_world.nusc
    sample = nusc.sample[1]
    raw = np.fromfile(nusc.get_sample_data_path(sample["data"]["LIDAR_TOP"]), dtype=np.float32).reshape(-1, 5)
    pc = LidarPointCloud.from_file(nusc.get_sample_data_path(sample["data"]["LIDAR_TOP"]))
    assert pc.points.shape == (4, len(raw)) and len(raw) > 5000
    assert set(np.unique(raw[:, 4])) <= set(range(32)) and len(np.unique(raw[:, 4])) > 20  # ring index
    ranges = np.linalg.norm(raw[:, :3], axis=1)
    assert ranges.min() >= 1.0 - 1e-4 and ranges.max() <= 70.0 + 1e-3
    n_default, n_all = 0, 0
    for ch in RADARS:
        path = nusc.get_sample_data_path(sample["data"][ch])
        assert open(path, "rb").read().startswith(b"# .PCD v0.7")
        n_default += RadarPointCloud.from_file(path).points.shape[1]
        n_all += RadarPointCloud.from_file(path, invalid_states=list(range(18)), dynprop_states=list(range(8)),
                                           ambig_states=list(range(5))).points.shape[1]
    assert 0 < n_default < n_all  # real returns survive the default filters, some clutter does not


def test_map_masks_agree_with_the_roads_the_ego_drives(synth_world):
    nusc = synth_world.nusc
    maps = {}
    for sample in nusc.sample:
        location = nusc.get("log", nusc.get("scene", sample["scene_token"])["log_token"])["location"]
        m = maps.setdefault(location, NuScenesMap(str(synth_world.dataroot), location))
        pose = nusc.get("ego_pose", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])
        x, y = pose["translation"][:2]
        yaw = float(quaternion_to_yaw(np.array(pose["rotation"])))
        # 40 m x 40 m at 0.2 m, rotated with the ego: the devkit's canvas rows then run along the ego's y axis and
        # columns along its x axis (row 0 = ego right), so the ego footprint is a fixed rectangle around the centre
        mask = m.get_map_mask((x, y, 40.0, 40.0), np.degrees(yaw), ["drivable_area", "walkway", "lane"], (200, 200))
        rows, cols = np.mgrid[0:200, 0:200]
        ex, ey = (cols + 0.5) * 0.2 - 20.0, (rows + 0.5) * 0.2 - 20.0  # ego-frame metres of each cell
        ego = (ex > -0.5) & (ex < 3.0) & (np.abs(ey) < 0.8)
        assert mask[0][ego].all(), "the ego drives outside the drivable area"
        assert not mask[1][ego].any(), "the ego drives on a walkway"
        ahead = (ex > 4.0) & (ex < 8.0) & (np.abs(ey) < 0.5)
        assert mask[0][ahead].all(), "no road ahead of the ego (map rotation or axis order is wrong)"


# -------------------------------------------------------------------------------------------------- official eval
def test_detection_eval_of_ground_truth_reaches_map_one(synth_world, tmp_path):
    nusc = synth_world.nusc
    samples = samples_of(nusc, synth_world.split_scenes(synth_world.val_split))
    results = {}
    for sample in samples:
        boxes = []
        for token in sample["anns"]:
            a = nusc.get("sample_annotation", token)
            name = category_to_detection_name(a["category_name"])
            if name is None or a["num_lidar_pts"] + a["num_radar_pts"] == 0:
                continue  # the devkit drops such GT; predicting it would be a false positive
            velocity = np.nan_to_num(nusc.box_velocity(token)[:2]).tolist()
            attr = nusc.get("attribute", a["attribute_tokens"][0])["name"] if a["attribute_tokens"] else ""
            boxes.append(dict(sample_token=sample["token"], translation=a["translation"], size=a["size"],
                              rotation=a["rotation"], velocity=velocity, detection_name=name, detection_score=1.0,
                              attribute_name=attr))
        results[sample["token"]] = boxes
    meta = dict(use_camera=True, use_lidar=False, use_radar=True, use_map=False, use_external=False)
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"meta": meta, "results": results}))
    ev = DetectionEval(nusc, config_factory("detection_cvpr_2019"), str(path), synth_world.val_split,
                       str(tmp_path / "eval"), verbose=False)
    metrics, _ = ev.evaluate()
    per_class = metrics.mean_dist_aps
    assert set(per_class) == set(DETECTION_CLASSES)
    assert metrics.mean_ap >= 0.99, per_class
    assert metrics.tp_errors["trans_err"] < 1e-6 and metrics.tp_errors["vel_err"] < 1e-6


# ------------------------------------------------------------------------------------------- sensor consistency
def _world_box_index(world_boxes: np.ndarray, translation) -> int:
    d = np.linalg.norm(world_boxes[:, :3] - np.asarray(translation), axis=1)
    assert d.min() < 1e-6, "annotation does not match any object of the re-created world"
    return int(d.argmin())


def test_projected_box_centres_land_on_their_object(synth_world):
    """Project every annotation's centre with the devkit's calibration; the re-rendered instance map must show that
    object there, or an object that really stands between the camera and the centre."""
    nusc = synth_world.nusc
    specs = synth.scene_specs(synth_world.dataroot)
    H, W = synth_world.params["image_size"]
    on_object = occluded = visible_on = visible_all = 0
    for scene in nusc.scene:
        rec = synth.SceneRecorder(specs[scene["name"]])
        token, k = scene["first_sample_token"], 0
        while token:
            sample = nusc.get("sample", token)
            frame = rec.frame(k * 0.5)
            frames = dict(zip(CAMS, rec.cameras(frame)))
            boxes, anns = annotation_boxes(nusc, sample)
            for cam in CAMS:
                sd_token = sample["data"][cam]
                written = cv2.cvtColor(cv2.imread(nusc.get_sample_data_path(sd_token)), cv2.COLOR_BGR2RGB)
                assert np.abs(written.astype(int) - frames[cam].image).mean() < 6.0  # this render, up to JPEG
                K = np.array(nusc.get("calibrated_sensor", nusc.get("sample_data", sd_token)
                                      ["calibrated_sensor_token"])["camera_intrinsic"])
                g2c = invert_transform(sensor2global(nusc, sd_token))
                centres = transform_points(g2c, boxes[:, :3])
                for i, c in enumerate(centres):
                    if c[2] < 0.5:
                        continue
                    u, v = K[0, 0] * c[0] / c[2] + K[0, 2], K[1, 1] * c[1] / c[2] + K[1, 2]
                    if not (0 <= u < W and 0 <= v < H):
                        continue
                    seen = frames[cam].instance[int(v), int(u)]
                    obj = _world_box_index(frame.boxes_global, boxes[i, :3])
                    if frames[cam].hit_pixels[obj] < 9:
                        continue  # thinner than a pixel or two here: the pixel-centre ray may pass beside it
                    fully_visible = anns[i]["visibility_token"] == "4"
                    visible_all += fully_visible
                    if seen == obj:
                        on_object += 1
                        visible_on += fully_visible
                        continue
                    # something else is seen: it must be a box crossing the segment camera -> centre
                    assert seen >= 0, f"{anns[i]['category_name']} centre projects onto ground/sky in {cam}"
                    # along the pixel's own ray, up to the depth of the centre, the seen box must come first
                    occ = frame.boxes_global[seen]
                    ray = np.array([(int(u) + 0.5 - K[0, 2]) / K[0, 0], (int(v) + 0.5 - K[1, 2]) / K[1, 1], 1.0])
                    seg_cam = np.linspace(0, 1, 400)[:, None] * (ray * c[2])
                    seg = transform_points(sensor2global(nusc, sd_token), seg_cam)
                    inside = np.all(np.abs(box_frame(seg, occ[None, :7])[:, 0]) <= occ[3:6] / 2 + 0.02, axis=-1)
                    assert inside.any(), f"{anns[i]['category_name']}: pixel shows an object not in front of it"
                    occluded += 1
            token, k = sample["next"], k + 1
    # occluded centres are common in busy streets; objects >= 80% visible overall show their centre almost always
    assert on_object > 100 and visible_on >= 0.9 * visible_all, (on_object, occluded, visible_on, visible_all)


def test_radar_returns_lie_on_box_surfaces_or_are_clutter(synth_world):
    nusc = synth_world.nusc
    n_real = n_clutter = 0
    for sample in nusc.sample:
        boxes, anns = annotation_boxes(nusc, sample)
        for ch in RADARS:
            sd_token = sample["data"][ch]
            pts = RadarPointCloud.from_file(nusc.get_sample_data_path(sd_token)).points.T  # default filters
            if len(pts) == 0:
                continue
            s2g = sensor2global(nusc, sd_token)
            xyz = transform_points(s2g, pts[:, :3])
            dist = surface_distance(xyz, boxes)
            clutter = pts[:, 15] >= 3  # pdh0: false-alarm probability >= 75%
            nearest = dist.argmin(1)
            real = ~clutter
            assert (dist[real].min(1) < 0.01).all(), "a radar return off every box surface"
            inside = (np.abs(box_frame(xyz[clutter], boxes)) <= boxes[None, :, 3:6] / 2).all(-1)
            assert not inside.any(), "clutter inside an annotated box"
            n_real += int(real.sum())
            n_clutter += int(clutter.sum())
            # Doppler: (vx, vy) along the line of sight, and the compensated radial speed equals the box's
            r = pts[:, :2] / np.linalg.norm(pts[:, :2], axis=1, keepdims=True)
            for cols in ((6, 7), (8, 9)):
                v = pts[:, cols]
                assert np.abs(v[:, 0] * r[:, 1] - v[:, 1] * r[:, 0]).max() < 1e-3
            R = s2g[:2, :2]
            for j in np.nonzero(real)[0]:
                vel = nusc.box_velocity(anns[nearest[j]]["token"])[:2]
                if np.isnan(vel).any():
                    continue
                radial = (vel @ R) @ r[j]  # box velocity over ground, in the sensor frame, along the ray
                assert abs(pts[j, 8:10] @ r[j] - radial) < 1e-3
    assert n_real > 50 and n_clutter > 0


def test_radar_compensation_removes_the_sensors_own_motion(synth_world):
    """v_comp - v is the sensor's own velocity along the line of sight; the sensor velocity is measured here from
    the devkit ego poses of the neighbouring radar sweeps (central difference), independently of the generator."""
    nusc = synth_world.nusc
    checked = 0
    for sample in nusc.sample:
        for ch in RADARS:
            sd = nusc.get("sample_data", sample["data"][ch])
            if not sd["prev"] or not sd["next"]:
                continue
            prev, nxt = nusc.get("sample_data", sd["prev"]), nusc.get("sample_data", sd["next"])
            yaws = [float(quaternion_to_yaw(np.array(nusc.get("ego_pose", x["ego_pose_token"])["rotation"])))
                    for x in (prev, sd, nxt)]
            if abs((yaws[1] - yaws[0]) - (yaws[2] - yaws[1])) > 1e-6:
                continue  # the ego starts or ends a turn in between: a central difference would be biased
            p0, p1 = sensor2global(nusc, prev["token"])[:3, 3], sensor2global(nusc, nxt["token"])[:3, 3]
            v_sensor = (p1 - p0)[:2] / ((nxt["timestamp"] - prev["timestamp"]) * 1e-6)
            pts = RadarPointCloud.from_file(nusc.get_sample_data_path(sd["token"])).points.T
            if len(pts) == 0:
                continue
            R = sensor2global(nusc, sd["token"])[:2, :2]
            r = pts[:, :2] / np.linalg.norm(pts[:, :2], axis=1, keepdims=True)
            ego_radial = r @ (v_sensor @ R)  # sensor velocity in the sensor frame, along each ray
            measured = ((pts[:, 8:10] - pts[:, 6:8]) * r).sum(1)
            assert np.abs(measured - ego_radial).max() < 0.01, (ch, measured, ego_radial)
            checked += len(pts)
    assert checked > 100


def test_point_counts_are_counted_from_the_written_points(synth_world):
    nusc = synth_world.nusc
    for sample in nusc.sample[:4]:
        boxes, anns = annotation_boxes(nusc, sample)
        lidar_token = sample["data"]["LIDAR_TOP"]
        raw = np.fromfile(nusc.get_sample_data_path(lidar_token), dtype=np.float32).reshape(-1, 5)
        xyz = transform_points(sensor2global(nusc, lidar_token), raw[:, :3].astype(np.float64))
        inside = (np.abs(box_frame(xyz, boxes)) <= boxes[None, :, 3:6] / 2 + 1e-3).all(-1).sum(0)
        assert inside.tolist() == [a["num_lidar_pts"] for a in anns]
        radar = np.zeros(len(anns), dtype=int)
        for ch in RADARS:
            pts = RadarPointCloud.from_file(nusc.get_sample_data_path(sample["data"][ch])).points.T
            if len(pts):
                xyz = transform_points(sensor2global(nusc, sample["data"][ch]), pts[:, :3])
                radar += (np.abs(box_frame(xyz, boxes)) <= boxes[None, :, 3:6] / 2 + 1e-3).all(-1).sum(0)
        assert radar.tolist() == [a["num_radar_pts"] for a in anns]
        assert sum(radar) > 0 and inside.sum() > 0


# ------------------------------------------------------------------------------------------- captions, render
def test_captions_are_keyed_by_annotation_token(synth_world):
    nusc = synth_world.nusc
    captions = json.loads((synth_world.dataroot / synth_world.version / synth.CAPTIONS_FILENAME).read_text())
    assert set(captions) == {a["token"] for a in nusc.sample_annotation}
    texts = [c["final_caption"] for c in captions.values()]
    assert len(set(texts)) > 0.5 * len(texts)  # varied wording
    a = nusc.sample_annotation[0]
    assert "ego car" in captions[a["token"]]["final_caption"]
    cones = [captions[a["token"]]["final_caption"] for a in nusc.sample_annotation
             if a["category_name"] == "movable_object.trafficcone"]
    assert cones and all("traffic cone" in c for c in cones)


def test_classes_look_different_in_the_images(synth_world):
    """The mean colour at projected centres of cars, pedestrians and barriers differs clearly (learnable images)."""
    nusc = synth_world.nusc
    colours: dict[str, list] = {"car": [], "pedestrian": [], "barrier": []}
    for sample in nusc.sample:
        boxes, anns = annotation_boxes(nusc, sample)
        for cam in CAMS:
            sd_token = sample["data"][cam]
            img = cv2.cvtColor(cv2.imread(nusc.get_sample_data_path(sd_token)), cv2.COLOR_BGR2RGB)
            K = np.array(nusc.get("calibrated_sensor", nusc.get("sample_data", sd_token)["calibrated_sensor_token"])
                         ["camera_intrinsic"])
            c = transform_points(invert_transform(sensor2global(nusc, sd_token)), boxes[:, :3])
            for i, a in enumerate(anns):
                name = category_to_detection_name(a["category_name"])
                if name in colours and a["visibility_token"] == "4" and c[i, 2] > 1.0:
                    u, v = int(K[0, 0] * c[i, 0] / c[i, 2] + K[0, 2]), int(K[1, 1] * c[i, 1] / c[i, 2] + K[1, 2])
                    if 0 <= u < img.shape[1] and 0 <= v < img.shape[0]:
                        colours[name].append(img[v, u])
    means = {k: np.mean(v, 0) for k, v in colours.items() if len(v) >= 3}
    assert set(means) == set(colours)
    names = list(means)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            assert np.linalg.norm(means[names[i]] - means[names[j]]) > 40, (names[i], names[j], means)


# -------------------------------------------------------------------------------------- determinism, caching, CLI
def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_whatever_the_number_of_workers(synth_world, tmp_path):
    again = synth.generate(tmp_path / "again", workers=2, **synth_world.params)
    assert _tree_digest(again) == _tree_digest(synth_world.dataroot)
    other = synth.generate(tmp_path / "other", **{**synth_world.params, "seed": 1, "scenes": 1,
                                                  "samples_per_scene": 1})
    assert (other / "synth_manifest.json").read_bytes() != (again / "synth_manifest.json").read_bytes()


def test_is_complete_only_for_the_same_parameters(synth_world, tmp_path):
    assert synth.is_complete(synth_world.dataroot, **synth_world.params)
    assert not synth.is_complete(synth_world.dataroot, **{**synth_world.params, "seed": 1})
    assert not synth.is_complete(synth_world.dataroot, **{**synth_world.params, "image_size": (64, 112)})
    assert not synth.is_complete(tmp_path / "missing", **synth_world.params)
    assert synth.ensure_world(synth_world.dataroot, **synth_world.params) == synth_world.dataroot


def test_interrupted_generation_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    from bevbridge.data.synth import writer

    def boom(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(writer, "_write_metadata", boom)
    with pytest.raises(RuntimeError, match="killed"):
        synth.generate(tmp_path / "w", scenes=1, samples_per_scene=1, image_size=(32, 56))
    assert not (tmp_path / "w").exists()
    assert [p for p in os.listdir(tmp_path) if "synth-tmp" in p] == []  # the temp folder is gone too


def test_concurrent_ensure_world_calls_share_one_world(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    params = dict(scenes=1, samples_per_scene=1, image_size=(32, 56), sweeps=(0, 0, 0))
    with ThreadPoolExecutor(2) as pool:
        roots = list(pool.map(lambda _: synth.ensure_world(tmp_path / "w", **params), range(2)))
    assert roots[0] == roots[1] and synth.is_complete(roots[0], **params)


def test_refuses_to_replace_a_folder_that_is_not_a_synthetic_world(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.txt").write_text("real nuScenes?")
    with pytest.raises(FileExistsError, match="not a synthetic world"):
        synth.generate(tmp_path / "data", scenes=1, samples_per_scene=1, image_size=(32, 56))
    assert (tmp_path / "data" / "precious.txt").exists()


def test_bad_parameters_name_the_parameter():
    with pytest.raises(ValueError, match="samples_per_scene"):
        synth.generation_params(samples_per_scene=0)
    with pytest.raises(ValueError, match="image_size"):
        synth.generation_params(image_size=(8, 8))


def test_default_scene_names_are_the_devkit_mini_split():
    from nuscenes.utils.splits import create_splits_scenes

    names, splits = synth.scene_names(10)
    official = create_splits_scenes()
    assert sorted(names) == sorted(official["mini_train"] + official["mini_val"])
    assert splits[synth.VAL_SPLIT] == official["mini_val"]
    names, splits = synth.scene_names(12)  # the last round(12 / 5) = 2 scenes validate
    assert splits[synth.VAL_SPLIT] == ["synth-0010", "synth-0011"] and len(splits[synth.TRAIN_SPLIT]) == 10
    names, splits = synth.scene_names(1)
    assert splits[synth.VAL_SPLIT] == splits[synth.TRAIN_SPLIT] == ["synth-0000"]
