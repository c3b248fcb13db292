"""`InfoTable`: the info cache as flat numpy columns in one ``.npz``, read back one sample at a time as a dict.

Why columns and not a list of dicts: per-sample dicts of nested lists cost about 190 KB of Python objects per sample
(measured on the synthetic world: 66 sensor records with two 4x4 poses each, plus the boxes), which for
v1.0-trainval's 34,149 samples means about 6.5 GB per process and minutes of JSON parsing, and DataLoader workers
slowly copy it all (reference counts touch every object). Columns hold the same content in a few hundred bytes per
sensor record, load in seconds, and stay shared between forked workers.

Layout (n samples, r unique sensor records, c calibrations, m annotations):
  s_token, s_scene_token, s_scene_name, s_location, s_prev, s_next (bytes), s_timestamp [n]
  s_lidar [n] record index (-1: the sample has no LIDAR_TOP); s_lidar_sweeps, s_anns [n, 2] (start, count);
  s_cams [n, len(cameras)] (-1: missing);
  s_radars [n, len(radars), 2] (start, count) into ``sweeps`` (record indices, most recent first)
  r_filename (bytes, relative to the dataroot), r_timestamp, r_ego [r, 7] (ego pose: translation, quaternion wxyz),
  r_calib [r] (index into c_*), r_size [r, 2] (width, height; 0 for non-cameras)
  c_pose [c, 7] (sensor -> ego), c_K [c, 3, 3] (NaN for non-cameras)
  a_box [m, 9] (key ego frame), a_label, a_attr, a_category (index into meta.categories), a_num_pts [m, 2],
  a_token, a_instance, a_visibility (bytes)
and ``meta`` (a JSON string): schema, version, fingerprint, sweep counts, camera/radar/category names.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from bevbridge.atomic import atomic_path
from bevbridge.geometry import pose_matrix

__all__ = ["InfoTable", "SampleView"]

_SAMPLE_STRINGS = ("token", "scene_token", "scene_name", "location", "prev", "next")


def _bytes(values: Sequence[str]) -> np.ndarray:
    return np.array([v.encode() for v in values], dtype=bytes) if len(values) else np.zeros(0, "S1")


def _str(b: bytes) -> str:
    return b.decode()


class InfoTable:
    """The info cache's samples (see the module docstring). ``table[i]`` is sample i as a dict::

        {token, scene_token, scene_name, location, timestamp, prev, next,
         lidar: {filename, timestamp, sensor2ego [4, 4], ego2global [4, 4], sweeps: [record, ...]} (None: no
                LIDAR_TOP; such a sample's boxes are in the global frame, and the dataset refuses it),
         cams: {channel: record + K [3, 3], width, height}, radars: {channel: [record, ...] (key first)},
         anns: {boxes [n, 9], label [n], attr [n], num_pts [n, 2], category, tokens, instance_tokens, visibility}}
    """

    def __init__(self, arrays: dict[str, np.ndarray], meta: dict):
        self.a = arrays
        self.meta = meta
        self._index = {t.decode(): i for i, t in enumerate(arrays["s_token"])}

    # ------------------------------------------------------------------------------------------------ building
    @classmethod
    def pack(cls, infos: list[dict], calibs: dict[str, dict], meta: dict) -> InfoTable:
        """From the extractor's per-sample dicts (records carry their sample_data ``token``, ``calib`` token and
        ``ego`` pose as 7 numbers) and the calibrations by token (``pose`` 7 numbers, ``K`` or None)."""
        cams, radars = meta["cameras"], meta["radars"]
        calib_ids = {tok: i for i, tok in enumerate(calibs)}
        rec_ids: dict[str, int] = {}
        recs: list[dict] = []
        sweeps: list[int] = []

        def rec_id(rec: dict) -> int:
            if rec["token"] not in rec_ids:
                rec_ids[rec["token"]] = len(recs)
                recs.append(rec)
            return rec_ids[rec["token"]]

        def span(records: list[dict]) -> tuple[int, int]:
            start = len(sweeps)
            sweeps.extend(rec_id(r) for r in records)
            return start, len(records)

        n = len(infos)
        s_lidar = np.zeros(n, np.int64)
        s_lidar_sweeps = np.zeros((n, 2), np.int64)
        s_cams = np.full((n, len(cams)), -1, np.int64)
        s_radars = np.zeros((n, len(radars), 2), np.int64)
        s_anns = np.zeros((n, 2), np.int64)
        categories = sorted({c for s in infos for c in s["anns"]["category"]})
        ann_cols: dict[str, list] = {k: [] for k in ("boxes", "label", "attr", "num_pts", "category", "tokens",
                                                      "instance_tokens", "visibility")}
        for i, s in enumerate(infos):
            s_lidar[i] = rec_id(s["lidar"]) if s["lidar"] is not None else -1
            s_lidar_sweeps[i] = span(s["lidar_sweeps"])
            for j, c in enumerate(cams):
                if c in s["cams"]:
                    s_cams[i, j] = rec_id(s["cams"][c])
            for j, r in enumerate(radars):
                s_radars[i, j] = span(s["radars"].get(r, []))
            anns = s["anns"]
            s_anns[i] = (len(ann_cols["label"]), len(anns["label"]))
            for k in ann_cols:
                ann_cols[k].extend(anns[k] if k != "category" else [categories.index(c) for c in anns[k]])
        a = {f"s_{k}": _bytes([s[k] for s in infos]) for k in _SAMPLE_STRINGS}
        a.update(s_timestamp=np.array([s["timestamp"] for s in infos], np.int64), s_lidar=s_lidar,
                 s_lidar_sweeps=s_lidar_sweeps, s_cams=s_cams, s_radars=s_radars, s_anns=s_anns,
                 sweeps=np.array(sweeps, np.int64),
                 r_filename=_bytes([r["filename"] for r in recs]),
                 r_timestamp=np.array([r["timestamp"] for r in recs], np.int64),
                 r_ego=np.array([r["ego"] for r in recs], np.float64).reshape(-1, 7),
                 r_calib=np.array([calib_ids[r["calib"]] for r in recs], np.int32),
                 r_size=np.array([(r.get("width", 0), r.get("height", 0)) for r in recs], np.int32).reshape(-1, 2),
                 c_pose=np.array([c["pose"] for c in calibs.values()], np.float64).reshape(-1, 7),
                 c_K=np.array([c["K"] if c["K"] else np.full((3, 3), np.nan) for c in calibs.values()],
                              np.float64).reshape(-1, 3, 3),
                 a_box=np.array(ann_cols["boxes"], np.float64).reshape(-1, 9),
                 a_label=np.array(ann_cols["label"], np.int16), a_attr=np.array(ann_cols["attr"], np.int16),
                 a_category=np.array(ann_cols["category"], np.int16),
                 a_num_pts=np.array(ann_cols["num_pts"], np.int32).reshape(-1, 2),
                 a_token=_bytes(ann_cols["tokens"]), a_instance=_bytes(ann_cols["instance_tokens"]),
                 a_visibility=_bytes(ann_cols["visibility"]))
        return cls(a, {**meta, "categories": categories})

    def save(self, path: str | os.PathLike) -> None:
        """Write one ``.npz`` (atomically: a temp file renamed into place)."""
        with atomic_path(Path(path)) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, meta=np.array(json.dumps(self.meta)), **self.a)

    @classmethod
    def load(cls, path: str | os.PathLike) -> InfoTable:
        """Read a table; raises ValueError if ``path`` is not one (e.g. an old JSON cache, or a truncated file)."""
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise ValueError(f"not an info table (.npz): {type(e).__name__}: {e}") from e
        if "meta" not in arrays:
            raise ValueError("not an info table (.npz): no 'meta' entry")
        return cls(arrays, json.loads(str(arrays.pop("meta"))))

    # ------------------------------------------------------------------------------------------------- reading
    def __len__(self) -> int:
        return len(self.a["s_token"])

    def index_of(self, token: str) -> int | None:
        return self._index.get(token)

    def column(self, name: str) -> list:
        """A per-sample column as Python values (``scene_name``, ``location``, ``timestamp``, ``token``, ...)."""
        col = self.a[f"s_{name}"]
        return [_str(v) for v in col] if col.dtype.kind == "S" else col.tolist()

    def missing_channels(self, indices: Sequence[int], cameras: Sequence[str] = (), radars: Sequence[str] = (),
                         lidar: bool = True) -> dict[str, np.ndarray]:
        """``{channel: table indices (of ``indices``) whose sample has no keyframe of that channel}``, only for
        channels some sample lacks: the cameras and radars named, and LIDAR_TOP if ``lidar``. Vectorised: cheap."""
        a, idx = self.a, np.asarray(indices, np.int64)
        out: dict[str, np.ndarray] = {}
        if lidar:
            out["LIDAR_TOP"] = idx[a["s_lidar"][idx] < 0]
        for c in cameras:
            out[c] = idx[a["s_cams"][idx, self.meta["cameras"].index(c)] < 0]
        for r in radars:
            out[r] = idx[a["s_radars"][idx, self.meta["radars"].index(r), 1] == 0]
        return {k: v for k, v in out.items() if len(v)}

    def labels(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample i's annotation labels ``[n]`` (-1: not a detection class) and (lidar, radar) point counts."""
        start, count = self.a["s_anns"][i]
        return self.a["a_label"][start:start + count].astype(np.int64), self.a["a_num_pts"][start:start + count]

    def __getitem__(self, i: int) -> dict:
        a = self.a
        i = int(i)
        lidar_sweeps = a["sweeps"][slice(*_range(a["s_lidar_sweeps"][i]))]
        radar_ids = [a["sweeps"][slice(*_range(sp))] for sp in a["s_radars"][i]]
        cam_ids = a["s_cams"][i]
        lidar = a["s_lidar"][i]
        ids = np.concatenate([[lidar] if lidar >= 0 else [], lidar_sweeps, cam_ids[cam_ids >= 0],
                              *radar_ids]).astype(np.int64)
        ego = a["r_ego"][ids]
        cal = a["c_pose"][a["r_calib"][ids]]
        T = pose_matrix(np.concatenate([ego[:, :3], cal[:, :3]]), np.concatenate([ego[:, 3:], cal[:, 3:]]))
        poses = {int(r): (T[k + len(ids)], T[k]) for k, r in enumerate(ids)}  # record -> (sensor2ego, ego2global)

        def record(r: int, camera: bool = False) -> dict:
            s2e, e2g = poses[int(r)]
            out = {"filename": _str(a["r_filename"][r]), "timestamp": int(a["r_timestamp"][r]),
                   "sensor2ego": s2e, "ego2global": e2g}
            if camera:
                out["K"] = a["c_K"][a["r_calib"][r]]
                out["width"], out["height"] = (int(v) for v in a["r_size"][r])
            return out

        start, count = a["s_anns"][i]
        sl = slice(start, start + count)
        cats = self.meta["categories"]
        info: dict[str, Any] = {k: _str(a[f"s_{k}"][i]) for k in _SAMPLE_STRINGS}
        info["timestamp"] = int(a["s_timestamp"][i])
        info["lidar"] = {**record(lidar), "sweeps": [record(r) for r in lidar_sweeps]} if lidar >= 0 else None
        info["cams"] = {c: record(r, camera=True) for c, r in zip(self.meta["cameras"], cam_ids) if r >= 0}
        info["radars"] = {c: [record(r) for r in rs] for c, rs in zip(self.meta["radars"], radar_ids) if len(rs)}
        info["anns"] = {
            "boxes": a["a_box"][sl], "label": a["a_label"][sl].astype(np.int64),
            "attr": a["a_attr"][sl].astype(np.int64), "num_pts": a["a_num_pts"][sl].astype(np.int64),
            "category": [cats[c] for c in a["a_category"][sl]], "tokens": [_str(t) for t in a["a_token"][sl]],
            "instance_tokens": [_str(t) for t in a["a_instance"][sl]],
            "visibility": [_str(t) for t in a["a_visibility"][sl]],
        }
        return info

    def view(self, indices: Sequence[int]) -> SampleView:
        return SampleView(self, indices)

    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.a.values())


def _range(span: np.ndarray) -> tuple[int, int]:
    start, count = (int(v) for v in span)
    return start, start + count


class SampleView:
    """A sequence of some samples of a table (a split): ``view[k]`` is a dict, ``view[a:b]`` a list of dicts."""

    def __init__(self, table: InfoTable, indices: Sequence[int]):
        self.table = table
        self.indices = np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self.table[i] for i in self.indices[k]]
        return self.table[self.indices[k]]

    def __iter__(self) -> Iterator[dict]:
        return (self.table[i] for i in self.indices)
