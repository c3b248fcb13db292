"""End-to-end geometry of NuScenesDataset samples against the synthetic world's ground truth.

The synthetic world's ``SceneRecorder`` re-renders any camera capture exactly, with a per-pixel object id. A GT box
centre projected through K, sensor2ego and ida must land on its own object's pixels in the augmented image (and
the augmented image must be the recorded one warped by exactly that ida); the same for past frames through
ego2key; LiDAR sweeps must be ego-motion compensated; and a camera whose capture time differs from the LiDAR's
must use its own ego pose.
"""

from __future__ import annotations

import functools
import json

import cv2
import numpy as np
import pytest

import bevbridge.data.sweeps as sweeps_module
from bevbridge.data import synth
from bevbridge.data.nuscenes import NuScenesDataset
from bevbridge.data.transforms import BEVAug, ImageAug, warp_image
from bevbridge.geometry import invert_transform, transform_points

SIZE = (64, 112)  # network input (H, W) from the fixture's 72 x 128 images


def make(root, version, split, **kw):
    opts = dict(image_size=SIZE, radar_sweeps=0, lidar_sweeps=0, min_points=0)
    opts.update(kw)
    return NuScenesDataset(root, version, split, **opts)


class Recorded:
    """The recorder's view of one scene: renders the 6 cameras at a timestamp (RGB + object ids)."""

    def __init__(self, root, scene_name: str):
        self.rec = synth.SceneRecorder(synth.scene_specs(root)[scene_name])

    @classmethod
    @functools.lru_cache(maxsize=8)
    def of(cls, root, scene_name: str) -> Recorded:
        return cls(root, scene_name)

    def frame(self, timestamp: int):
        t = (timestamp - self.rec.spec.time_base) / 1e6 - self.rec.timing.lead
        return self.rec.frame(t)

    def cameras(self, frame) -> dict:
        return {c.channel: cf for c, cf in zip(self.rec.rig.cameras, self.rec.cameras(frame))}


def object_ids(frame, centres_ego: np.ndarray) -> np.ndarray:
    """Index of the recorder's object at each box centre (same ego frame)."""
    d = np.linalg.norm(frame.boxes[None, :, :3] - centres_ego[:, None], axis=-1)
    assert d.min(1).max() < 1e-3, "a GT box does not match any object of the recorded frame"
    return d.argmin(1)


def project(points_ego: np.ndarray, K: np.ndarray, sensor2ego: np.ndarray, ida: np.ndarray):
    """Augmented pixel coordinates ``[n, 2]`` and depth ``[n]`` of ego-frame points."""
    pc = transform_points(invert_transform(sensor2ego), points_ego)
    z = pc[:, 2]
    uv = pc[:, :2] / np.maximum(z, 1e-6)[:, None] @ K[:2, :2].T + K[:2, 2]
    return uv @ ida[:2, :2].T + ida[:2, 2], z


def centre_hits(cam_frame, uv: np.ndarray, z: np.ndarray, ids: np.ndarray, ida: np.ndarray,
                candidates: np.ndarray) -> tuple[int, int]:
    """(hits, checked): of the mostly unoccluded objects (>= 20 visible pixels, >= 60 % of their pixels visible in
    this camera) whose projected centre is in the augmented image, how many land on their own id in the recorder's
    instance map warped by ``ida`` (nearest neighbour)."""
    H, W = SIZE
    inst = cv2.warpAffine(cam_frame.instance, ida[:2].astype(np.float64), (W, H), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=-1)
    visible = np.bincount(cam_frame.instance[cam_frame.instance >= 0], minlength=len(cam_frame.hit_pixels))
    x, y = np.floor(uv).astype(np.int64).T
    ok = candidates & (z > 0.5) & (x >= 0) & (x < W) & (y >= 0) & (y < H)
    ok &= (visible[ids] >= 20) & (visible[ids] >= 0.6 * np.maximum(cam_frame.hit_pixels[ids], 1))
    return int((inst[y[ok], x[ok]] == ids[ok]).sum()), int(ok.sum())


