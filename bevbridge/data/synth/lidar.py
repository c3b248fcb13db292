"""LIDAR_TOP: a 32-beam spinning LiDAR (HDL-32E-like) ray cast against the ground and the object boxes.

Beams are spaced evenly from +10.67 to -30.67 degrees of elevation, as on the HDL-32E nuScenes uses; each sweep
fires every beam at ``n_azimuth`` azimuths. Points are written in the sensor frame as the devkit expects: float32
``(x, y, z, intensity, ring index)``. Intensity comes from the surface: retro-reflective paint and cones are
bright, asphalt is dark. The ego's own footprint shadows the ground beneath it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from bevbridge.geometry import box_corners, transform_points, wrap_angle

from .ground import GROUND_INTENSITY, GroundRaster
from .raycast import cast_boxes, pairs_from_rects
from .rig import SensorCalib

__all__ = ["LidarModel", "BEAM_ELEVATIONS_DEG"]

BEAM_ELEVATIONS_DEG = np.linspace(10.67, -30.67, 32)
EGO_FOOTPRINT = (-1.0, 3.6, -1.05, 1.05)  # x0, x1, y0, y1 in the ego frame: no ground returns under the car


class LidarModel:
    """Casts one sweep: :meth:`scan` returns ``points [P, 5]`` float32 in the sensor frame."""

    def __init__(self, calib: SensorCalib, n_azimuth: int = 1024, max_range: float = 70.0, min_range: float = 1.0,
                 dropout: float = 0.02):
        self.calib, self.n_az, self.max_range, self.min_range, self.dropout = \
            calib, n_azimuth, max_range, min_range, dropout
        el = np.radians(BEAM_ELEVATIONS_DEG)
        az = -math.pi + (np.arange(n_azimuth) + 0.5) * (2 * math.pi / n_azimuth)
        ee, aa = np.meshgrid(el, az, indexing="ij")
        d = np.stack([np.cos(ee) * np.cos(aa), np.cos(ee) * np.sin(aa), np.sin(ee)], -1).reshape(-1, 3)
        self.dirs = torch.from_numpy(d @ calib.sensor2ego[:3, :3].T).float()  # ego frame
        self.origin = torch.from_numpy(calib.sensor2ego[:3, 3]).float()
        self.ring = np.repeat(np.arange(len(el), dtype=np.float32), n_azimuth)

    def _candidates(self, boxes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(ray, box) pairs: the azimuth bins each box spans x the beams that can reach its height range."""
        M = len(boxes)
        rects = np.zeros((M, 4), dtype=np.int64)
        if M == 0:
            return pairs_from_rects(torch.from_numpy(rects), self.n_az)
        corners = transform_points(self.calib.ego2sensor, box_corners(boxes[:, :7]))  # [M, 8, 3] sensor frame
        centre = corners.mean(1)
        dist = np.hypot(centre[:, 0], centre[:, 1])
        half_diag = np.hypot(boxes[:, 3], boxes[:, 4]) / 2
        az_c = np.arctan2(centre[:, 1], centre[:, 0])
        daz = wrap_angle(np.arctan2(corners[..., 1], corners[..., 0]) - az_c[:, None])
        step = 2 * math.pi / self.n_az
        rects[:, 2] = np.floor((az_c + daz.min(-1) + math.pi) / step - 0.5).astype(np.int64)
        rects[:, 3] = np.ceil((az_c + daz.max(-1) + math.pi) / step - 0.5).astype(np.int64) + 1
        # beams: elevation between the lowest ray to the box bottom and the highest ray to its top
        r_near = np.maximum(dist - half_diag, 0.1)
        r_far = dist + half_diag
        z_lo, z_hi = corners[..., 2].min(-1), corners[..., 2].max(-1)
        e_hi = np.where(z_hi > 0, np.arctan2(z_hi, r_near), np.arctan2(z_hi, r_far))
        e_lo = np.where(z_lo < 0, np.arctan2(z_lo, r_near), np.arctan2(z_lo, r_far))
        el = np.radians(BEAM_ELEVATIONS_DEG)  # descending
        rects[:, 0] = np.clip(np.searchsorted(-el, -e_hi, side="left") - 1, 0, len(el))
        rects[:, 1] = np.clip(np.searchsorted(-el, -e_lo, side="right") + 1, 0, len(el))
        far = dist - half_diag > self.max_range
        rects[far] = 0
        return pairs_from_rects(torch.from_numpy(rects), self.n_az, wrap=True)

    def scan(self, boxes: np.ndarray, box_intensity: np.ndarray, ground: GroundRaster, ego2canonical: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:
        """One sweep against ``boxes [M, >=7]`` (ego frame) -> ``points [P, 5]`` float32 in the sensor frame."""
        ray_idx, box_idx = self._candidates(boxes)
        hits = cast_boxes(self.origin, self.dirs, torch.from_numpy(boxes[:, :7]).float(), ray_idx, box_idx)
        dz = self.dirs[:, 2]
        t_ground = torch.where(dz < -1e-6, -self.origin[2] / dz.clamp(max=-1e-6), torch.full_like(dz, float("inf")))
        t = torch.minimum(hits.t, t_ground)
        keep = (t >= self.min_range) & (t <= self.max_range)
        on_box = (hits.t <= t_ground) & keep
        keep_np = keep.numpy() & (rng.random(len(keep)) >= self.dropout)
        idx = np.nonzero(keep_np)[0]
        t_k = t[idx]
        pts = (self.origin + t_k[:, None] * self.dirs[idx]).double().numpy()
        intensity = np.empty(len(idx), dtype=np.float32)
        box_k = on_box.numpy()[idx]
        intensity[box_k] = box_intensity[hits.box[idx][box_k].numpy()]
        g = ~box_k
        x0, x1, y0, y1 = EGO_FOOTPRINT
        under_ego = g & (pts[:, 0] > x0) & (pts[:, 0] < x1) & (pts[:, 1] > y0) & (pts[:, 1] < y1)
        xy_can = pts[g, :2] @ ego2canonical[:2, :2].T + ego2canonical[:2, 2]
        intensity[g] = GROUND_INTENSITY[ground.lookup(xy_can)]
        intensity = np.clip(intensity * rng.uniform(0.8, 1.2, len(idx)), 0, 255)
        good = ~under_ego
        sensor = transform_points(self.calib.ego2sensor, pts[good])
        return np.concatenate([sensor, intensity[good, None], self.ring[idx][good, None]], 1).astype(np.float32)
