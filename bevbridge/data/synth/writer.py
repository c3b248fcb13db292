"""`generate()`: write a whole synthetic nuScenes-format world; `is_complete()` / `ensure_world()`: reuse a cached one.

Layout of the output (``DIR`` = the dataroot)::

    DIR/VERSION/{category,attribute,...,map}.json   the 13 devkit tables
    DIR/VERSION/splits.json                         custom splits: synth_train / synth_val (always written)
    DIR/VERSION/final_caption_bbox_token.json       TOD3Cap-style captions keyed by sample_annotation token
    DIR/maps/expansion/<location>.json              map expansion v1.3, one per location (all four are written)
    DIR/maps/<token>.png                            the devkit's semantic prior (0.1 m/px) per used location
    DIR/samples/<CHANNEL>/..., DIR/sweeps/<CHANNEL>/...   jpg images, .pcd radar, .pcd.bin LiDAR
    DIR/synth_manifest.json                         generation parameters (written last)

The world is written into a temp folder beside ``DIR`` and renamed into place at the end, so ``DIR`` is either a
complete world (with its manifest) or absent; an interrupted run leaves only the hidden temp folder, removed on
failure. An existing ``DIR`` is replaced only if it is a previous synthetic world (it has a manifest) or empty.
Concurrent calls for the same ``DIR`` serialise on a lock file beside it (``.DIR.synth-lock``, left in place).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np

from bevbridge.atomic import atomic_write_bytes, atomic_write_text
from bevbridge.log import progress

from .captions import CAPTIONS_FILENAME
from .catalog import LOCATIONS
from .mapjson import MapBuilder
from .recorder import SceneOutput, SceneSpec, Sweeps, record_scene
from .rig import CAMERAS, LIDAR, RADARS
from .tables import TABLE_NAMES, build_tables, make_token, write_json
from .world import Placement, SceneTiming, layout_for

__all__ = ["generate", "is_complete", "ensure_world", "generation_params", "scene_names", "scene_specs", "DEFAULT_IMAGE_SIZE",
           "DEFAULT_SAMPLES_PER_SCENE", "DEFAULT_SCENES", "MANIFEST", "TRAIN_SPLIT", "VAL_SPLIT"]

log = logging.getLogger(__name__)

DEFAULT_SCENES = 10
DEFAULT_SAMPLES_PER_SCENE = 20
DEFAULT_IMAGE_SIZE = (144, 256)  # (H, W): nuScenes' 900x1600 scaled by 0.16 (same 16:9 aspect, same field of view)
FORMAT_VERSION = 1  # bump whenever the generator's output changes, so cached worlds are regenerated
MANIFEST = "synth_manifest.json"
TRAIN_SPLIT, VAL_SPLIT = "synth_train", "synth_val"
MINI_TRAIN = ("scene-0061", "scene-0553", "scene-0655", "scene-0757", "scene-0796", "scene-1077", "scene-1094",
              "scene-1100")
MINI_VAL = ("scene-0103", "scene-0916")
_GAP = 60.0  # m between scenes of one location, and from the map's origin


def scene_names(n: int) -> tuple[list[str], dict[str, list[str]]]:
    """Scene names and the splits.json content for ``n`` scenes.

    10 scenes reuse the devkit's mini split names (8 mini_train + 2 mini_val), so ``DetectionEval(eval_set='mini_val')``
    works on a ``*-mini`` version. Any other count is named ``synth-0000``...; the last ``max(1, round(n / 5))``
    scenes form the validation split (a single scene is in both). splits.json always holds ``synth_train`` and
    ``synth_val``.
    """
    if n == 10:
        names = sorted(MINI_TRAIN + MINI_VAL)
        return names, {TRAIN_SPLIT: list(MINI_TRAIN), VAL_SPLIT: list(MINI_VAL)}
    names = [f"synth-{i:04d}" for i in range(n)]
    n_val = max(1, round(n / 5)) if n >= 2 else 0
    val = names[n - n_val:] if n_val else names
    train = names[: n - n_val] if n_val else names
    return names, {TRAIN_SPLIT: train, VAL_SPLIT: val}


def generation_params(*, scenes: int | None = None, samples_per_scene: int = DEFAULT_SAMPLES_PER_SCENE,
                      image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE, seed: int = 0, version: str = "v1.0-mini",
                      sweeps: Sweeps | tuple[int, int, int] = Sweeps(), lidar_azimuths: int = 1024) -> dict:
    """The normalised, validated parameters a world is identified by (what the manifest records)."""
    scenes = DEFAULT_SCENES if scenes is None else int(scenes)
    sw = sweeps if isinstance(sweeps, Sweeps) else Sweeps(*sweeps)
    H, W = (int(v) for v in image_size)
    problems = []
    if scenes < 1:
        problems.append(f"scenes must be >= 1, got {scenes}")
    if int(samples_per_scene) < 1:
        problems.append(f"samples_per_scene must be >= 1, got {samples_per_scene}")
    if H < 16 or W < 16:
        problems.append(f"image_size (H, W) must both be >= 16 pixels, got {(H, W)}")
    if min(sw.lidar, sw.radar, sw.camera) < 0:
        problems.append(f"sweeps must be >= 0, got {sw}")
    if int(lidar_azimuths) < 64:
        problems.append(f"lidar_azimuths must be >= 64, got {lidar_azimuths}")
    if not version or "/" in version or version.startswith("."):
        problems.append(f"version must be a plain folder name like 'v1.0-mini', got {version!r}")
    if problems:
        raise ValueError("synthetic world: " + "; ".join(problems))
    return dict(format=FORMAT_VERSION, scenes=scenes, samples_per_scene=int(samples_per_scene), image_size=[H, W],
                seed=int(seed), version=version, sweeps=[sw.lidar, sw.radar, sw.camera],
                lidar_azimuths=int(lidar_azimuths))


def _read_manifest(dataroot: Path) -> dict | None:
    try:
        return json.loads((dataroot / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def is_complete(dataroot: str | os.PathLike, **params) -> bool:
    """True if ``dataroot`` holds a finished world generated with exactly these parameters (same keywords as
    :func:`generate`, defaults filled in)."""
    dataroot = Path(dataroot)
    manifest = _read_manifest(dataroot)
    if manifest is None or manifest.get("params") != generation_params(**params):
        return False
    table_root = dataroot / manifest["params"]["version"]
    return all((table_root / f"{name}.json").is_file() for name in TABLE_NAMES)


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    """An exclusive lock beside ``out`` (a hidden ``.NAME.synth-lock`` file, left in place): concurrent
    generate/ensure_world calls for the same folder (e.g. several torchrun ranks) run one after the other."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.synth-lock", "a") as f:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - no advisory locks on this platform
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_world(out: str | os.PathLike, workers: int = 1, **params) -> Path:
    """The dataroot of a world with these parameters at ``out``: reused if complete, else (re)generated. Safe to
    call from several processes at once: one generates, the others wait and reuse it."""
    out = Path(out).resolve()
    with _lock(out):
        if is_complete(out, **params):
            log.info("synthetic world: reusing %s", out)
            return out
        return _generate(out, generation_params(**params), workers)


