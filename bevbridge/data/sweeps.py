"""Multi-sweep radar and LiDAR loading into the key ego frame (files are read with the devkit's readers).

Each sweep's points go sensor -> ego (at the sweep's time) -> global -> key ego (at the keyframe's LIDAR_TOP
time): ego-motion compensation. Radar velocities (vx_comp, vy_comp: already compensated for ego motion by the
sensor) are vectors and are rotated into the key frame. Every point gets ``dt`` = key time - sweep time (s).

Sweep counts are "keyframe + previous": ``num_sweeps=8`` reads each sensor's keyframe sweep and up to 7 sweeps
before it (fewer at the start of a scene), as RCBEVDet's 8 radar sweeps.

Radar files are decoded by :func:`read_radar_pcd`, a vectorised equivalent of the devkit's
``RadarPointCloud.from_file`` (same header handling, same default filters, same empty-sweep rule; tested equal on
every file of the synthetic world): the devkit unpacks each field of each point with ``struct`` in Python, which
was about half of a sample's loading time with 5 radars x 8 sweeps (benchmarks/RESULTS.md). LiDAR files are read by
:func:`bevbridge.data.integrity.read_lidar_bin` (the devkit's ``np.fromfile``, with a size check). A missing, empty
or truncated file raises a one-line error naming it (bevbridge/data/integrity.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from bevbridge.data.integrity import MissingDataFile, corrupt, read_bytes, read_lidar_bin
from bevbridge.geometry import invert_transform

__all__ = ["RADAR_FIELDS", "read_radar_pcd", "load_radar_sweeps", "load_lidar_sweeps", "SweepFileMissing"]

# nuScenes radar PCD fields, in file order (RadarPointCloud's 18 rows).
RADAR_FIELDS = ("x", "y", "z", "dyn_prop", "id", "rcs", "vx", "vy", "vx_comp", "vy_comp", "is_quality_valid",
                "ambig_state", "x_rms", "y_rms", "invalid_state", "pdh0", "vx_rms", "vy_rms")


# The devkit's default radar filters (RadarPointCloud class settings): kept values of these fields.
DEFAULT_RADAR_FILTERS = {"invalid_state": (0,), "dyn_prop": tuple(range(7)), "ambig_state": (3,)}
_PCD_TYPES = {"F": "f", "I": "i", "U": "u"}


SweepFileMissing = MissingDataFile  # the earlier name; every data-file error is in bevbridge/data/integrity.py


_MAX_PCD_HEADER = 4096  # a PCD header is ~300 bytes; a missing DATA line within this is a corrupt file


def _pcd_header(raw: bytes, path: Path, what: str, sample: str) -> tuple[dict[str, list[str]], int]:
    header: dict[str, list[str]] = {}
    pos = 0
    while "DATA" not in header:
        end = raw.find(b"\n", pos, _MAX_PCD_HEADER)
        if end < 0:
            raise corrupt(what, f"truncated or not a PCD file: no DATA line in its header ({len(raw)} bytes)", path,
                          sample)
        line = raw[pos:end].strip().decode("ascii", "replace")
        pos = end + 1
        if line and not line.startswith("#"):
            key, *vals = line.split(" ")
            header[key] = vals
    return header, pos


def read_radar_pcd(path: str | Path, filters: bool = True, what: str = "radar sweep", sample: str = "") -> np.ndarray:
    """``float64 [n, 18]`` radar points (columns in RADAR_FIELDS order) from a nuScenes binary PCD v0.7 file.

    ``filters`` keeps only the devkit's defaults (invalid_state 0, dyn_prop 0-6, ambig_state 3); an empty sweep
    (stored as one point whose first value is NaN) gives ``[0, 18]``. A missing, empty or truncated file, or a
    header that does not describe it, raises a one-line error naming the file (``what`` and ``sample`` say which).
    """
    path = Path(path)
    raw = read_bytes(path, what, sample)
    header, pos = _pcd_header(raw, path, what, sample)
    if header.get("DATA") != ["binary"] or header.get("HEIGHT") != ["1"]:
        raise corrupt(what, f"expected a binary PCD with HEIGHT 1, got DATA {header.get('DATA')} "
                            f"HEIGHT {header.get('HEIGHT')}", path, sample)
    try:
        names, types, sizes = header["FIELDS"], header["TYPE"], header["SIZE"]
        if not len(names) == len(types) == len(sizes):
            raise ValueError(f"{len(names)} FIELDS, {len(types)} TYPE, {len(sizes)} SIZE")
        dtype = np.dtype([(n, f"<{_PCD_TYPES[t]}{int(b)}") for n, t, b in zip(names, types, sizes)])
        n = int(header["WIDTH"][0])
    except (KeyError, ValueError, TypeError, IndexError) as e:
        raise corrupt(what, f"bad PCD header ({type(e).__name__}: {e})", path, sample) from None
    missing_fields = [f for f in RADAR_FIELDS if f not in names]
    if missing_fields:
        raise corrupt(what, f"radar PCD lacks field(s) {missing_fields}; nuScenes radar files hold {RADAR_FIELDS}",
                      path, sample)
    if len(raw) - pos < n * dtype.itemsize:
        raise corrupt(what, f"truncated: {n} points x {dtype.itemsize} bytes need {n * dtype.itemsize} bytes of "
                            f"data, the file holds {len(raw) - pos}", path, sample)
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
            pts = read_radar_pcd(root / rec["filename"], filters, f"radar sweep ({channel})", sample_token)  # [n, 18]
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
    root = Path(dataroot)
    global2key = invert_transform(np.asarray(ego2global_key, np.float64))
    chunks = []
    for rec in [lidar, *lidar.get("sweeps", [])][:num_sweeps]:
        pts = read_lidar_bin(root / rec["filename"], "lidar sweep (LIDAR_TOP)", sample_token)[:, :4].astype(np.float64)
        T = _key_from_sensor(rec, global2key)
        xyz = pts[:, :3] @ T[:3, :3].T + T[:3, 3]
        dt = np.full((len(pts), 1), (key_timestamp - rec["timestamp"]) / 1e6)
        chunks.append(np.concatenate([xyz, pts[:, 3:4], dt], 1))
    return np.concatenate(chunks, 0).astype(np.float32) if chunks else np.zeros((0, 5), np.float32)
