"""Radars (Continental ARS408-like): returns from object surfaces facing the sensor, Doppler velocities, clutter.

A sweep casts a fan of rays over +-60 degrees of azimuth (+-1 degree of elevation) against the boxes; the nearest
surface along each ray is a candidate return, detected with a probability that grows with the class's radar cross
section and falls with range, and at most ``max_radar`` returns per object are kept. Fields follow the devkit's 18
(see nuscenes.utils.data_classes.RadarPointCloud):

- ``vx, vy``: the radial component of the object's velocity RELATIVE to the sensor, as a vector along the line of
  sight (the ARS408 measures Doppler, i.e. radial speed only), in the sensor frame.
- ``vx_comp, vy_comp``: the same after compensating the sensor's own motion (ego speed and yaw rate): the radial
  component of the object's velocity over ground. So ``v_comp - v == (v_sensor . r) r``.
- ``dyn_prop``: 0 moving, 1 stationary, 2 oncoming, 6 crossing moving (all kept by the devkit's default filter).
- Real returns: ``invalid_state = 0``, ``ambig_state = 3``, ``pdh0 = 1`` (false-alarm probability < 25%).
- Clutter (ghosts from multipath): some pass the default filters (``pdh0`` in 3..5, i.e. >= 75% false-alarm
  probability, stationary), some do not (invalid or ambiguous states, which the devkit drops by default).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from bevbridge.geometry import box_corners, points_in_boxes, transform_points, wrap_angle

from .raycast import cast_boxes, pairs_from_rects
from .rig import SensorCalib

__all__ = ["RADAR_DTYPE", "RadarArray", "write_radar_pcd"]

_FIELDS = ("x", "y", "z", "dyn_prop", "id", "rcs", "vx", "vy", "vx_comp", "vy_comp", "is_quality_valid",
           "ambig_state", "x_rms", "y_rms", "invalid_state", "pdh0", "vx_rms", "vy_rms")
_SIZES = (4, 4, 4, 1, 2, 4, 4, 4, 4, 4, 1, 1, 1, 1, 1, 1, 1, 1)
_TYPES = ("F", "F", "F", "I", "I", "F", "F", "F", "F", "F", "I", "I", "I", "I", "I", "I", "I", "I")
RADAR_DTYPE = np.dtype([(n, {("F", 4): "<f4", ("I", 1): "i1", ("I", 2): "<i2"}[(t, s)])
                        for n, s, t in zip(_FIELDS, _SIZES, _TYPES)])  # packed, 43 bytes per point


def write_radar_pcd(path, points: np.ndarray) -> None:
    """Write a binary PCD v0.7 radar file the devkit reads. An empty sweep is written as one NaN point (the devkit's
    convention for an empty point cloud). One byte follows the data: the devkit's reader requires it."""
    if len(points) == 0:
        points = np.zeros(1, dtype=RADAR_DTYPE)
        for f in ("x", "y", "z", "rcs", "vx", "vy", "vx_comp", "vy_comp"):
            points[f] = np.nan
    n = len(points)
    header = "\n".join([
        "# .PCD v0.7 - Point Cloud Data file format", "VERSION 0.7", "FIELDS " + " ".join(_FIELDS),
        "SIZE " + " ".join(map(str, _SIZES)), "TYPE " + " ".join(_TYPES), "COUNT " + " ".join(["1"] * len(_FIELDS)),
        f"WIDTH {n}", "HEIGHT 1", "VIEWPOINT 0 0 0 1 0 0 0", f"POINTS {n}", "DATA binary",
    ]) + "\n"
    with open(path, "wb") as f:
        f.write(header.encode("ascii") + points.astype(RADAR_DTYPE).tobytes() + b"\n")


