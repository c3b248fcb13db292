"""Sensor files read with cheap integrity checks, and the data layer's one-line errors.

Each reader turns a missing or corrupt file into one line that names it, instead of a silent wrong sample or an
obscure exception from deep inside a decoder:

- camera JPEG (:func:`read_image`): empty file; no JPEG end-of-image marker in the last bytes (a truncated JPEG,
  which OpenCV would decode with grey rows after printing "Premature end of JPEG file"); not decodable (garbage);
  decoded size differing from the tables' width x height.
- radar PCD (:func:`bevbridge.data.sweeps.read_radar_pcd`): empty file; header without a DATA line; missing header
  keys; fewer data bytes than WIDTH x the point size.
- LiDAR ``.pcd.bin`` (:func:`read_lidar_bin`): empty file; a size that is not a whole number of 5-float32 points.
  A ``.pcd.bin`` stores no point count, so a file cut exactly at a point boundary (a multiple of 20 bytes) cannot
  be told from a shorter sweep: such a truncation is not detectable from the file alone.

The checks cost no extra reads: sizes and markers of the bytes that are decoded anyway (benchmarks/RESULTS.md).
``bevbridge check-data`` (bevbridge/data/check.py) reads everything a split references with the same readers plus
slower checks (libjpeg's warnings on corrupt entropy data, non-finite LiDAR values).

Errors: every class here derives from :class:`DataError`; a file's error is a :class:`MissingDataFile` (also a
``FileNotFoundError``) or a :class:`CorruptDataFile` (also a ``ValueError``), with ``path`` and ``reason``. When a
DataLoader worker raises one, PyTorch re-raises the same class in the main process with the worker's whole traceback
as its message; :class:`DataError` keeps only the original one-line message then (the traceback stays in
``worker_traceback``), so the CLI can print one line.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["DataError", "DataFileError", "MissingDataFile", "CorruptDataFile", "MissingChannels",
           "TooManyBadSamples", "read_image", "read_lidar_bin", "JPEG_TAIL_BYTES"]

JPEG_TAIL_BYTES = 64  # the end-of-image marker must lie in the file's last bytes (nuScenes JPEGs end with it)


class DataError(Exception):
    """A data problem the user can act on; its message is one line (see the module docstring)."""

    worker_traceback: str | None = None

    def __init__(self, message: str = "", *args):
        if message.startswith("Caught ") and "\nOriginal Traceback" in message:  # re-raised from a DataLoader worker
            self.worker_traceback = message
            last = message.rstrip().splitlines()[-1]
            prefix = f"{type(self).__module__}.{type(self).__qualname__}: "
            message = last[len(prefix):] if last.startswith(prefix) else last
        super().__init__(message, *args)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DataFileError(DataError):
    """A sensor file is missing or corrupt. ``path``: the file; ``reason``: what is wrong with it."""

    def __init__(self, message: str = "", path: str | os.PathLike | None = None, reason: str = ""):
        super().__init__(message)
        self.path = str(path) if path is not None else None
        self.reason = reason


class MissingDataFile(DataFileError, FileNotFoundError):
    pass


class CorruptDataFile(DataFileError, ValueError):
    pass


class MissingChannels(DataError, ValueError):
    """Samples of a split lack a sensor channel the dataset needs (found when the dataset opens)."""


class TooManyBadSamples(DataError, RuntimeError):
    """More bad samples were skipped than ``max_bad_fraction`` of the split allows."""


def _context(what: str, sample: str) -> tuple[str, str]:
    return what, f" (sample {sample})" if sample else ""


def corrupt(what: str, reason: str, path: Path, sample: str = "") -> CorruptDataFile:
    what, ctx = _context(what, sample)
    return CorruptDataFile(f"corrupt {what}: {path}: {reason}{ctx}", path=path, reason=reason)


def missing(what: str, path: Path, sample: str = "") -> MissingDataFile:
    what, ctx = _context(what, sample)
    return MissingDataFile(f"{what} missing: {path}{ctx}", path=path, reason="missing")


def read_bytes(path: Path, what: str, sample: str = "") -> bytes:
    """The file's bytes; a missing file or an empty one is a one-line error."""
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise missing(what, path, sample) from None
    if not raw:
        raise corrupt(what, "empty file (0 bytes)", path, sample)
    return raw


def read_image(path: str | os.PathLike, size: tuple[int, int] | None = None, what: str = "camera image",
               sample: str = "") -> np.ndarray:
    """A camera image as ``uint8 [H, W, 3]`` BGR (as ``cv2.imread``), checked as the module docstring says.

    ``size``: the (width, height) the tables record (0 or None: not checked)."""
    import cv2

    path = Path(path)
    raw = read_bytes(path, what, sample)
    if raw[:2] == b"\xff\xd8" and raw.rfind(b"\xff\xd9", max(0, len(raw) - JPEG_TAIL_BYTES)) < 0:
        raise corrupt(what, f"truncated JPEG (no end-of-image marker; {len(raw)} bytes)", path, sample)
    img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise corrupt(what, f"not a decodable image ({len(raw)} bytes starting {raw[:4].hex()})", path, sample)
    if size and size[0] and size[1] and (img.shape[1], img.shape[0]) != tuple(size):
        raise corrupt(what, f"the image is {img.shape[1]}x{img.shape[0]}, the tables say {size[0]}x{size[1]}",
                      path, sample)
    return img


LIDAR_POINT_BYTES = 5 * 4  # nuScenes .pcd.bin: float32 x, y, z, intensity, ring index


def read_lidar_bin(path: str | os.PathLike, what: str = "lidar sweep", sample: str = "") -> np.ndarray:
    """``float32 [n, 5]`` points of a nuScenes ``.pcd.bin`` (what ``LidarPointCloud.from_file`` reads, with the ring
    index kept); an empty file or a size that is not a multiple of 20 bytes is a one-line error."""
    path = Path(path)
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise missing(what, path, sample) from None
    if raw.size == 0:
        raise corrupt(what, "empty file (0 bytes)", path, sample)
    if raw.size % LIDAR_POINT_BYTES:
        raise corrupt(what, f"truncated .pcd.bin: {raw.size} bytes is not a whole number of 5-float32 points "
                            f"({raw.size / LIDAR_POINT_BYTES:.2f})", path, sample)
    return raw.view(np.float32).reshape(-1, 5)
