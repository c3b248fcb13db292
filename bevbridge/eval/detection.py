"""Official nuScenes detection metrics: run the devkit's ``DetectionEval`` on a results JSON.

:func:`evaluate_detections` checks the results file first (clear errors instead of the devkit's bare asserts), then
runs ``nuscenes.eval.detection.evaluate.DetectionEval`` with the standard ``detection_cvpr_2019`` config and
returns a plain dict: ``mAP``, ``NDS``, the five TP errors ``mATE mASE mAOE mAVE mAAE``, per-class ``AP/<class>``
and per-class TP errors ``ATE/<class>`` ... ``AAE/<class>`` (NaN where the devkit defines none, e.g. AOE of
traffic cones).

Splits: the devkit's predefined names (``train``, ``val``, ``mini_train``, ``mini_val``, ...; the mini ones need a
version ending in ``mini``, the others ``trainval``) or any split named in ``DATAROOT/VERSION/splits.json``
(``{"name": [scene names]}``), which devkit 1.2.0 reads for every name that is not predefined. A predefined name
always means the devkit's hard-coded scene list, even if splits.json also defines it.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
from os import PathLike
from pathlib import Path
from typing import Any

from bevbridge.data.batch import ATTRIBUTE_NAMES, DETECTION_CLASSES
from bevbridge.eval.detection_export import MAX_BOXES_PER_SAMPLE

__all__ = ["load_nuscenes", "split_sample_tokens", "load_results", "evaluate_detections", "format_detection_summary"]

TP_NAMES = {"trans_err": "ATE", "scale_err": "ASE", "orient_err": "AOE", "vel_err": "AVE", "attr_err": "AAE"}
_BOX_FIELDS = {"translation": 3, "size": 3, "rotation": 4, "velocity": 2}


@contextlib.contextmanager
def _quiet(verbose: bool):
    """Swallow the devkit's prints and tqdm bars unless ``verbose``."""
    if verbose:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def load_nuscenes(dataroot: str | PathLike, version: str, verbose: bool = False):
    """A devkit ``NuScenes`` with a clear error when the folder or the version's tables are missing."""
    from nuscenes import NuScenes

    table_dir = Path(dataroot) / version
    if not table_dir.is_dir():
        raise FileNotFoundError(f"nuScenes tables not found: {table_dir} is not a folder (check --dataroot and "
                                f"--version)")
    with _quiet(verbose):
        try:
            return NuScenes(version=version, dataroot=str(dataroot), verbose=verbose)
        except (AssertionError, FileNotFoundError, KeyError) as e:
            raise ValueError(f"the devkit could not load {table_dir}: {e}") from e


def split_sample_tokens(nusc, split: str) -> list[str]:
    """The sample tokens of ``split`` (predefined or from splits.json), in the order of the sample table."""
    from nuscenes.utils.splits import get_scenes_of_split, is_predefined_split

    version = nusc.version
    if is_predefined_split(split):
        need = "mini" if split.startswith("mini_") else ("test" if split == "test" else "trainval")
        if not version.endswith(need):
            splits_json = Path(nusc.dataroot) / version / "splits.json"
            hint = ""
            if splits_json.is_file():
                hint = f"; {splits_json} defines {sorted(json.loads(splits_json.read_text()))}"
            raise ValueError(f"split {split!r} is a predefined nuScenes split that needs a version ending in "
                             f"'{need}', but the version is {version!r}{hint}")
    try:
        scenes = set(get_scenes_of_split(split, nusc))
    except ValueError as e:  # the devkit's message names the splits.json path
        raise ValueError(f"unknown split {split!r}: not a predefined nuScenes split, and {e}") from e
    scene_tokens = {s["token"] for s in nusc.scene if s["name"] in scenes}
    tokens = [s["token"] for s in nusc.sample if s["scene_token"] in scene_tokens]
    if not tokens:
        raise ValueError(f"split {split!r} has no samples in {nusc.dataroot}/{version} (its scenes: "
                         f"{sorted(scenes)[:5]}{' ...' if len(scenes) > 5 else ''})")
    return tokens


def _check_box(box: Any, token: str, k: int, where: str) -> None:
    at = f"{where}: results[{token!r}][{k}]"
    if not isinstance(box, dict):
        raise ValueError(f"{at} must be an object, got {type(box).__name__}")
    for name, n in _BOX_FIELDS.items():
        v = box.get(name)
        if not (isinstance(v, list) and len(v) == n and all(isinstance(x, (int, float)) for x in v)):
            raise ValueError(f"{at}.{name} must be a list of {n} numbers, got {v!r}")
    if box.get("sample_token") != token:
        raise ValueError(f"{at}.sample_token is {box.get('sample_token')!r}, expected {token!r}")
    if box.get("detection_name") not in DETECTION_CLASSES:
        raise ValueError(f"{at}.detection_name {box.get('detection_name')!r} is not a nuScenes detection class; "
                         f"expected one of {', '.join(DETECTION_CLASSES)}")
    if box.get("attribute_name") not in ("", *ATTRIBUTE_NAMES):
        raise ValueError(f"{at}.attribute_name {box.get('attribute_name')!r} is not a nuScenes attribute; expected "
                         f"'' or one of {', '.join(ATTRIBUTE_NAMES)}")
    score = box.get("detection_score")
    if not isinstance(score, (int, float)) or not math.isfinite(score):
        raise ValueError(f"{at}.detection_score must be a finite number, got {score!r}")
    if any(not math.isfinite(x) for name in _BOX_FIELDS for x in box[name]) or min(box["size"]) <= 0:
        raise ValueError(f"{at}: translation/size/rotation/velocity must be finite and sizes > 0, got {box}")