def scene_specs(dataroot: str | os.PathLike) -> dict[str, SceneSpec]:
    """The specs of a written world's scenes by name (from its manifest): ``SceneRecorder(spec)`` re-creates any
    scene's world, rig and captures exactly, e.g. to get per-pixel instance ids for a written camera image."""
    manifest = _read_manifest(Path(dataroot))
    if manifest is None:
        raise FileNotFoundError(f"{Path(dataroot) / MANIFEST} not found: {dataroot} is not a synthetic world")
    params = manifest["params"]
    if params.get("format") != FORMAT_VERSION:
        raise ValueError(f"{dataroot} was written by synth format {params.get('format')}, this code writes "
                         f"format {FORMAT_VERSION}; regenerate it")
    return {s.name: s for s in _plan(params)[0]}


def _plan(params: dict) -> tuple[list[SceneSpec], dict[str, MapBuilder], dict[str, list[str]]]:
    """Scene specs with their global placement, the map builders per location, and the splits."""
    n, seed = params["scenes"], params["seed"]
    names, splits = scene_names(n)
    timing = SceneTiming(params["samples_per_scene"])
    cursor = {loc: _GAP for loc in LOCATIONS}
    height = {loc: 0.0 for loc in LOCATIONS}
    specs, placed = [], []
    for i, name in enumerate(names):
        location = LOCATIONS[i % len(LOCATIONS)]
        key = (seed, i)
        layout, _ = layout_for(key, timing)
        theta = float(np.random.default_rng([seed, i, 7]).uniform(-math.pi, math.pi))
        x0, y0, x1, y1 = layout.extent
        corners = Placement(location, theta, np.zeros(2)).to_global(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]))
        lo, hi = corners.min(0), corners.max(0)
        origin = (cursor[location] - lo[0], _GAP - lo[1])
        cursor[location] += hi[0] - lo[0] + _GAP
        height[location] = max(height[location], hi[1] - lo[1])
        specs.append(SceneSpec(index=i, name=name, location=location, key=key, n_samples=params["samples_per_scene"],
                               origin=(float(origin[0]), float(origin[1])), theta=theta,
                               image_size=tuple(params["image_size"]), sweeps=Sweeps(*params["sweeps"]),
                               lidar_azimuths=params["lidar_azimuths"], logfile=f"synth-s{seed}-{i:04d}",
                               time_base=1_533_000_000_000_000 + i * 60_000_000))
        placed.append((name, layout, Placement(location, theta, np.array(origin))))
    maps = {loc: MapBuilder(loc, lambda *p: make_token(seed, "map", *p)) for loc in LOCATIONS}
    for name, layout, placement in placed:
        maps[placement.location].add_scene(name, layout, placement)
    return specs, maps, splits


