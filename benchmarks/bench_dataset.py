"""Dataset layer speed: info-cache build, per-sample ``__getitem__`` with CTAB-style options, and its parts.

    .venv/bin/python benchmarks/bench_dataset.py [--dataroot DIR] [--samples 40] [--getitem-only]

Without ``--dataroot`` it uses the default synthetic world (10 scenes x 20 samples, 144 x 256), generated into
``.cache/bench_synth_default`` the first time (~35 s).

Prints tables. ``__getitem__`` runs with one torch thread, as in a DataLoader worker, with CTAB's options: 6 cameras
at the world's image size, 2 past frames, 8 radar sweeps, 1 LiDAR sweep, a 200 x 200 map target over 102.4 m with
the 7 CTAB classes, training augmentation (image + BEV). Each part's time is measured by wrapping the dataset's
helpers. Side by side on the same inputs: our map rasteriser vs the devkit's ``NuScenesMap.get_map_mask`` and our
radar reader vs ``RadarPointCloud.from_file``; the decode time of a 1600 x 900 JPEG (nuScenes' camera size); and the
cost of the integrity checks (bevbridge/data/integrity.py): each checked reader against the plain read it replaced
(``cv2.imread``; ``is_file`` + ``LidarPointCloud.from_file``), interleaved on the same files. ``--baseline DIR``
compares ``__getitem__`` side by side with another checkout's code (e.g. ``git archive`` of an earlier commit
unpacked in DIR), loaded in the same process under another package name: the two datasets alternate sample by
sample (so both see the same load) and must return identical samples.
Timings are absolute: the load average is printed with them (a 2-core machine shared with other jobs).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from bevbridge.data import nuscenes as nuscenes_module
from bevbridge.data.bevmap import MapRasterizer
from bevbridge.data.nuscenes import NuScenesDataset
from bevbridge.data.nuscenes_info import build_info_cache, load_info_cache
from bevbridge.data.transforms import BEVAug, ImageAug
from bevbridge.geometry import BEVGrid, transform_points

CTAB_MAP_CLASSES = ("drivable_area", "carpark_area", "ped_crossing", "walkway", "stop_line", "divider", "vehicle")
MAP_GRID = BEVGrid.square(51.2, 0.512)


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def bench_cache(dataroot: str, version: str, out: Path) -> list[tuple[str, str]]:
    rows = []
    for workers in (1, 2):
        t = time.perf_counter()
        build_info_cache(dataroot, version, out, workers=workers)
        rows.append((f"info cache build, {workers} process(es)", f"{time.perf_counter() - t:.2f} s"))
    t = time.perf_counter()
    table = load_info_cache(out, version)
    n = len(table)
    rows += [("info cache load", f"{time.perf_counter() - t:.3f} s"),
             (f"info cache size ({n} samples): file / in memory",
              f"{out.stat().st_size / 1e6:.2f} MB / {table.nbytes() / 1e6:.2f} MB "
              f"({out.stat().st_size / n / 1e3:.1f} / {table.nbytes() / n / 1e3:.1f} KB per sample)")]
    return rows


def timed(obj, name: str, acc: dict, label: str, undo: list) -> None:
    """Wrap ``obj.name`` so each call adds its duration to ``acc[label]``; ``undo`` collects the restore steps."""
    fn = getattr(obj, name)
    undo.append(lambda: setattr(obj, name, fn))

    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            acc[label] += time.perf_counter() - t

    setattr(obj, name, wrapper)


def bench_getitem(dataroot: str, version: str, split: str, cache: Path, n: int,
                  size: tuple[int, int] | None) -> tuple[list, NuScenesDataset]:
    torch.set_num_threads(1)  # as in a DataLoader worker
    import cv2

    cv2.setNumThreads(1)
    img = next((Path(dataroot) / "samples" / "CAM_FRONT").iterdir())
    H, W = size or cv2.imread(str(img)).shape[:2]
    ds = NuScenesDataset(dataroot, version, split, image_size=(H, W), image_aug=ImageAug((H, W)), bev_aug=BEVAug(),
                         train=True, num_past_frames=2, radar_sweeps=8, lidar_sweeps=1, map_grid=MAP_GRID,
                         map_classes=CTAB_MAP_CLASSES, cache_path=cache)
    acc: dict[str, float] = defaultdict(float)
    cls, undo = NuScenesDataset, []
    timed(cls, "_cameras", acc, "cameras: decode + warp (key and past, 18 images)", undo)
    timed(nuscenes_module, "load_radar_sweeps", acc, "radar: 5 radars x 8 sweeps", undo)
    timed(nuscenes_module, "load_lidar_sweeps", acc, "lidar: 1 sweep", undo)
    timed(cls, "_map_targets", acc, "map target 7 x 200 x 200 (incl. vehicle)", undo)
    ds[0]  # warm up: map JSON + layer indices load once per process
    acc.clear()
    idx = np.linspace(0, len(ds) - 1, min(n, len(ds))).astype(int)
    times, boxes, radar_pts = [], [], []
    for i in idx:
        t = time.perf_counter()
        s = ds[int(i)]
        times.append(time.perf_counter() - t)
        boxes.append(len(s.gt_boxes))
        radar_pts.append(len(s.radar))
    for restore in undo:
        restore()
    src = cv2.imread(str(img)).shape[:2]
    rows = [(f"__getitem__ ({len(idx)} samples, {src[1]}x{src[0]} -> {W}x{H}), median",
             f"{1e3 * statistics.median(times):.1f} ms"),
            ("__getitem__ mean", f"{1e3 * statistics.mean(times):.1f} ms")]
    rows += [(f"  {k} (mean)", f"{1e3 * v / len(idx):.1f} ms") for k, v in acc.items()]
    rows.append(("  mean boxes / radar points per sample", f"{np.mean(boxes):.0f} / {np.mean(radar_pts):.0f}"))
    return rows, ds


def bench_map(ds: NuScenesDataset, n: int) -> list[tuple[str, str]]:
    """Our rasteriser vs the devkit's get_map_mask on the same poses (6 map classes = 8 layers, 200 x 200)."""
    from nuscenes.map_expansion.map_api import NuScenesMap

    classes = CTAB_MAP_CLASSES[:-1]
    ours = MapRasterizer(ds.dataroot, MAP_GRID, classes)
    layers = sorted({layer for c in classes for layer in ours.layers[c]})
    maps = {}
    t_ours, t_devkit = [], []
    for info in ds.samples[:: max(1, len(ds) // n)][:n]:
        pose = np.asarray(info["lidar"]["ego2global"])
        loc = info["location"]
        if loc not in maps:
            maps[loc] = NuScenesMap(dataroot=str(ds.dataroot), map_name=loc)
            ours.masks(loc, pose)  # builds the layer indices once
        g = MAP_GRID
        centre = transform_points(pose, np.array([[g.res / 2, g.res / 2, 0.0]]))[0]
        yaw = math.degrees(math.atan2(pose[1, 0], pose[0, 0]))
        t = time.perf_counter()
        ours.masks(loc, pose)
        t_ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        maps[loc].get_map_mask((centre[0], centre[1], 102.4, 102.4), yaw, layers, canvas_size=g.shape)
        t_devkit.append(time.perf_counter() - t)
    m = maps[next(iter(maps))]
    counts = ", ".join(f"{layer} {len(getattr(m, layer))}" for layer in layers)
    return [(f"map, ours (MapRasterizer.masks), median of {len(t_ours)}", f"{1e3 * statistics.median(t_ours):.2f} ms"),
            ("map, devkit get_map_mask, same poses and layers", f"{1e3 * statistics.median(t_devkit):.2f} ms"),
            (f"  records per layer ({next(iter(maps))})", counts)]


def bench_radar(dataroot: str, n: int = 200) -> list[tuple[str, str]]:
    from nuscenes.utils.data_classes import RadarPointCloud

    from bevbridge.data.sweeps import read_radar_pcd

    files = sorted(Path(dataroot).glob("sweeps/RADAR_*/*.pcd"))[:n]
    pts = sum(read_radar_pcd(f, filters=False).shape[0] for f in files) / len(files)
    rows = []
    for name, fn in (("ours (read_radar_pcd)", lambda f: read_radar_pcd(f)),
                     ("devkit RadarPointCloud.from_file", lambda f: RadarPointCloud.from_file(str(f)))):
        t = time.perf_counter()
        for f in files:
            fn(f)
        rows.append((f"radar file, {name}, mean of {len(files)} ({pts:.0f} points)",
                     f"{1e3 * (time.perf_counter() - t) / len(files):.3f} ms"))
    return rows


def bench_jpeg(dataroot: str, repeats: int = 30) -> list[tuple[str, str]]:
    """A 1600 x 900 JPEG (nuScenes' camera size, quality 90) made from a synthetic camera image upscaled with mild
    noise: decode time, and the warp to CTAB's 704 x 256 input."""
    import cv2

    from bevbridge.data.transforms import ImageAug, sample_ida, warp_image

    src = cv2.imread(str(sorted((Path(dataroot) / "samples" / "CAM_FRONT").iterdir())[5]))
    base = cv2.resize(src, (1600, 900), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    img = np.clip(base + np.random.default_rng(0).normal(0, 3, base.shape), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    ida = sample_ida((900, 1600), ImageAug((256, 704)), np.random.default_rng(0))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "cam.jpg")
        Path(path).write_bytes(buf.tobytes())
        t_dec, t_warp = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            im = cv2.imread(path, cv2.IMREAD_COLOR)
            t_dec.append(time.perf_counter() - t)
            t = time.perf_counter()
            warp_image(im, ida, (256, 704))
            t_warp.append(time.perf_counter() - t)
    return [(f"1600x900 JPEG ({len(buf) / 1024:.0f} KB) decode, median of {repeats}",
             f"{1e3 * statistics.median(t_dec):.2f} ms"),
            ("  its warp to 704x256 (resize, crop, flip, rotate), median", f"{1e3 * statistics.median(t_warp):.2f} ms")]


def bench_checks(dataroot: str, repeats: int = 200) -> list[tuple[str, str]]:
    """Checked readers vs the plain reads they replaced, interleaved file by file (min and median per file)."""
    import cv2
    from nuscenes.utils.data_classes import LidarPointCloud

    from bevbridge.data.integrity import read_image, read_lidar_bin

    root = Path(dataroot)
    small = sorted((root / "samples" / "CAM_FRONT").iterdir())[:20]
    src = cv2.imread(str(small[0]))
    big = cv2.resize(src, (1600, 900), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    big = np.clip(big + np.random.default_rng(0).normal(0, 3, big.shape), 0, 255).astype(np.uint8)
    lidar = sorted((root / "samples" / "LIDAR_TOP").iterdir())[:20]

    def plain_lidar(f):
        if not f.is_file():
            raise FileNotFoundError(f)
        return LidarPointCloud.from_file(str(f))

    def compare(label, files, plain, checked, n):
        t_plain, t_checked = [], []
        for k in range(n):
            f = files[k % len(files)]
            pairs = ((plain, t_plain), (checked, t_checked))
            for fn, acc in pairs if k % 2 else pairs[::-1]:  # alternate which goes first
                t = time.perf_counter()
                fn(f)
                acc.append(time.perf_counter() - t)
        med_p, med_c = statistics.median(t_plain), statistics.median(t_checked)
        return [(f"{label}: plain / checked, median of {n}",
                 f"{1e3 * med_p:.3f} / {1e3 * med_c:.3f} ms ({100 * (med_c / med_p - 1):+.1f}%; "
                 f"min {1e3 * min(t_plain):.3f} / {1e3 * min(t_checked):.3f})")]

    rows = compare(f"camera {src.shape[1]}x{src.shape[0]} JPEG, cv2.imread vs read_image", small,
                   lambda f: cv2.imread(str(f), cv2.IMREAD_COLOR),
                   lambda f: read_image(f, (src.shape[1], src.shape[0])), repeats)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "cam.jpg"
        path.write_bytes(cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
        rows += compare("camera 1600x900 JPEG, cv2.imread vs read_image", [path],
                        lambda f: cv2.imread(str(f), cv2.IMREAD_COLOR), lambda f: read_image(f, (1600, 900)),
                        max(20, repeats // 5))
    rows += compare("LiDAR .pcd.bin, is_file + LidarPointCloud.from_file vs read_lidar_bin", lidar, plain_lidar,
                    read_lidar_bin, repeats)
    return rows


def _load_baseline(checkout: Path):
    """``bevbridge`` of another checkout, imported as ``bevbridge_baseline`` (its imports rewritten to that name)."""
    import atexit
    import importlib
    import re
    import shutil
    import sys

    tmp = Path(tempfile.mkdtemp(prefix="bench_baseline_"))
    atexit.register(shutil.rmtree, tmp, True)  # at exit: its modules may import lazily until then
    shutil.copytree(checkout / "bevbridge", tmp / "bevbridge_baseline")
    for f in (tmp / "bevbridge_baseline").rglob("*.py"):
        f.write_text(re.sub(r"\b(from|import) bevbridge\b", r"\1 bevbridge_baseline", f.read_text()))
    sys.path.insert(0, str(tmp))
    return importlib.import_module("bevbridge_baseline.data.nuscenes")


def bench_baseline(dataroot: str, version: str, split: str, n: int, size: tuple[int, int] | None,
                   checkout: Path, rounds: int = 3) -> list[tuple[str, str]]:
    """``__getitem__`` of this checkout vs ``checkout``'s, alternating per sample, ``rounds`` passes."""
    import cv2

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    old_module = _load_baseline(checkout)
    img = next((Path(dataroot) / "samples" / "CAM_FRONT").iterdir())
    H, W = size or cv2.imread(str(img)).shape[:2]
    datasets = {}
    with tempfile.TemporaryDirectory() as d:
        for name, cls in (("baseline", old_module.NuScenesDataset), ("this", NuScenesDataset)):
            datasets[name] = cls(dataroot, version, split, image_size=(H, W), image_aug=ImageAug((H, W)),
                                 bev_aug=BEVAug(), train=True, num_past_frames=2, radar_sweeps=8, lidar_sweeps=1,
                                 map_grid=MAP_GRID, map_classes=CTAB_MAP_CLASSES, cache_path=Path(d) / f"{name}.npz")
            datasets[name][0]  # warm up
    times: dict[str, list[float]] = {"baseline": [], "this": []}
    ratios = []
    idx = np.linspace(0, len(datasets["this"]) - 1, min(n, len(datasets["this"]))).astype(int)
    for r in range(rounds):
        for k, i in enumerate(idx):
            order = ("baseline", "this") if (k + r) % 2 == 0 else ("this", "baseline")
            got = {}
            for name in order:
                t = time.perf_counter()
                got[name] = datasets[name][int(i)]
                times[name].append(time.perf_counter() - t)
            ratios.append(times["this"][-1] / times["baseline"][-1])
            for f in ("images", "radar", "lidar", "gt_masks", "gt_boxes"):
                if not torch.equal(getattr(got["this"], f), getattr(got["baseline"], f)):
                    raise AssertionError(f"sample {i}: {f} differs between {checkout} and this checkout")
    med = {k: statistics.median(v) for k, v in times.items()}
    return [(f"__getitem__ baseline ({checkout}) / this, median of {len(ratios)} alternating",
             f"{1e3 * med['baseline']:.1f} / {1e3 * med['this']:.1f} ms"),
            ("  per-sample ratio this / baseline: median (quartiles)",
             f"{statistics.median(ratios):.3f} ({np.percentile(ratios, 25):.3f}-{np.percentile(ratios, 75):.3f}); "
             f"identical samples")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataroot", help="a nuScenes-format dataroot (default: the default synthetic world, generated "
                    "into .cache/bench_synth_default on first use)")
    ap.add_argument("--version", default="v1.0-mini")
    ap.add_argument("--split", default="synth_train")
    ap.add_argument("--samples", type=int, default=40, help="samples timed for __getitem__")
    ap.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                    help="network input size (default: the world's image size)")
    ap.add_argument("--getitem-only", action="store_true", help="skip the cache build and side-by-side parts")
    ap.add_argument("--checks-only", action="store_true", help="only the integrity checks vs the plain reads")
    ap.add_argument("--baseline", type=Path, metavar="DIR", help="only __getitem__, side by side with the code of "
                    "another checkout in DIR (alternating per sample)")
    args = ap.parse_args()
    os.environ.setdefault("BEVBRIDGE_NO_PROGRESS", "1")
    if args.dataroot is None:
        from bevbridge.data.synth import ensure_world

        args.dataroot = str(ensure_world(Path(__file__).resolve().parents[1] / ".cache" / "bench_synth_default"))
    rows: list[tuple[str, str]] = [("load average before", load())]
    if args.checks_only or args.baseline:
        rows += (bench_checks(args.dataroot) if args.checks_only else
                 bench_baseline(args.dataroot, args.version, args.split, args.samples, args.image_size, args.baseline))
        rows.append(("load average after", load()))
        width = max(len(r[0]) for r in rows)
        for name, value in rows:
            print(f"{name:<{width}}  {value}")
        return
    with tempfile.TemporaryDirectory() as d:
        cache = Path(d) / "infos.npz"
        if args.getitem_only:
            build_info_cache(args.dataroot, args.version, cache)
        else:
            rows += bench_cache(args.dataroot, args.version, cache)
        got, ds = bench_getitem(args.dataroot, args.version, args.split, cache, args.samples, args.image_size)
        rows += got
        if not args.getitem_only:
            rows += bench_map(ds, 20) + bench_radar(args.dataroot) + bench_jpeg(args.dataroot)
            rows += bench_checks(args.dataroot)
    rows.append(("load average after", load()))
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