def test_projected_box_centres_land_on_their_objects_in_augmented_images(synth_world):
    """Key frame with image AND BEV augmentation: the image is the recording warped by ida, and GT centres (bda
    undone) projected through K, sensor2ego and ida hit their own objects."""
    ds = make(synth_world.dataroot, synth_world.version, synth_world.train_split, image_aug=ImageAug(SIZE),
              bev_aug=BEVAug(), train=True, seed=5)
    hits = checked = flips = 0
    for idx in range(0, len(ds), 2):
        s, info = ds[idx], ds.samples[idx]
        view = Recorded.of(synth_world.dataroot, info["scene_name"])
        frame = view.frame(s.timestamp)
        cams = view.cameras(frame)
        centres = transform_points(invert_transform(s.bda.double().numpy()), s.gt_boxes[:, :3].double().numpy())
        ids = object_ids(frame, centres)
        for n, name in enumerate(s.cam_names):
            K, s2e, ida = (t[n].double().numpy() for t in (s.K, s.sensor2ego, s.ida))
            flips += ida[0, 0] < 0
            got = s.images[n].permute(1, 2, 0).numpy().astype(np.float64)
            want = warp_image(cams[name].image, ida, SIZE).astype(np.float64)
            assert np.abs(got - want).mean() < 5.0, (name, np.abs(got - want).mean())  # JPEG noise only
            uv, z = project(centres, K, s2e, ida)
            h, c = centre_hits(cams[name], uv, z, ids, ida, np.ones(len(ids), bool))
            hits, checked = hits + h, checked + c
    assert flips > 0 and checked > 40 and hits / checked > 0.9, (hits, checked, flips)


def test_past_frames_see_static_objects_through_ego2key(synth_world):
    """A static object's key-frame box, moved into a past frame's ego by ego2key^-1 and projected through that
    frame's K, sensor2ego and ida (the key frame's), lands on the object in the past image."""
    ds = make(synth_world.dataroot, synth_world.version, synth_world.train_split, image_aug=ImageAug(SIZE),
              train=True, num_past_frames=2, seed=2)
    hits = checked = 0
    control_hits = control_checked = 0
    for idx in range(1, len(ds), 2):
        s, info = ds[idx], ds.samples[idx]
        view = Recorded.of(synth_world.dataroot, info["scene_name"])
        boxes = s.gt_boxes.double().numpy()
        static = np.hypot(boxes[:, 7], boxes[:, 8]) < 0.05
        ids = object_ids(view.frame(s.timestamp), boxes[:, :3])
        prev = info
        for t in range(2):
            if not bool(s.past.valid[t]):
                continue
            prev = ds.info(prev["prev"])
            frame = view.frame(prev["timestamp"])
            cams = view.cameras(frame)
            ego2key = s.past.ego2key[t].double().numpy()
            assert not np.allclose(ego2key, np.eye(4), atol=0.1)  # the ego moved
            centres = transform_points(invert_transform(ego2key), boxes[:, :3])
            for n, name in enumerate(s.cam_names):
                K, s2e, ida = (s.past.__dict__[f][t, n].double().numpy() for f in ("K", "sensor2ego", "ida"))
                assert np.allclose(ida, s.ida[n].double().numpy())  # BEVDet4D: one image aug for all frames
                got = s.past.images[t, n].permute(1, 2, 0).numpy().astype(np.float64)
                assert np.abs(got - warp_image(cams[name].image, ida, SIZE)).mean() < 5.0
                uv, z = project(centres, K, s2e, ida)
                h, c = centre_hits(cams[name], uv, z, ids, ida, static)
                hits, checked = hits + h, checked + c
                uv, z = project(boxes[:, :3], K, s2e, ida)  # control: ego motion ignored
                h, c = centre_hits(cams[name], uv, z, ids, ida, static)
                control_hits, control_checked = control_hits + h, control_checked + c
    assert checked > 20 and hits / checked > 0.9, (hits, checked)
    assert control_hits / max(control_checked, 1) < hits / checked - 0.3, (control_hits, control_checked)


