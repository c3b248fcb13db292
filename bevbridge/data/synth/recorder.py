"""Record one scene: drive the ego through its world, capture every sensor at its times, write the sensor files and
return the records the devkit tables are built from (tables.py turns them into tokens and links).

Timing: keyframes at 2 Hz; between consecutive keyframes (and for one interval before the first, so the first sample
has history) each sensor adds ``Sweeps`` evenly spaced non-key captures. All sensors of a keyframe capture at the
keyframe instant (a synchronised rig), each sample_data gets its own ego pose at its own timestamp, and every sweep
is assigned to the nearest keyframe's sample (ties to the later one), as nuScenes does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from bevbridge.geometry import (invert_transform, matrix_to_quaternion, points_in_boxes, transform_boxes,
                                transform_points, yaw_to_quaternion)

from .camera import CameraFrame, pixel_rays, render_camera
from .captions import make_caption
from .catalog import PATTERNS, style_of, visibility_token
from .lidar import LidarModel
from .radar import RadarArray, write_radar_pcd
from .rig import make_rig
from .world import KEYFRAME_INTERVAL, Placement, SceneTiming, SceneWorld, build_world

__all__ = ["Sweeps", "SceneSpec", "SceneOutput", "SceneRecorder", "record_scene", "ANNOTATION_RANGE"]

ANNOTATION_RANGE = 80.0  # m: objects whose centre is this close to the ego get an annotation at a keyframe
JPEG_QUALITY = 92
POINT_MARGIN = 1e-3  # m: a written point this close to a box counts as inside (float32 rounding of surface hits)


def count_points_in_boxes(points: np.ndarray, boxes: np.ndarray, margin: float = POINT_MARGIN) -> np.ndarray:
    """``[M]`` number of ``points [N, 3]`` inside each of ``boxes [M, >=7]`` (same frame), testing each box only
    against the points inside its axis-aligned footprint (points sorted by x once)."""
    counts = np.zeros(len(boxes), dtype=np.int64)
    if len(points) == 0 or len(boxes) == 0:
        return counts
    order = np.argsort(points[:, 0], kind="stable")
    xs = points[order, 0]
    r = np.hypot(boxes[:, 3], boxes[:, 4]) / 2 + margin
    lo = np.searchsorted(xs, boxes[:, 0] - r, side="left")
    hi = np.searchsorted(xs, boxes[:, 0] + r, side="right")
    for m in np.nonzero(hi > lo)[0]:
        sub = points[order[lo[m]:hi[m]]]
        counts[m] = int(points_in_boxes(sub, boxes[m:m + 1], margin).sum())
    return counts


@dataclass(frozen=True)
class Sweeps:
    """Non-key captures per sensor between consecutive keyframes (nuScenes' real rates: lidar 9, radar 6, camera 5)."""

    lidar: int = 1
    radar: int = 6
    camera: int = 0


@dataclass(frozen=True)
class SceneSpec:
    index: int
    name: str
    location: str
    key: tuple[int, ...]  # (seed, index): every random draw of the scene derives from it
    n_samples: int
    origin: tuple[float, float]
    theta: float
    image_size: tuple[int, int]
    sweeps: Sweeps
    lidar_azimuths: int
    logfile: str
    time_base: int  # microseconds of the scene's first capture


@dataclass
class SceneOutput:
    spec: SceneSpec
    calibs: list[dict] = field(default_factory=list)
    sample_times: list[int] = field(default_factory=list)
    sample_data: list[dict] = field(default_factory=list)
    instances: list[str] = field(default_factory=list)  # category of each object (index = object id)
    annotations: list[dict] = field(default_factory=list)
    layout_params: dict = field(default_factory=dict)


def _captures(spec: SceneSpec, timing: SceneTiming) -> list[tuple[float, str, bool, int]]:
    """(time, modality, is_key, sample index), sorted by time; modality in camera | lidar | radar."""
    out = []
    counts = {"lidar": spec.sweeps.lidar, "radar": spec.sweeps.radar, "camera": spec.sweeps.camera}
    for k, tk in enumerate(timing.keyframe_times):
        for mod, n in counts.items():
            out.append((float(tk), mod, True, k))
            t_prev = tk - KEYFRAME_INTERVAL
            if k == 0 and timing.lead <= 0:
                continue
            for j in range(1, n + 1):
                t = t_prev + j * KEYFRAME_INTERVAL / (n + 1)
                nearest = k if (tk - t) <= (t - t_prev) or k == 0 else k - 1
                out.append((float(t), mod, False, nearest))
    order = {"camera": 0, "lidar": 1, "radar": 2}
    return sorted(out, key=lambda c: (c[0], order[c[1]]))


class _Frame:
    """Everything about the world at one instant, in the ego frame of that instant."""

    def __init__(self, world: SceneWorld, t: float):
        self.t = t
        self.ego2global = world.ego2global(t)
        self.boxes_global = world.boxes(t)
        self.boxes = transform_boxes(invert_transform(self.ego2global), self.boxes_global)
        E = self.ego2global
        self.ego2canonical = np.eye(3)
        self.ego2canonical[:2, :2] = world.A.T @ E[:2, :2]
        self.ego2canonical[:2, 2] = world.A.T @ (E[:2, 3] - world.b)
        self.sun = E[:3, :3].T @ world.sun
        self.ego_velocity, self.yaw_rate = world.ego_motion(t)


class SceneRecorder:
    """One scene's simulation: its world, rig and sensor models. :meth:`record` writes the scene; ``frame``,
    ``cameras``, ``lidar_scan`` and ``radar_scans`` re-create any capture exactly (tests and tools use them)."""

    _MODALITY = {"camera": 0, "lidar": 1, "radar": 2}

    def __init__(self, spec: SceneSpec):
        self.spec = spec
        self.timing = SceneTiming(spec.n_samples)
        self.world = build_world(spec.key, self.timing, Placement(spec.location, spec.theta, np.array(spec.origin)))
        rng_rig, rng_sensor = (np.random.default_rng([*spec.key, 10 + i]) for i in range(2))
        self.rig = make_rig(spec.image_size, rng_rig)
        H, W = spec.image_size
        styles = [style_of(cat) for cat in self.world.actors.category]
        self.pattern = np.array([PATTERNS.index(s.pattern) for s in styles], dtype=np.int64)
        self.intensity = np.array([s.intensity for s in styles], dtype=np.float32)
        self.rcs = np.array([s.rcs for s in styles], dtype=np.float64).reshape(-1, 2)
        self.max_returns = np.array([s.max_radar for s in styles], dtype=np.int64)
        self.rays = {c.channel: pixel_rays(c.K, H, W) for c in self.rig.cameras}
        self.lidar = LidarModel(self.rig.lidar, spec.lidar_azimuths)
        self.radars = RadarArray(self.rig.radars)
        self.noise_bank = rng_sensor.normal(0.0, 3.0, (2 * H * W, 3)).astype(np.float32)

    def timestamp(self, t: float) -> int:
        return self.spec.time_base + int(round((t + self.timing.lead) * 1e6))

    def frame(self, t: float) -> _Frame:
        return _Frame(self.world, t)

    def _rng(self, t: float, modality: str) -> np.random.Generator:
        return np.random.default_rng([*self.spec.key, 100, self.timestamp(t), self._MODALITY[modality]])

    def cameras(self, frame: _Frame) -> list[CameraFrame]:
        """The 6 camera frames at ``frame.t``, in rig order."""
        rng = self._rng(frame.t, "camera")
        H, W = self.spec.image_size
        out = []
        for c in self.rig.cameras:
            off = int(rng.integers(H * W))
            out.append(render_camera(c, self.rays[c.channel], frame.boxes, self.pattern, self.world.rgb,
                                     self.world.rider, self.world.ground, frame.ego2canonical, frame.sun,
                                     self.noise_bank[off:off + H * W]))
        return out

    def lidar_scan(self, frame: _Frame) -> np.ndarray:
        return self.lidar.scan(frame.boxes, self.intensity, self.world.ground, frame.ego2canonical,
                               self._rng(frame.t, "lidar"))

    def radar_scans(self, frame: _Frame) -> list[np.ndarray]:
        return self.radars.scan(frame.boxes, self.rcs, self.max_returns, frame.ego_velocity, frame.yaw_rate,
                                self._rng(frame.t, "radar"))

    def record(self, root: Path) -> SceneOutput:
        """Simulate and write the scene's sensor files under ``root``; returns its table records (no tokens yet)."""
        spec, world, rig = self.spec, self.world, self.rig
        H, W = spec.image_size
        out = SceneOutput(spec, instances=list(world.actors.category), layout_params=dict(world.layout.params))
        for c in rig.all:
            out.calibs.append(dict(channel=c.channel, modality=c.modality, translation=c.sensor2ego[:3, 3].tolist(),
                                   rotation=matrix_to_quaternion(c.sensor2ego[:3, :3]).tolist(),
                                   camera_intrinsic=c.K.tolist() if c.K is not None else []))
        n_obj, K = len(world.actors), spec.n_samples
        hit_px, vis_px, n_lidar, n_radar = (np.zeros((K, n_obj), dtype=np.int64) for _ in range(4))
        key_frames: dict[int, _Frame] = {}
        frame = None

        def add(channel, frame, is_key, k, ext, fileformat, width=0, height=0) -> Path:
            ts = self.timestamp(frame.t)
            rel = f"{'samples' if is_key else 'sweeps'}/{channel}/{spec.logfile}__{channel}__{ts}.{ext}"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            E = frame.ego2global
            out.sample_data.append(dict(
                channel=channel, timestamp=ts, is_key_frame=is_key, sample_index=k, filename=rel,
                fileformat=fileformat, width=width, height=height, ego_translation=[float(E[0, 3]), float(E[1, 3]), 0.0],
                ego_rotation=matrix_to_quaternion(E[:3, :3]).tolist()))
            return root / rel

        for t, modality, is_key, k in _captures(spec, self.timing):
            if frame is None or frame.t != t:
                frame = self.frame(t)  # captures are time-ordered: one frame per instant
            if is_key:
                key_frames[k] = frame
            if modality == "camera":
                for c, img in zip(rig.cameras, self.cameras(frame)):
                    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img.image, cv2.COLOR_RGB2BGR),
                                           [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                    add(c.channel, frame, is_key, k, "jpg", "jpg", W, H).write_bytes(buf.tobytes())
                    if is_key:
                        hit_px[k] += img.hit_pixels
                        vis_px[k] += img.visible_pixels
                if is_key:
                    out.sample_times.append(self.timestamp(t))
            elif modality == "lidar":
                pts = self.lidar_scan(frame)
                pts.tofile(add(rig.lidar.channel, frame, is_key, k, "pcd.bin", "pcd"))
                if is_key:
                    ego_pts = transform_points(rig.lidar.sensor2ego, pts[:, :3].astype(np.float64))
                    n_lidar[k] += count_points_in_boxes(ego_pts, frame.boxes)
            else:
                for c, pts in zip(rig.radars, self.radar_scans(frame)):
                    write_radar_pcd(add(c.channel, frame, is_key, k, "pcd", "pcd"), pts)
                    if is_key:
                        kept = (pts["invalid_state"] == 0) & (pts["ambig_state"] == 3) & (pts["dyn_prop"] < 7)
                        xyz = np.stack([pts["x"], pts["y"], pts["z"]], 1)[kept].astype(np.float64)
                        n_radar[k] += count_points_in_boxes(transform_points(c.sensor2ego, xyz), frame.boxes)
        rng_caption = np.random.default_rng([*spec.key, 12])
        _annotate(out, world, key_frames, hit_px, vis_px, n_lidar, n_radar, rng_caption)
        return out


def record_scene(spec: SceneSpec, root: Path) -> SceneOutput:
    """Simulate and write one scene under ``root``; returns its table records (no tokens yet)."""
    return SceneRecorder(spec).record(root)


def _annotate(out: SceneOutput, world: SceneWorld, key_frames: dict[int, _Frame], hit_px, vis_px, n_lidar, n_radar,
              rng: np.random.Generator) -> None:
    actors = world.actors
    for k in sorted(key_frames):
        f = key_frames[k]
        near = np.nonzero(np.hypot(f.boxes[:, 0], f.boxes[:, 1]) <= ANNOTATION_RANGE)[0]
        if len(near) == 0:
            continue
        context = world.layout.context(world.to_canonical(f.boxes_global[near, :2]))
        for i, ctx in zip(near.tolist(), context):
            bg, be = f.boxes_global[i], f.boxes[i]
            frac = vis_px[k, i] / hit_px[k, i] if hit_px[k, i] > 0 else 0.0
            speed = float(np.hypot(bg[7], bg[8]))
            out.annotations.append(dict(
                object=i, sample_index=k, translation=[float(bg[0]), float(bg[1]), float(bg[2])],
                size=[float(bg[4]), float(bg[3]), float(bg[5])],  # devkit: (w, l, h)
                rotation=yaw_to_quaternion(np.array(bg[6])).tolist(), attribute=actors.attribute[i],
                visibility=visibility_token(frac), num_lidar_pts=int(n_lidar[k, i]), num_radar_pts=int(n_radar[k, i]),
                caption=make_caption(actors.category[i], actors.colour[i], actors.attribute[i], be[:2], speed,
                                     float(be[6]), ctx, rng)))