def load_results(path: str | PathLike, split_tokens: list[str]) -> dict:
    """Read and check a results JSON against the split: structure, classes, attributes, box count, sample set."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict) or not isinstance(data.get("meta"),
                                                                                                 dict):
        raise ValueError(f"{path}: expected an object with 'meta' (dict) and 'results' (sample token -> list of "
                         f"boxes), got keys {sorted(data) if isinstance(data, dict) else type(data).__name__}")
    results = data["results"]
    wanted = set(split_tokens)
    missing = [t for t in split_tokens if t not in results]
    extra = [t for t in results if t not in wanted]
    if missing:
        hint = (f"; it has {len(extra)} tokens of other samples: made for another split or version?" if extra else
                "; every sample needs an entry, an empty list if nothing was detected")
        raise ValueError(f"{path}: {len(missing)} of the split's {len(wanted)} sample tokens are missing from "
                         f"'results' (e.g. {missing[0]}){hint}")
    if extra:
        raise ValueError(f"{path}: {len(extra)} sample tokens in 'results' are not in the split (e.g. {extra[0]}); "
                         f"was the file made for another split or version?")
    for token, boxes in results.items():
        if not isinstance(boxes, list):
            raise ValueError(f"{path}: results[{token!r}] must be a list of boxes, got {type(boxes).__name__}")
        if len(boxes) > MAX_BOXES_PER_SAMPLE:
            raise ValueError(f"{path}: results[{token!r}] has {len(boxes)} boxes; the devkit allows at most "
                             f"{MAX_BOXES_PER_SAMPLE} per sample")
        for k, box in enumerate(boxes):
            _check_box(box, token, k, str(path))
    return data


def evaluate_detections(results_path: str | PathLike, dataroot: str | PathLike | None = None,
                        version: str | None = None, split: str = "val", nusc=None, verbose: bool = False,
                        output_dir: str | PathLike | None = None) -> dict[str, float]:
    """Evaluate a results JSON with the devkit's ``DetectionEval`` (``detection_cvpr_2019``).

    Pass either ``nusc`` (a loaded ``NuScenes``, reused across calls) or ``dataroot`` and ``version``.
    ``verbose`` lets the devkit print; ``output_dir`` keeps its metrics_summary.json/metrics_details.json.
    """
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    if not Path(results_path).is_file():  # before the (slow) table loading
        raise FileNotFoundError(f"results file not found: {results_path}")
    if nusc is None:
        if dataroot is None or version is None:
            raise ValueError("evaluate_detections needs either nusc or both dataroot and version")
        nusc = load_nuscenes(dataroot, version, verbose)
    tokens = split_sample_tokens(nusc, split)
    load_results(results_path, tokens)

    cfg = config_factory("detection_cvpr_2019")
    with contextlib.ExitStack() as stack:
        out = output_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="bevbridge-deteval-"))
        with _quiet(verbose):
            ev = DetectionEval(nusc, config=cfg, result_path=str(results_path), eval_set=split, output_dir=str(out),
                               verbose=verbose)
            metrics, details = ev.evaluate()
        summary = metrics.serialize()
        if output_dir is not None:
            summary_out = {**summary, "meta": ev.meta}
            (Path(out) / "metrics_summary.json").write_text(json.dumps(summary_out, indent=2))
            (Path(out) / "metrics_details.json").write_text(json.dumps(details.serialize(), indent=2))

    result: dict[str, float] = {"mAP": float(summary["mean_ap"]), "NDS": float(summary["nd_score"])}
    for key, short in TP_NAMES.items():
        result[f"m{short}"] = float(summary["tp_errors"][key])
    for name in DETECTION_CLASSES:
        result[f"AP/{name}"] = float(summary["mean_dist_aps"][name])
    for name in DETECTION_CLASSES:
        for key, short in TP_NAMES.items():
            result[f"{short}/{name}"] = float(summary["label_tp_errors"][name][key])
    result["num_samples"] = float(len(tokens))
    return result


def format_detection_summary(metrics: dict[str, float]) -> str:
    """A readable table: the headline numbers, then AP and TP errors per class."""
    def f(v: float) -> str:
        return "   n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:6.4f}"

    lines = [f"mAP   {f(metrics['mAP'])}    NDS   {f(metrics['NDS'])}    "
             f"({int(metrics.get('num_samples', 0))} samples)",
             "  ".join(f"m{s} {f(metrics[f'm{s}'])}" for s in TP_NAMES.values()),
             "",
             f"{'class':<22}{'AP':>8}" + "".join(f"{s:>8}" for s in TP_NAMES.values())]
    for name in DETECTION_CLASSES:
        lines.append(f"{name:<22}{f(metrics[f'AP/{name}']):>8}"
                     + "".join(f"{f(metrics[f'{s}/{name}']):>8}" for s in TP_NAMES.values()))
    return "\n".join(lines)