def test_lidar_sweeps_are_ego_motion_compensated(synth_world, monkeypatch):
    """Points of the previous LiDAR sweep that hit a static object land on its key-frame box; without ego-motion
    compensation they don't. The keyframe sweep has dt = 0, older ones their age."""
    def on_static_boxes():
        ds = make(synth_world.dataroot, synth_world.version, synth_world.train_split, lidar_sweeps=2)
        inside = near = 0
        for i in range(len(ds)):
            s = ds[i]
            p = s.lidar.numpy().astype(np.float64)
            assert s.lidar.shape[1] == 5 and (p[:, 4] >= 0).all() and (p[:, 4] == 0).any() and (p[:, 4] > 0.1).any()
            boxes = s.gt_boxes.double().numpy()
            boxes = boxes[np.hypot(boxes[:, 7], boxes[:, 8]) < 0.05]
            old = p[p[:, 4] > 0.1]
            from bevbridge.geometry import points_in_boxes

            grown = boxes.copy()
            grown[:, 3:5] += 3.0  # points within 1.5 m of a static box
            in_grown = points_in_boxes(old[:, :3], grown).any(1) & (old[:, 2] > 0.3)
            inside += int(points_in_boxes(old[in_grown, :3], boxes, margin=0.05).any(1).sum())
            near += int(in_grown.sum())
        return inside / max(near, 1), near

    good, n = on_static_boxes()
    monkeypatch.setattr(sweeps_module, "_key_from_sensor", lambda rec, g2k: np.asarray(rec["sensor2ego"]))
    bad, _ = on_static_boxes()
    assert n > 200 and good > 0.9 and bad < good - 0.2, (good, bad, n)


@pytest.fixture(scope="module")
def offset_camera_world(tmp_path_factory):
    """A one-scene world with a camera sweep between keyframes, re-tabled so that each keyframe's camera images are
    the sweeps 0.25 s BEFORE the LiDAR keyframe (real nuScenes cameras fire at other times than the LiDAR)."""
    root = synth.generate(tmp_path_factory.mktemp("offset") / "w", scenes=1, samples_per_scene=3,
                          image_size=(72, 128), seed=4, sweeps=(0, 0, 1))
    path = root / "v1.0-mini" / "sample_data.json"
    sd = json.loads(path.read_text())
    by_token = {r["token"]: r for r in sd}
    channels = {c["token"]: c["sensor_token"] for c in json.loads((root / "v1.0-mini" / "calibrated_sensor.json")
                                                                 .read_text())}
    cams = {s["token"] for s in json.loads((root / "v1.0-mini" / "sensor.json").read_text())
            if s["modality"] == "camera"}
    swapped = 0
    for r in sd:
        if r["is_key_frame"] and channels[r["calibrated_sensor_token"]] in cams and r["prev"]:
            p = by_token[r["prev"]]
            p["is_key_frame"], p["sample_token"], r["is_key_frame"] = True, r["sample_token"], False
            swapped += 1
    assert swapped == 6 * 3  # sweeps start one interval before the first keyframe
    path.write_text(json.dumps(sd))
    return root


def test_camera_sensor2ego_uses_the_cameras_own_ego_pose(offset_camera_world):
    root = offset_camera_world
    ds = make(root, "v1.0-mini", synth.TRAIN_SPLIT)
    hits = checked = control_hits = control_checked = 0
    for idx in range(len(ds)):
        s, info = ds[idx], ds.samples[idx]
        cam_ts = {info["cams"][c]["timestamp"] for c in s.cam_names}
        assert len(cam_ts) == 1 and abs(s.timestamp - cam_ts.pop() - 250_000) < 1000
        view = Recorded.of(root, info["scene_name"])
        boxes = s.gt_boxes.double().numpy()
        static = np.hypot(boxes[:, 7], boxes[:, 8]) < 0.05
        ids = object_ids(view.frame(s.timestamp), boxes[:, :3])
        cams = view.cameras(view.frame(info["cams"]["CAM_FRONT"]["timestamp"]))
        lidar_ego2global = np.asarray(info["lidar"]["ego2global"])
        for n, name in enumerate(s.cam_names):
            K, s2e, ida = (t[n].double().numpy() for t in (s.K, s.sensor2ego, s.ida))
            uv, z = project(boxes[:, :3], K, s2e, ida)
            h, c = centre_hits(cams[name], uv, z, ids, ida, static)
            hits, checked = hits + h, checked + c
            # control: the camera's calibration composed with the LiDAR's ego pose (the classic mistake)
            wrong = invert_transform(lidar_ego2global) @ lidar_ego2global @ np.asarray(info["cams"][name]["sensor2ego"])
            uv, z = project(boxes[:, :3], K, wrong, ida)
            h, c = centre_hits(cams[name], uv, z, ids, ida, static)
            control_hits, control_checked = control_hits + h, control_checked + c
    assert checked > 10 and hits / checked > 0.9, (hits, checked)
    assert control_hits / max(control_checked, 1) < hits / checked - 0.3, (control_hits, control_checked)
