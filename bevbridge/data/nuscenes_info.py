"""The versioned info cache: everything the dataset needs per keyframe, read once from the devkit.

One ``.npz`` per (dataroot, version), an :class:`~bevbridge.data.info_table.InfoTable`: sample tokens,
scene/location, RELATIVE file paths (so a cache moves with the data), calibrations and ego poses of every camera,
radar sweep and lidar sweep, and the annotations as 9-d boxes in the key ego frame. It holds every sample of the
version; splits are chosen when the dataset opens it.

The table's meta records ``schema`` (this module's SCHEMA_VERSION), the dataset ``version``, the sweep counts it was
built with and a ``fingerprint`` of the tables (:func:`tables_fingerprint`). Another schema or version is refused
with a message saying how to rebuild; a stale fingerprint, too few sweeps or a corrupt file (a truncated ``.npz``:
:class:`CorruptInfoCache`) make :func:`open_info_cache` (and so ``NuScenesDataset``) rebuild it, with one log line
naming the file. Building runs the per-sample extraction over a fork pool (the devkit tables are shared
copy-on-write) with a progress bar, under an exclusive lock on ``<cache>.lock``: when several processes (torchrun
ranks) open a missing cache at once, one builds it and the others wait, then load it.

Sweeps are stored "keyframe + previous": a sensor's keyframe sample_data and the ones before it (following
``prev``, within the scene), most recent first; ``radar_sweeps=8`` means the keyframe sweep and up to 7 earlier ones
per radar (fewer at the start of a scene).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from bevbridge.atomic import exclusive_lock
from bevbridge.data.batch import ATTRIBUTE_NAMES, DETECTION_CLASSES
from bevbridge.data.info_table import InfoTable
from bevbridge.geometry import invert_transform, pose_matrix, quaternion_to_yaw, transform_boxes
from bevbridge.log import progress

__all__ = ["SCHEMA_VERSION", "CAMERAS", "RADARS", "InfoCacheError", "StaleInfoCache", "CorruptInfoCache",
           "check_dataroot", "open_nuscenes", "tables_fingerprint", "build_info_cache", "load_info_cache",
           "open_info_cache", "default_cache_path", "split_scenes"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3  # 2: tables fingerprint; 3: numpy columns (.npz) instead of gzipped JSON
CAMERAS = ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT")
RADARS = ("RADAR_FRONT", "RADAR_FRONT_LEFT", "RADAR_FRONT_RIGHT", "RADAR_BACK_LEFT", "RADAR_BACK_RIGHT")


class InfoCacheError(RuntimeError):
    """The cache is missing, stale or from another schema/version; the message says how to rebuild it."""


def check_dataroot(dataroot: str | os.PathLike, version: str) -> Path:
    """Clear errors for a wrong dataroot or a missing version folder (without loading the tables)."""
    root = Path(dataroot)
    if not root.is_dir():
        raise FileNotFoundError(f"nuScenes dataroot does not exist: {root} (data.dataroot; run `bevbridge synth "
                                f"--out {root}` for a synthetic world, or point it at your nuScenes folder)")
    if not (root / version / "sample.json").is_file():
        present = sorted(p.name for p in root.iterdir() if (p / "sample.json").is_file())
        raise FileNotFoundError(f"nuScenes version folder missing: {root / version}/sample.json not found "
                                f"(data.version={version!r}; versions present under {root}: {present or 'none'})")
    return root


def open_nuscenes(dataroot: str | os.PathLike, version: str):
    """``NuScenes(version, dataroot)`` with clear errors for a wrong dataroot or a missing version folder."""
    root = check_dataroot(dataroot, version)
    from nuscenes.nuscenes import NuScenes

    return NuScenes(version=version, dataroot=str(root), verbose=False)


def tables_fingerprint(dataroot: str | os.PathLike, version: str) -> str:
    """A cheap identity of a version's tables: the name and size of every ``*.json`` table plus a hash of
    ``sample.json`` (about 10 MB for trainval). Changes when the data at a path is replaced (e.g. another synthetic
    world written to the same folder); an identical regeneration keeps it."""
    import hashlib

    folder = check_dataroot(dataroot, version) / version
    h = hashlib.sha1()
    for p in sorted(folder.glob("*.json")):
        h.update(f"{p.name}:{p.stat().st_size};".encode())
    h.update(hashlib.sha1((folder / "sample.json").read_bytes()).digest())
    return h.hexdigest()[:16]


def default_cache_path(dataroot: str | os.PathLike, version: str) -> Path:
    """``$BEVBRIDGE_CACHE_DIR`` (default ``~/.cache/bevbridge``) / ``<version>_<dataroot hash>_infos_v<schema>.npz``.

    Outside the dataroot, which is often read-only (and must stay byte-identical for the synthetic world's checks);
    keyed by the dataroot's absolute path, so two datasets never share a cache.
    """
    import hashlib

    base = Path(os.environ.get("BEVBRIDGE_CACHE_DIR") or Path.home() / ".cache" / "bevbridge")
    key = hashlib.sha1(str(Path(dataroot).resolve()).encode()).hexdigest()[:12]
    return base / f"{version}_{key}_infos_v{SCHEMA_VERSION}.npz"


# ----------------------------------------------------------------------------------------------------- extraction
_NUSC: Any = None  # set in the parent before forking; shared copy-on-write by the pool's workers


def _pose7(rec: dict) -> list[float]:
    return [*rec["translation"], *rec["rotation"]]


def _sensor_record(nusc, sd_token: str) -> dict:
    """One sample_data: its token, file, time, calibration token and ego pose (translation + quaternion)."""
    sd = nusc.get("sample_data", sd_token)
    ep = nusc.get("ego_pose", sd["ego_pose_token"])
    rec = {"token": sd_token, "filename": sd["filename"], "timestamp": sd["timestamp"],
           "calib": sd["calibrated_sensor_token"], "ego": _pose7(ep)}
    if sd["width"]:
        rec["width"], rec["height"] = sd["width"], sd["height"]
    return rec


def _sweeps(nusc, sd_token: str, count: int) -> list[dict]:
    """The keyframe sample_data and up to ``count - 1`` earlier sweeps of the same sensor, most recent first."""
    out = []
    while sd_token and len(out) < count:
        out.append(_sensor_record(nusc, sd_token))
        sd_token = nusc.get("sample_data", sd_token)["prev"]
    return out


def _annotations(nusc, sample: dict, global2ego: np.ndarray) -> dict:
    attr_index = {name: i for i, name in enumerate(ATTRIBUTE_NAMES)}
    from nuscenes.eval.detection.utils import category_to_detection_name

    boxes, quats, cats, labels, attrs, npts, tokens, insts, vis = [], [], [], [], [], [], [], [], []
    for tok in sample["anns"]:
        a = nusc.get("sample_annotation", tok)
        w, l, h = a["size"]
        vel = nusc.box_velocity(tok)[:2]
        vel = np.where(np.isfinite(vel), vel, 0.0)
        boxes.append([*a["translation"], l, w, h, 0.0, *vel])
        quats.append(a["rotation"])
        cats.append(a["category_name"])
        det = category_to_detection_name(a["category_name"])
        labels.append(DETECTION_CLASSES.index(det) if det is not None else -1)
        names = [nusc.get("attribute", t)["name"] for t in a["attribute_tokens"]]
        attrs.append(attr_index.get(names[0], -1) if names else -1)
        npts.append([a["num_lidar_pts"], a["num_radar_pts"]])
        tokens.append(tok)
        insts.append(a["instance_token"])
        vis.append(a.get("visibility_token", ""))
    boxes = np.asarray(boxes, np.float64).reshape(-1, 9)
    if len(boxes):
        boxes[:, 6] = quaternion_to_yaw(np.asarray(quats, np.float64))
    boxes_ego = transform_boxes(global2ego, boxes)
    return {"boxes": boxes_ego.round(6).tolist(), "category": cats, "label": labels, "attr": attrs,
            "num_pts": npts, "tokens": tokens, "instance_tokens": insts, "visibility": vis}


def _extract(args: tuple[str, int, int]) -> dict:
    token, radar_sweeps, lidar_sweeps = args
    nusc = _NUSC
    s = nusc.get("sample", token)
    scene = nusc.get("scene", s["scene_token"])
    location = nusc.get("log", scene["log_token"])["location"]
    lidar_token = s["data"].get("LIDAR_TOP")
    lidar = _sensor_record(nusc, lidar_token) if lidar_token else None
    if lidar is not None:
        ego = lidar["ego"]
        global2ego = invert_transform(pose_matrix(np.asarray(ego[:3], np.float64), np.asarray(ego[3:], np.float64)))
    else:  # no key frame to express the boxes in: kept global; NuScenesDataset refuses such a sample at open
        global2ego = np.eye(4)
    return {
        "token": token, "scene_token": s["scene_token"], "scene_name": scene["name"], "location": location,
        "timestamp": s["timestamp"], "prev": s["prev"], "next": s["next"], "lidar": lidar,
        "lidar_sweeps": _sweeps(nusc, lidar_token, lidar_sweeps)[1:] if lidar_token else [],
        "cams": {c: _sensor_record(nusc, s["data"][c]) for c in CAMERAS if c in s["data"]},
        "radars": {r: _sweeps(nusc, s["data"][r], radar_sweeps) for r in RADARS if r in s["data"]},
        "anns": _annotations(nusc, s, global2ego),
    }


def build_info_cache(dataroot: str | os.PathLike, version: str, out: str | os.PathLike | None = None,
                     radar_sweeps: int = 10, lidar_sweeps: int = 10, workers: int | None = None) -> Path:
    """Read every sample of ``version`` through the devkit and write the cache (atomically). Returns its path.

    ``workers``: processes for the extraction (default: 1 below 2,000 samples, where forking costs more than it
    saves, else up to 8)."""
    global _NUSC
    t0 = time.perf_counter()
    out = Path(out) if out is not None else default_cache_path(dataroot, version)
    fingerprint = tables_fingerprint(dataroot, version)
    nusc = open_nuscenes(dataroot, version)
    tokens = [s["token"] for s in nusc.sample]
    if workers is None:
        workers = 1 if len(tokens) < 2000 else min(os.cpu_count() or 1, 8)
    jobs = [(t, radar_sweeps, lidar_sweeps) for t in tokens]
    _NUSC = nusc
    import torch

    threads = torch.get_num_threads()
    # many tiny array ops: torch's spinning OpenMP threads would slow numpy's LAPACK calls (and each other) down
    torch.set_num_threads(1)
    try:
        bar = progress(total=len(jobs), desc=f"info cache {version}", unit="sample")
        if workers > 1 and "fork" in mp.get_all_start_methods():
            with mp.get_context("fork").Pool(workers) as pool:
                infos = []
                for info in pool.imap(_extract, jobs, chunksize=16):
                    infos.append(info)
                    bar.update()
        else:
            infos = []
            for job in jobs:
                infos.append(_extract(job))
                bar.update()
        bar.close()
    finally:
        _NUSC = None
        torch.set_num_threads(threads)
    calibs = {c["token"]: {"pose": _pose7(c), "K": c["camera_intrinsic"] or None} for c in nusc.calibrated_sensor}
    meta = {"schema": SCHEMA_VERSION, "version": version, "fingerprint": fingerprint, "radar_sweeps": radar_sweeps,
            "lidar_sweeps": lidar_sweeps, "cameras": list(CAMERAS), "radars": list(RADARS)}
    InfoTable.pack(infos, calibs, meta).save(out)
    log.info("info cache: %d samples of %s in %.1f s -> %s", len(infos), version, time.perf_counter() - t0, out)
    return out


class StaleInfoCache(InfoCacheError):
    """The cache was built from other tables, or with fewer sweeps than asked for: rebuilding it fixes this."""


class CorruptInfoCache(StaleInfoCache):
    """The cache file is empty or a truncated/damaged ``.npz`` (a zip that cannot be read): rebuilding it fixes this.

    A readable file that is not an info table (another format, no ``meta``) is not "corrupt": it is refused with
    :class:`InfoCacheError`, never overwritten, since a ``cache_path`` the user named may hold something else."""


def _looks_like_npz(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return head in (b"", b"PK\x03\x04")  # empty, or a zip (np.savez) whatever its state


def load_info_cache(path: str | os.PathLike, version: str, radar_sweeps: int = 0, lidar_sweeps: int = 0,
                    fingerprint: str | None = None) -> InfoTable:
    """Load and validate a cache; refuse another schema or version (InfoCacheError), other tables than
    ``fingerprint`` (if given) or fewer sweeps than asked for (StaleInfoCache)."""
    path = Path(path)
    rebuild = (f"rebuild it with `bevbridge.data.nuscenes_info.build_info_cache(dataroot, {version!r})` or delete "
               f"{path} and the dataset rebuilds it")
    if not path.is_file():
        raise InfoCacheError(f"info cache not found: {path}; {rebuild}")
    try:
        table = InfoTable.load(path)
    except ValueError as e:
        if _looks_like_npz(path) and "no 'meta' entry" not in str(e):
            raise CorruptInfoCache(f"info cache {path} is corrupt or truncated ({path.stat().st_size} bytes; "
                                   f"{str(e).removeprefix('not an info table (.npz): ')}); {rebuild}") from None
        raise InfoCacheError(f"info cache {path} is not a schema-{SCHEMA_VERSION} cache ({e}); {rebuild}") from None
    meta = table.meta
    if meta.get("schema") != SCHEMA_VERSION:
        raise InfoCacheError(f"info cache {path} has schema {meta.get('schema')!r}, this bevbridge reads schema "
                             f"{SCHEMA_VERSION}; {rebuild}")
    if meta.get("version") != version:
        raise InfoCacheError(f"info cache {path} is for dataset version {meta.get('version')!r}, not {version!r}; "
                             f"{rebuild}")
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        raise StaleInfoCache(f"info cache {path} was built from other {version} tables (fingerprint "
                             f"{meta.get('fingerprint')}, the dataroot's is {fingerprint}); {rebuild}")
    for kind, want in (("radar_sweeps", radar_sweeps), ("lidar_sweeps", lidar_sweeps)):
        if meta.get(kind, 0) < want:
            raise StaleInfoCache(f"info cache {path} holds {meta.get(kind)} {kind}, {want} were asked for; "
                                 f"{rebuild} (pass {kind}={want})")
    return table


def open_info_cache(dataroot: str | os.PathLike, version: str, path: str | os.PathLike | None = None,
                    radar_sweeps: int = 0, lidar_sweeps: int = 1) -> InfoTable:
    """The cache of (dataroot, version) with at least the sweeps asked for: loaded, or (re)built first if it is
    missing, stale (other tables, too few sweeps) or corrupt, with one log line naming the file.

    Safe when many processes call it at once (torchrun ranks): a valid cache is loaded without locking; otherwise
    the build happens under an exclusive lock on ``<path>.lock`` and a process that waited re-checks the cache and
    loads what the other one built. Builds hold at least 10 sweeps per sensor so that configs share one cache."""
    path = Path(path) if path is not None else default_cache_path(dataroot, version)
    fingerprint = tables_fingerprint(dataroot, version)  # clear errors for a wrong dataroot/version

    def attempt() -> tuple[InfoTable | None, str]:
        if not path.is_file():
            return None, f"info cache {path} missing: building it (once)"
        try:
            return load_info_cache(path, version, radar_sweeps, lidar_sweeps, fingerprint), ""
        except StaleInfoCache as e:
            return None, f"{e}: rebuilding it"

    table, _ = attempt()
    if table is not None:
        return table
    with exclusive_lock(path.with_name(path.name + ".lock"),
                        f"waiting for another process to build the info cache {path}") as waited:
        table, why = attempt()  # another process may have built it while this one waited
        if table is not None:
            log.info("info cache %s: built by another process, loaded", path)
            return table
        if path.is_file():
            log.warning("%s", why)  # stale or corrupt: names the file and why
        else:
            log.info("%s", why)
        build_info_cache(dataroot, version, path, radar_sweeps=max(radar_sweeps, 10),
                         lidar_sweeps=max(lidar_sweeps, 10))
    return load_info_cache(path, version, radar_sweeps, lidar_sweeps, fingerprint)


def split_scenes(dataroot: str | os.PathLike, version: str, split: str) -> list[str]:
    """Scene names of ``split``: a devkit split (train, val, mini_train, ...) or a key of
    ``<dataroot>/<version>/splits.json``."""
    import json

    from nuscenes.utils import splits

    if splits.is_predefined_split(split):
        return splits.create_splits_scenes()[split]
    path = Path(dataroot) / version / "splits.json"
    if not path.is_file():
        raise ValueError(f"unknown split {split!r}: not a devkit split and {path} does not exist")
    custom = json.loads(path.read_text())
    if split not in custom:
        raise ValueError(f"unknown split {split!r}; {path} defines {sorted(custom)}")
    return custom[split]
