"""The 13 devkit tables (plus captions) from the recorded scenes: tokens, prev/next links, first/last pointers.

Tokens are 32 hex digits, an md5 of (seed, table, scene, index), so the same seed always gives the same tokens and no
two records collide. ego_pose tokens equal their sample_data tokens, as in nuScenes. Records are written with a
fixed key order and no clock-dependent values, so the JSON files are byte-for-byte reproducible.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from bevbridge.atomic import atomic_write_text

from .catalog import ATTRIBUTES, CATEGORIES, VISIBILITY
from .recorder import SceneOutput

__all__ = ["TABLE_NAMES", "make_token", "build_tables", "write_json"]

TABLE_NAMES = ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose", "log",
               "scene", "sample", "sample_data", "sample_annotation", "map")


def make_token(*parts) -> str:
    return hashlib.md5("/".join(str(p) for p in parts).encode()).hexdigest()


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=0, ensure_ascii=False) + "\n")


def _link(records: list[dict]) -> None:
    """Set prev/next along a time-ordered chain."""
    for i, r in enumerate(records):
        r["prev"] = records[i - 1]["token"] if i > 0 else ""
        r["next"] = records[i + 1]["token"] if i + 1 < len(records) else ""


def build_tables(seed: int, scenes: list[SceneOutput], map_files: dict[str, str],
                 modality_of: dict[str, str]) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """``(tables, captions)``: every devkit table as a list of records, and ``{annotation token: {"final_caption"}}``.

    ``map_files`` maps a location to its semantic-prior PNG (relative to the dataroot); ``modality_of`` maps every
    channel to camera | lidar | radar.
    """
    tok = lambda *p: make_token(seed, *p)  # noqa: E731
    t: dict[str, list[dict]] = {name: [] for name in TABLE_NAMES}
    t["category"] = [dict(token=tok("category", n), name=n, description=d) for n, d in CATEGORIES]
    t["attribute"] = [dict(token=tok("attribute", n), name=n, description=d) for n, d in ATTRIBUTES]
    t["visibility"] = [dict(token=tk, level=lv, description=d) for tk, lv, d in VISIBILITY]
    cat_token = {c["name"]: c["token"] for c in t["category"]}
    attr_token = {a["name"]: a["token"] for a in t["attribute"]}
    t["sensor"] = [dict(token=tok("sensor", ch), channel=ch, modality=m) for ch, m in modality_of.items()]
    sensor_token = {s["channel"]: s["token"] for s in t["sensor"]}
    captions: dict[str, dict] = {}
    logs_of_location: dict[str, list[str]] = {}

    for sc in scenes:
        sp = sc.spec
        name = sp.name
        log_token = tok("log", name)
        logs_of_location.setdefault(sp.location, []).append(log_token)
        t["log"].append(dict(token=log_token, logfile=sp.logfile, vehicle="synth-ego", date_captured="2018-08-01",
                             location=sp.location))
        calib_token = {}
        for c in sc.calibs:
            calib_token[c["channel"]] = tok("calibrated_sensor", name, c["channel"])
            t["calibrated_sensor"].append(dict(
                token=calib_token[c["channel"]], sensor_token=sensor_token[c["channel"]],
                translation=c["translation"], rotation=c["rotation"], camera_intrinsic=c["camera_intrinsic"]))
        scene_token = tok("scene", name)
        samples = [dict(token=tok("sample", name, k), timestamp=ts, prev="", next="", scene_token=scene_token)
                   for k, ts in enumerate(sc.sample_times)]
        _link(samples)
        t["sample"] += samples
        t["scene"].append(dict(token=scene_token, log_token=log_token, nbr_samples=len(samples),
                               first_sample_token=samples[0]["token"], last_sample_token=samples[-1]["token"],
                               name=name, description=_describe(sc)))
        chains: dict[str, list[dict]] = {}
        for i, sd in enumerate(sc.sample_data):
            token = tok("sample_data", name, sd["channel"], sd["timestamp"])
            t["ego_pose"].append(dict(token=token, timestamp=sd["timestamp"], rotation=sd["ego_rotation"],
                                      translation=sd["ego_translation"]))
            rec = dict(token=token, sample_token=samples[sd["sample_index"]]["token"], ego_pose_token=token,
                       calibrated_sensor_token=calib_token[sd["channel"]], timestamp=sd["timestamp"],
                       fileformat=sd["fileformat"], is_key_frame=sd["is_key_frame"], height=sd["height"],
                       width=sd["width"], filename=sd["filename"], prev="", next="")
            chains.setdefault(sd["channel"], []).append(rec)
        for chain in chains.values():
            chain.sort(key=lambda r: r["timestamp"])
            _link(chain)
            t["sample_data"] += chain

        per_object: dict[int, list[dict]] = {}
        for a in sc.annotations:
            k, i = a["sample_index"], a["object"]
            token = tok("sample_annotation", name, i, k)
            rec = dict(token=token, sample_token=samples[k]["token"], instance_token=tok("instance", name, i),
                       visibility_token=a["visibility"],
                       attribute_tokens=[attr_token[a["attribute"]]] if a["attribute"] else [],
                       translation=a["translation"], size=a["size"], rotation=a["rotation"], prev="", next="",
                       num_lidar_pts=a["num_lidar_pts"], num_radar_pts=a["num_radar_pts"])
            per_object.setdefault(i, []).append(rec)
            captions[token] = {"final_caption": a["caption"]}
        for i in sorted(per_object):
            chain = per_object[i]  # already in keyframe order
            _link(chain)
            t["sample_annotation"] += chain
            t["instance"].append(dict(token=tok("instance", name, i), category_token=cat_token[sc.instances[i]],
                                      nbr_annotations=len(chain), first_annotation_token=chain[0]["token"],
                                      last_annotation_token=chain[-1]["token"]))

    t["map"] = [dict(token=tok("map", loc), log_tokens=logs, category="semantic_prior", filename=map_files[loc])
                for loc, logs in logs_of_location.items()]
    return t, captions


def _describe(sc: SceneOutput) -> str:
    p = sc.layout_params
    junction = "4-way intersection" if p.get("junction") == "cross" else "T-junction"
    action = "turns right" if p.get("turn") == "right" else "drives straight through"
    return (f"Synthetic: the ego {action} a {junction}, {p.get('lanes_main')} lane(s) per direction, "
            f"{sc.spec.location}")