class RadarArray:
    """All radars of the rig; :meth:`scan` casts every radar's rays in one batch and returns one structured array
    (RADAR_DTYPE, sensor frame) per radar."""

    def __init__(self, calibs: tuple[SensorCalib, ...], n_rays: int = 240, fov_deg: float = 60.0,
                 max_range: float = 70.0, elevation_deg: float = 1.0):
        self.calibs, self.n_rays, self.fov, self.max_range = calibs, n_rays, math.radians(fov_deg), max_range
        self.elev = math.radians(elevation_deg)

    def scan(self, boxes: np.ndarray, rcs: np.ndarray, max_returns: np.ndarray, ego_velocity: np.ndarray,
             yaw_rate: float, rng: np.random.Generator) -> list[np.ndarray]:
        """``boxes [M, 9]`` in the ego frame (velocities over ground, ego axes); ``rcs [M, 2]`` mean/std dBsm;
        ``max_returns [M]``; the ego origin's velocity ``[2]`` (ego frame) and yaw rate (rad/s)."""
        n, S = self.n_rays, len(self.calibs)
        az = np.sort(rng.uniform(-self.fov, self.fov, (S, n)), axis=1)  # sorted: a box's rays are a contiguous run
        el = rng.uniform(-self.elev, self.elev, (S, n))
        d_sensor = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1)  # [S, n, 3]
        R = np.stack([c.sensor2ego[:3, :3] for c in self.calibs])
        origins = np.stack([c.sensor2ego[:3, 3] for c in self.calibs])
        dirs = np.einsum("sij,snj->sni", R, d_sensor).reshape(-1, 3)
        ray_origin = np.repeat(origins, n, axis=0)
        # candidate (ray, box) pairs: the rays whose azimuth falls inside a box's angular extent, per radar
        corners = box_corners(boxes[:, :7])  # [M, 8, 3] ego frame
        rects = []
        for k, c in enumerate(self.calibs):
            cs = transform_points(c.ego2sensor, corners)
            dist = np.hypot(cs[..., 0], cs[..., 1]).min(1)
            centre = np.arctan2(cs[..., 1].mean(1), cs[..., 0].mean(1))
            rel = wrap_angle(np.arctan2(cs[..., 1], cs[..., 0]) - centre[:, None])
            lo = np.searchsorted(az[k], centre + rel.min(1), side="left")
            hi = np.searchsorted(az[k], centre + rel.max(1), side="right")
            behind = (cs[..., 0] <= 0).all(1)  # wholly behind the sensor: outside the +-60 degree field of view
            ok = (dist < self.max_range + np.maximum(boxes[:, 3], boxes[:, 4]) / 2) & ~behind
            rects.append(np.stack([np.full_like(lo, k), np.full_like(lo, k + 1), np.where(ok, lo, 0),
                                   np.where(ok, hi, 0)], 1))
        rects = np.concatenate(rects)  # rows = radars, columns = rays
        ray_idx, box_idx = pairs_from_rects(torch.from_numpy(rects), n)
        box_idx = box_idx % len(boxes) if len(boxes) else box_idx
        hits = cast_boxes(torch.from_numpy(ray_origin), torch.from_numpy(dirs), torch.from_numpy(boxes[:, :7]),
                          ray_idx, box_idx)
        t, box = hits.t.numpy(), hits.box.numpy()
        ok = np.nonzero((box >= 0) & (t <= self.max_range))[0]
        b = box[ok]
        # detection: stronger reflectors and nearer objects are detected more often
        logit = (rcs[b, 0] - 12.0 * np.log10(np.maximum(t[ok], 1.0)) + 14.0) / 3.0
        det = rng.random(len(ok)) < 1.0 / (1.0 + np.exp(-logit))
        ok, b = ok[det], b[det]
        # keep at most max_returns per object and radar, chosen at random
        group = (ok // n) * (len(boxes) + 1) + b
        order = np.lexsort((rng.random(len(ok)), group))
        ok, b, group = ok[order], b[order], group[order]
        first = np.searchsorted(group, group, side="left")
        keep = (np.arange(len(b)) - first) < max_returns[b]
        ok, b = ok[keep], b[keep]
        p_ego = ray_origin[ok] + t[ok, None] * dirs[ok]
        sensor_of = ok // n
        out = []
        for k, c in enumerate(self.calibs):
            m = sensor_of == k
            real = self._fields(c, p_ego[m], boxes[b[m], 7:9], ego_velocity, yaw_rate, rng)
            real["rcs"] = rcs[b[m], 0] + rcs[b[m], 1] * rng.standard_normal(int(m.sum()))
            real["pdh0"] = 1
            pts = np.concatenate([real, self._clutter(c, boxes, ego_velocity, yaw_rate, rng)])
            pts["id"] = np.arange(len(pts))
            out.append(pts)
        return out

    def _fields(self, calib: SensorCalib, p_ego: np.ndarray, v_obj: np.ndarray, ego_velocity: np.ndarray, yaw_rate: float,
                rng: np.random.Generator) -> np.ndarray:
        """Positions and Doppler fields for returns at ``p_ego [N, 3]`` of objects moving at ``v_obj [N, 2]``."""
        n = len(p_ego)
        out = np.zeros(n, dtype=RADAR_DTYPE)
        p = transform_points(calib.ego2sensor, p_ego)
        out["x"], out["y"], out["z"] = p[:, 0], p[:, 1], p[:, 2]
        # sensor velocity over ground (ego frame): v_ego + w x r_sensor
        origin = calib.sensor2ego[:3, 3]
        v_s = ego_velocity + yaw_rate * np.array([-origin[1], origin[0]])
        R2 = calib.sensor2ego[:2, :2]
        v_obj_s, v_s_s = v_obj @ R2, v_s @ R2  # into the sensor frame
        r = p[:, :2] / np.maximum(np.linalg.norm(p[:, :2], axis=1, keepdims=True), 1e-6)
        radial_abs = (v_obj_s * r).sum(1)
        radial_rel = radial_abs - r @ v_s_s
        out["vx"], out["vy"] = radial_rel * r[:, 0], radial_rel * r[:, 1]
        out["vx_comp"], out["vy_comp"] = radial_abs * r[:, 0], radial_abs * r[:, 1]
        speed = np.linalg.norm(v_obj_s, axis=1)
        along = radial_abs / np.maximum(speed, 1e-6)
        dyn = np.where(along < -0.5, 2, np.where(np.abs(along) < 0.35, 6, 0))
        out["dyn_prop"] = np.where(speed < 0.2, 1, dyn)
        out["is_quality_valid"] = 1
        out["ambig_state"] = 3
        out["invalid_state"] = 0
        for f in ("x_rms", "y_rms", "vx_rms", "vy_rms"):
            out[f] = rng.integers(1, 8, n)
        return out

    def _clutter(self, calib: SensorCalib, boxes: np.ndarray, ego_velocity: np.ndarray, yaw_rate: float,
                 rng: np.random.Generator) -> np.ndarray:
        n_valid, n_invalid = rng.poisson(2.0), rng.poisson(3.0)
        n = n_valid + n_invalid
        az = rng.uniform(-self.fov, self.fov, n)
        rng_m = rng.uniform(2.0, self.max_range * 0.85, n)
        p_s = np.stack([rng_m * np.cos(az), rng_m * np.sin(az), rng.uniform(-0.4, 0.8, n)], -1)
        p_ego = transform_points(calib.sensor2ego, p_s)
        outside = ~points_in_boxes(p_ego, boxes, margin=0.3).any(1)
        p_ego, valid = p_ego[outside], (np.arange(n) < n_valid)[outside]
        out = self._fields(calib, p_ego, np.zeros((len(p_ego), 2)), ego_velocity, yaw_rate, rng)
        out["rcs"] = rng.uniform(-12.0, 3.0, len(out))
        out["dyn_prop"] = rng.choice([1, 3], len(out))
        out["pdh0"] = rng.integers(3, 6, len(out))
        k = int((~valid).sum())
        bad_invalid = rng.random(k) < 0.6
        out["invalid_state"][~valid] = np.where(bad_invalid, rng.choice([1, 2, 3, 6, 7, 14], k), 0)
        out["ambig_state"][~valid] = np.where(bad_invalid, 3, rng.choice([0, 1, 2, 4], k))
        return out
