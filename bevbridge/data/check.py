"""``bevbridge check-data``: read every sensor file that splits reference; report what is missing or corrupt.

Before a days-long run, one pass over the data finds every bad file at once, instead of one per crash (or one per
skipped sample) hours in. For each sample of the splits it takes the files the dataset would load: the camera images
of ``cameras``, ``radar_sweeps`` sweeps of each radar and ``lidar_sweeps`` LiDAR sweeps (each file once, however many
samples share it), and reads them in worker processes with the dataset's own readers
(bevbridge/data/integrity.py) plus checks too slow for every training step: libjpeg's warnings while decoding a JPEG
("Corrupt JPEG data: ...", turned into errors by capturing the decoder's stderr in the worker), every radar point
parsed, non-finite LiDAR values. It also lists samples lacking a channel (the check ``NuScenesDataset`` makes when it
opens). The report is JSON (:func:`check_data`'s return value) plus a short summary (:func:`format_summary`).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bevbridge.data.info_table import InfoTable
from bevbridge.data.integrity import DataFileError, read_image, read_lidar_bin
from bevbridge.data.nuscenes_info import CAMERAS, RADARS, open_info_cache, split_scenes
from bevbridge.data.sweeps import read_radar_pcd
from bevbridge.log import progress

__all__ = ["check_data", "format_summary", "collect_files", "check_file"]

log = logging.getLogger(__name__)


def collect_files(table: InfoTable, indices: Sequence[int], cameras: Sequence[str], radar_sweeps: int,
                  lidar_sweeps: int) -> dict[str, dict[str, Any]]:
    """``{relative path: {kind, channel, size (cameras: width, height), samples: [table index, ...]}}``."""
    files: dict[str, dict[str, Any]] = {}

    def add(rec: dict, kind: str, channel: str, i: int) -> None:
        entry = files.setdefault(rec["filename"], {"kind": kind, "channel": channel, "samples": []})
        if kind == "camera":
            entry["size"] = (rec["width"], rec["height"])
        entry["samples"].append(int(i))

    for i in indices:
        info = table[i]
        for cam in cameras:
            if cam in info["cams"]:
                add(info["cams"][cam], "camera", cam, i)
        if radar_sweeps > 0:
            for channel, sweeps in info["radars"].items():
                for rec in sweeps[:radar_sweeps]:
                    add(rec, "radar", channel, i)
        if lidar_sweeps > 0 and info["lidar"] is not None:
            for rec in [info["lidar"], *info["lidar"]["sweeps"]][:lidar_sweeps]:
                add(rec, "lidar", "LIDAR_TOP", i)
    return files


# ------------------------------------------------------------------------------------------------- worker side
_STDERR: Any = None  # a worker's captured fd 2 (libjpeg prints its warnings there)


def _init_worker() -> None:
    global _STDERR
    import tempfile

    import cv2

    cv2.setNumThreads(1)
    _STDERR = tempfile.TemporaryFile()
    os.dup2(_STDERR.fileno(), 2)


def _decoder_warnings(start: int) -> str:
    if _STDERR is None:
        return ""
    end = os.fstat(_STDERR.fileno()).st_size
    if end <= start:
        return ""
    _STDERR.seek(start)
    return " ".join(_STDERR.read(end - start).decode("utf-8", "replace").split())


def check_file(job: tuple[str, str, str, tuple[int, int] | None]) -> tuple[str, str, str]:
    """``(path, status, reason)`` for one file: status ``ok``, ``missing`` or ``corrupt``."""
    path, kind, channel, size = job
    try:
        if kind == "camera":
            start = os.fstat(_STDERR.fileno()).st_size if _STDERR is not None else 0
            read_image(path, size, f"camera image ({channel})")
            warnings = _decoder_warnings(start)
            if warnings:
                return path, "corrupt", f"the decoder reports: {warnings}"
        elif kind == "radar":
            read_radar_pcd(path, filters=False, what=f"radar sweep ({channel})")
        else:
            pts = read_lidar_bin(path, "lidar sweep (LIDAR_TOP)")
            bad = int((~np.isfinite(pts)).any(1).sum())
            if bad:
                return path, "corrupt", f"{bad} of {len(pts)} points hold non-finite values"
    except FileNotFoundError:
        return path, "missing", "missing"
    except DataFileError as e:
        return path, "corrupt", e.reason
    except Exception as e:  # noqa: BLE001 - any other failure to read the file is reported, not raised
        return path, "corrupt", f"unreadable ({type(e).__name__}: {e})"
    return path, "ok", ""


# ------------------------------------------------------------------------------------------------- main side
def check_data(dataroot: str | os.PathLike, version: str, splits: Sequence[str], cameras: Sequence[str] = CAMERAS,
               radar_sweeps: int = 8, lidar_sweeps: int = 1, drop_cameras: Sequence[str] = (),
               allow_missing_radars: bool = False, cache_path: str | os.PathLike | None = None,
               workers: int | None = None) -> dict[str, Any]:
    """Check every file of ``splits`` (see the module docstring); returns the report (``ok`` False if anything is
    missing or corrupt, or a sample lacks a channel that is not allowed to be missing)."""
    t0 = time.perf_counter()
    root = Path(dataroot)
    table = open_info_cache(root, version, cache_path, max(radar_sweeps, 0), max(lidar_sweeps, 1))
    names = table.column("scene_name")
    tokens = table.a["s_token"]
    report: dict[str, Any] = {"dataroot": str(root.resolve()), "version": version, "splits": {},
                              "cameras": list(cameras), "radar_sweeps": radar_sweeps, "lidar_sweeps": lidar_sweeps,
                              "missing_channels": [], "missing_files": [], "corrupt_files": []}
    all_indices: set[int] = set()
    for split in splits:
        scenes = set(split_scenes(root, version, split))
        indices = [i for i, n in enumerate(names) if n in scenes]
        report["splits"][split] = len(indices)
        all_indices.update(indices)
        lacking = table.missing_channels(indices, cameras, RADARS if radar_sweeps > 0 else ())
        for channel, idx in lacking.items():
            report["missing_channels"].append({
                "split": split, "channel": channel, "allowed": channel in RADARS and allow_missing_radars,
                "samples": [t.decode() for t in tokens[idx]]})
    read_cameras = [c for c in cameras if c not in set(drop_cameras)]
    files = collect_files(table, sorted(all_indices), read_cameras, radar_sweeps, lidar_sweeps)
    jobs = [(str(root / rel), e["kind"], e["channel"], e.get("size")) for rel, e in files.items()]
    workers = workers or min(os.cpu_count() or 1, 8)
    bar = progress(total=len(jobs), desc="check-data", unit="file")
    results = []
    # spawned, not forked: a forked worker inherits OpenCV's thread pool in a state its own cv2.setNumThreads() waits
    # on for ever once this process has run a parallel cv2 call (a dataset item, an image warp): the hang that stopped
    # CI in the middle of the test suite (tests/test_data_skip_check.py reproduces it in a subprocess).
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker) as pool:
        for res in pool.map(check_file, jobs, chunksize=max(1, min(64, len(jobs) // (workers * 8) or 1))):
            results.append(res)
            bar.update()
    bar.close()
    for (path, status, reason), rel in zip(results, files):
        if status == "ok":
            continue
        entry = files[rel]
        row = {"path": rel, "kind": entry["kind"], "channel": entry["channel"],
               "samples": [tokens[i].decode() for i in entry["samples"]]}
        if status == "missing":
            report["missing_files"].append(row)
        else:
            report["corrupt_files"].append({**row, "reason": reason})
    report["files_checked"] = len(jobs)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    report["ok"] = not (report["missing_files"] or report["corrupt_files"]
                        or any(not m["allowed"] for m in report["missing_channels"]))
    return report


def format_summary(report: dict[str, Any], path: str | os.PathLike | None = None, max_lines: int = 10) -> str:
    """A few lines: what was checked, counts, the first problems, where the report is."""
    splits = ", ".join(f"{k}: {v} samples" for k, v in report["splits"].items())
    gaps = [m for m in report["missing_channels"] if not m["allowed"]]
    head = (f"check-data {report['version']} ({splits}): {report['files_checked']} files read in "
            f"{report['seconds']:.1f} s: {len(report['missing_files'])} missing, {len(report['corrupt_files'])} "
            f"corrupt; {sum(len(m['samples']) for m in gaps)} sample channel(s) missing")
    lines = [head]
    problems = [f"  missing channel {m['channel']} in {len(m['samples'])} sample(s) of {m['split']} "
                f"({', '.join(m['samples'][:3])}{', ...' if len(m['samples']) > 3 else ''})" for m in gaps]
    for kind, rows in (("missing", report["missing_files"]), ("corrupt", report["corrupt_files"])):
        for r in rows:
            why = f": {r['reason']}" if kind == "corrupt" else ""
            problems.append(f"  {kind} {r['path']}{why} ({r['kind']}; {len(r['samples'])} sample(s), e.g. "
                            f"{r['samples'][0]})")
    lines += problems[:max_lines]
    if len(problems) > max_lines:
        lines.append(f"  ... and {len(problems) - max_lines} more")
    lines.append(("OK: nothing missing or corrupt" if report["ok"] else "PROBLEMS FOUND")
                 + (f"; report: {path}" if path is not None else ""))
    return "\n".join(lines)
