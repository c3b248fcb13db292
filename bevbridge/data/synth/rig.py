"""The sensor rig: 6 cameras, 5 radars and LIDAR_TOP with nuScenes-like intrinsics and extrinsics.

Extrinsics (sensor -> ego) are close to nuScenes' calibration, including its quirks: cameras look along their +z
with +x right and +y down; LIDAR_TOP is rotated -90 degrees about z (its +x points to the ego's right, +y forward).
Camera intrinsics are the nuScenes values for 1600x900 scaled to the chosen image size (fx by W/1600, fy by H/900).
Each scene gets a slightly perturbed copy (a few cm, a fraction of a degree), as every nuScenes log has its own
calibration, so consumers must read calibrated_sensor rather than assume constants.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from bevbridge.geometry import invert_transform, make_transform, rotation_z

__all__ = ["CAMERAS", "RADARS", "LIDAR", "SensorCalib", "Rig", "make_rig", "NUSC_IMAGE_SIZE"]

NUSC_IMAGE_SIZE = (900, 1600)  # (H, W) of real nuScenes images

# name: (yaw deg, translation xyz, fx, fy, cx, cy at 1600x900)
CAMERAS: dict[str, tuple[float, tuple[float, float, float], float, float, float, float]] = {
    "CAM_FRONT": (0.0, (1.70, 0.016, 1.51), 1266.4, 1266.4, 816.3, 491.5),
    "CAM_FRONT_RIGHT": (-55.0, (1.55, -0.494, 1.50), 1260.8, 1260.8, 808.0, 495.3),
    "CAM_BACK_RIGHT": (-110.0, (1.01, -0.481, 1.56), 1259.5, 1259.5, 807.3, 501.2),
    "CAM_BACK": (180.0, (0.03, 0.003, 1.58), 809.2, 809.2, 829.2, 481.8),
    "CAM_BACK_LEFT": (110.0, (1.04, 0.485, 1.59), 1256.7, 1256.7, 817.8, 452.0),
    "CAM_FRONT_LEFT": (55.0, (1.52, 0.495, 1.51), 1272.6, 1272.6, 826.6, 479.8),
}
# name: (yaw deg, translation xyz)
RADARS: dict[str, tuple[float, tuple[float, float, float]]] = {
    "RADAR_FRONT": (0.0, (3.41, 0.0, 0.50)),
    "RADAR_FRONT_LEFT": (90.0, (2.42, 0.80, 0.78)),
    "RADAR_FRONT_RIGHT": (-90.0, (2.42, -0.80, 0.77)),
    "RADAR_BACK_LEFT": (176.0, (-0.56, 0.63, 0.53)),
    "RADAR_BACK_RIGHT": (-176.0, (-0.56, -0.63, 0.53)),
}
LIDAR = ("LIDAR_TOP", -90.0, (0.943, 0.0, 1.84))

# Camera axes (x right, y down, z forward) expressed in the ego frame (x forward, y left, z up).
_CAM_AXES = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


@dataclass(frozen=True)
class SensorCalib:
    """One sensor's calibration: ``sensor2ego [4, 4]`` and, for cameras, ``K [3, 3]`` and the image size."""

    channel: str
    modality: str  # camera | radar | lidar
    sensor2ego: np.ndarray
    K: np.ndarray | None = None
    image_size: tuple[int, int] | None = None  # (H, W)

    @functools.cached_property
    def ego2sensor(self) -> np.ndarray:
        return invert_transform(self.sensor2ego)


@dataclass(frozen=True)
class Rig:
    cameras: tuple[SensorCalib, ...]
    radars: tuple[SensorCalib, ...]
    lidar: SensorCalib

    @property
    def all(self) -> tuple[SensorCalib, ...]:
        return (*self.cameras, self.lidar, *self.radars)


def make_rig(image_size: tuple[int, int], rng: np.random.Generator | None = None) -> Rig:
    """The rig for images of ``image_size = (H, W)``; with ``rng``, extrinsics get a small per-scene perturbation."""
    H, W = image_size
    sx, sy = W / NUSC_IMAGE_SIZE[1], H / NUSC_IMAGE_SIZE[0]

    def jitter(scale_m: float, scale_deg: float) -> tuple[np.ndarray, float, float]:
        if rng is None:
            return np.zeros(3), 0.0, 0.0
        return (rng.normal(0, scale_m, 3), math.radians(rng.normal(0, scale_deg)),
                math.radians(rng.normal(0, scale_deg)))

    cams = []
    for name, (yaw, t, fx, fy, cx, cy) in CAMERAS.items():
        dt, dyaw, dpitch = jitter(0.01, 0.3)
        # yaw about ego z, then a small pitch about the camera's x axis (nose down is positive).
        R = rotation_z(np.array(math.radians(yaw) + dyaw)) @ _CAM_AXES @ _rotation_x(dpitch)
        K = np.array([[fx * sx, 0.0, cx * sx], [0.0, fy * sy, cy * sy], [0.0, 0.0, 1.0]])
        cams.append(SensorCalib(name, "camera", make_transform(R, np.asarray(t) + dt), K, (H, W)))
    radars = []
    for name, (yaw, t) in RADARS.items():
        dt, dyaw, _ = jitter(0.01, 0.2)
        R = rotation_z(np.array(math.radians(yaw) + dyaw))
        radars.append(SensorCalib(name, "radar", make_transform(R, np.asarray(t) + dt)))
    name, yaw, t = LIDAR
    dt, dyaw, _ = jitter(0.005, 0.1)
    lidar = SensorCalib(name, "lidar", make_transform(rotation_z(np.array(math.radians(yaw) + dyaw)),
                                                      np.asarray(t) + dt))
    return Rig(tuple(cams), tuple(radars), lidar)


def _rotation_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