def _record(spec: SceneSpec, root: str) -> SceneOutput:
    import torch

    torch.set_num_threads(1)  # one scene per process; the processes are the parallelism
    return record_scene(spec, Path(root))


def generate(out: str | os.PathLike, *, scenes: int | None = None,
             samples_per_scene: int = DEFAULT_SAMPLES_PER_SCENE, image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
             seed: int = 0, version: str = "v1.0-mini", sweeps: Sweeps | tuple[int, int, int] = Sweeps(),
             lidar_azimuths: int = 1024, workers: int = 1) -> Path:
    """Write a synthetic nuScenes-format world to ``out`` (the dataroot) and return it.

    ``scenes`` (default 10, named like the devkit's mini split), ``samples_per_scene`` keyframes at 2 Hz,
    ``image_size = (H, W)`` for the 6 cameras, ``sweeps = (lidar, radar, camera)`` non-key captures between
    keyframes, ``lidar_azimuths`` rays per beam and sweep, ``workers`` processes (scenes are independent and the
    output does not depend on the number of workers). The same parameters always give the same bytes.
    """
    params = generation_params(scenes=scenes, samples_per_scene=samples_per_scene, image_size=image_size, seed=seed,
                               version=version, sweeps=sweeps, lidar_azimuths=lidar_azimuths)
    out = Path(out).resolve()
    with _lock(out):
        return _generate(out, params, workers)


def _generate(out: Path, params: dict, workers: int) -> Path:
    if out.exists() and not (out.is_dir() and (_read_manifest(out) is not None or not any(out.iterdir()))):
        raise FileExistsError(f"synthetic world: {out} exists and is not a synthetic world (no {MANIFEST}); "
                              f"refusing to replace it. Choose another --out or remove it yourself.")
    tmp = out.parent / f".{out.name}.synth-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    t0 = time.perf_counter()
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the work is many small array ops: extra threads only add synchronisation
    try:
        specs, maps, splits = _plan(params)
        outputs = _record_all(specs, tmp, workers)
        _write_metadata(tmp, params, specs, outputs, maps, splits)
        old = out.parent / f".{out.name}.synth-old-{os.getpid()}"
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(threads)
    log.info("synthetic world: %d scenes x %d samples written to %s in %.1f s", params["scenes"],
             params["samples_per_scene"], out, time.perf_counter() - t0)
    return out


def _record_all(specs: list[SceneSpec], root: Path, workers: int) -> list[SceneOutput]:
    bar = progress(total=sum(s.n_samples for s in specs), desc="synth", unit="sample")
    outputs: list[SceneOutput] = []
    try:
        if workers <= 1 or len(specs) == 1:
            for spec in specs:
                outputs.append(record_scene(spec, root))
                bar.update(spec.n_samples)
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(workers, len(specs)), mp_context=ctx) as pool:
                futures = [pool.submit(_record, spec, str(root)) for spec in specs]
                for fut, spec in zip(futures, specs):
                    outputs.append(fut.result())
                    bar.update(spec.n_samples)
    finally:
        bar.close()
    return outputs


def _write_metadata(root: Path, params: dict, specs: list[SceneSpec], outputs: list[SceneOutput],
                    maps: dict[str, MapBuilder], splits: dict[str, list[str]]) -> None:
    seed = params["seed"]
    used = sorted({s.location for s in specs}, key=LOCATIONS.index)
    map_files = {loc: f"maps/{make_token(seed, 'map', loc)}.png" for loc in used}
    for loc, builder in maps.items():
        write_json(root / "maps" / "expansion" / f"{loc}.json", builder.to_json())
        if loc in used:
            atomic_write_bytes(root / map_files[loc], builder.semantic_prior_png())
    modality_of = {**{c: "camera" for c in CAMERAS}, LIDAR[0]: "lidar", **{r: "radar" for r in RADARS}}
    tables, captions = build_tables(seed, outputs, map_files, modality_of)
    table_root = root / params["version"]
    for name in TABLE_NAMES:
        write_json(table_root / f"{name}.json", tables[name])
    write_json(table_root / "splits.json", splits)
    write_json(table_root / CAPTIONS_FILENAME, captions)
    manifest = dict(generator="bevbridge.data.synth", params=params, scenes=[s.name for s in specs], splits=splits,
                    captions=f"{params['version']}/{CAPTIONS_FILENAME}")
    atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=1) + "\n")
