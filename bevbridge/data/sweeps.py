"""Multi-sweep radar and LiDAR loading into the key ego frame (files are read with the devkit's readers).

Each sweep's points go sensor -> ego (at the sweep's time) -> global -> key ego (at the keyframe's LIDAR_TOP
time): ego-motion compensation. Radar velocities (vx_comp, vy_comp: already compensated for ego motion by the
sensor) are vectors and are rotated into the key frame. Every point gets ``dt`` = key time - sweep time (s).

Sweep counts are "keyframe + previous": ``num_sweeps=8`` reads each sensor's keyframe sweep and up to 7 sweeps
before it (fewer at the start of a scene), as RCBEVDet's 8 radar sweeps.

Radar files are decoded by :func:`read_radar_pcd`, a vectorised equivalent of the devkit's
``RadarPointCloud.from_file`` (same header handling, same default filters, same empty-sweep rule; tested equal on
every file of the synthetic world): the devkit unpacks each field of each point with ``struct`` in Python, which
was about half of a sample's loading time with 5 radars x 8 sweeps (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from bevbridge.geometry import invert_transform

__all__ = ["RADAR_FIELDS", "read_radar_pcd", "load_radar_sweeps", "load_lidar_sweeps", "SweepFileMissing"]

# nuScenes radar PCD fields, in file order (RadarPointCloud's 18 rows).
RADAR_FIELDS = ("x", "y", "z", "dyn_prop", "id", "rcs", "vx", "vy", "vx_comp", "vy_comp", "is_quality_valid",
                "ambig_state", "x_rms", "y_rms", "invalid_state", "pdh0", "vx_rms", "vy_rms")


# The devkit's default radar filters (RadarPointCloud class settings): kept values of these fields.
DEFAULT_RADAR_FILTERS = {"invalid_state": (0,), "dyn_prop": tuple(range(7)), "ambig_state": (3,)}
_PCD_TYPES = {"F": "f", "I": "i", "U": "u"}


class SweepFileMissing(FileNotFoundError):
    pass


def read_radar_pcd(path: str | Path, filters: bool = True) -> np.ndarray:
    """``float64 [n, 18]`` radar points (columns in RADAR_FIELDS order) from a nuScenes binary PCD v0.7 file.

    ``filters`` keeps only the devkit's defaults (invalid_state 0, dyn_prop 0-6, ambig_state 3); an empty sweep
    (stored as one point whose first value is NaN) gives ``[0, 18]``.
    """
    raw = Path(path).read_bytes()
    header: dict[str, list[str]] = {}
    pos = 0
    while True:
        end = raw.index(b"\n", pos)
        line = raw[pos:end].strip().decode("ascii")
        pos = end + 1
        if line and not line.startswith("#"):
            key, *vals = line.split(" ")
            header[key] = vals
            if key == "DATA":
                break
    if header.get("DATA") != ["binary"] or header.get("HEIGHT") != ["1"]:
        raise ValueError(f"{path}: expected a binary PCD with HEIGHT 1, got DATA {header.get('DATA')} "
                         f"HEIGHT {header.get('HEIGHT')}")
    names = header["FIELDS"]
    dtype = np.dtype([(n, f"<{_PCD_TYPES[t]}{int(b)}") for n, t, b in zip(names, header["TYPE"], header["SIZE"])])
    missing = [f for f in RADAR_FIELDS if f not in names]
    if missing:
        raise ValueError(f"{path}: radar PCD lacks field(s) {missing}; nuScenes radar files hold {RADAR_FIELDS}")
    n = int(header["WIDTH"][0])
    rec = np.frombuffer(raw, dtype=dtype, count=n, offset=pos)
    pts = np.stack([rec[f].astype(np.float64) for f in RADAR_FIELDS], 1)
    if n == 0 or np.isnan(pts[0]).any():
        return np.zeros((0, len(RADAR_FIELDS)))
    if filters:
        keep = np.ones(n, bool)
        for f, allowed in DEFAULT_RADAR_FILTERS.items():
            keep &= np.isin(pts[:, RADAR_FIELDS.index(f)], allowed)
        pts = pts[keep]
    return pts


def _check(path: Path, what: str) -> None:
    if not path.is_file():
        raise SweepFileMissing(f"{what} file missing: {path}")


def _key_from_sensor(rec: dict, global2key: np.ndarray) -> np.ndarray:
    return global2key @ np.asarray(rec["ego2global"]) @ np.asarray(rec["sensor2ego"])


def load_radar_sweeps(dataroot: str | Path, radars: dict[str, list[dict]], ego2global_key: np.ndarray,
                      key_timestamp: int, num_sweeps: int, features: Sequence[str], filters: bool = True,
                      velocity_compensation: bool = False, sample_token: str = "") -> np.ndarray:
    """Points ``float32 [n, len(features)]`` from up to ``num_sweeps`` sweeps (key + previous) of every radar.

    ``features`` are RADAR_FIELDS names plus ``dt``; x, y, z and vx_comp, vy_comp (and vx, vy) come out in the key
    ego frame. ``filters`` applies the devkit's default radar filters (invalid_state 0, dyn_prop 0-6, ambig_state
    3); False keeps every return. ``velocity_compensation`` additionally moves each point by ``v * dt`` along its
    compensated velocity (off by default, as RCBEVDet).
    """
    root = Path(dataroot)
    global2key = invert_transform(np.asarray(ego2global_key, np.float64))
    chunks = []
    for channel, sweeps in radars.items():
        for rec in sweeps[:num_sweeps]:
            path = root / rec["filename"]
            _check(path, f"radar sweep ({channel}, sample {sample_token})")
            pts = read_radar_pcd(path, filters)  # [n, 18]
            if len(pts) == 0:
                continue
            T = _key_from_sensor(rec, global2key)
            pts[:, :3] = pts[:, :3] @ T[:3, :3].T + T[:3, 3]
            for a, b in ((6, 7), (8, 9)):
                v = np.stack([pts[:, a], pts[:, b], np.zeros(len(pts))], 1) @ T[:3, :3].T
                pts[:, a], pts[:, b] = v[:, 0], v[:, 1]
            dt = np.full((len(pts), 1), (key_timestamp - rec["timestamp"]) / 1e6)
            if velocity_compensation:
                pts[:, 0:2] += pts[:, 8:10] * dt
            chunks.append(np.concatenate([pts, dt], 1))
    table = np.concatenate(chunks, 0) if chunks else np.zeros((0, len(RADAR_FIELDS) + 1))
    names = (*RADAR_FIELDS, "dt")
    missing = [f for f in features if f not in names]
    if missing:
        raise ValueError(f"unknown radar feature {missing[0]!r}; choose from {names}")
    return table[:, [names.index(f) for f in features]].astype(np.float32)


def load_lidar_sweeps(dataroot: str | Path, lidar: dict, ego2global_key: np.ndarray, key_timestamp: int,
                      num_sweeps: int = 1, sample_token: str = "") -> np.ndarray:
    """``float32 [n, 5] = (x, y, z, intensity, dt)`` in the key ego frame from the keyframe + earlier sweeps."""
    from nuscenes.utils.data_classes import LidarPointCloud

    root = Path(dataroot)
    global2key = invert_transform(np.asarray(ego2global_key, np.float64))
    chunks = []
    for rec in [lidar, *lidar.get("sweeps", [])][:num_sweeps]:
        path = root / rec["filename"]
        _check(path, f"lidar sweep (sample {sample_token})")
        pts = LidarPointCloud.from_file(str(path)).points.T.astype(np.float64)  # [n, 4]: x, y, z, intensity
        T = _key_from_sensor(rec, global2key)
        xyz = pts[:, :3] @ T[:3, :3].T + T[:3, 3]
        dt = np.full((len(pts), 1), (key_timestamp - rec["timestamp"]) / 1e6)
        chunks.append(np.concatenate([xyz, pts[:, 3:4], dt], 1))
    return np.concatenate(chunks, 0).astype(np.float32) if chunks else np.zeros((0, 5), np.float32)
