"""`NuScenesDataset`: devkit-backed keyframes as `Sample`s for every model (real nuScenes and the synthetic world).

    ds = NuScenesDataset("data/nuscenes", "v1.0-trainval", "train", image_size=(256, 704), num_past_frames=8,
                         radar_sweeps=8, map_grid=BEVGrid.square(51.2, 0.512), map_classes=CTAB_MAP_CLASSES)

Everything comes from the versioned info cache (``nuscenes_info``, an ``InfoTable``; built on first use) plus the
sensor files; the devkit is opened only to build the cache and, for map targets, as ``NuScenesMap``. ``ds.samples[i]``
is the cache's record of sample i (a dict), ``ds.info(token)`` that of any sample of the version. Geometry follows DESIGN.md:
the ego frame at the keyframe's LIDAR_TOP timestamp, then the BEV augmentation ``bda``.

Faults, and what the dataset does about each (README "What happens when something breaks"):
- Checked when the dataset opens, from the info cache (vectorised, milliseconds for trainval): every sample of the
  split must have a LIDAR_TOP keyframe (it defines the sample's ego frame, and the devkit's evaluation needs it) and
  every camera of ``cameras`` (the batch holds one image per camera; ``drop_cameras`` still needs its calibration).
  A sample lacking one is an error at open (:class:`~bevbridge.data.integrity.MissingChannels`, a ValueError) that
  names the channels and the samples. A sample lacking one of the 5 radars (when radar is used) is an error too,
  unless ``allow_missing_radars=True``: then its points come from the radars it has (a warning at open counts the
  samples). Fewer sweeps than asked (at a scene's start) are by design, never an error.
- Checked when a sample loads (cheap: sizes and markers of bytes read anyway; bevbridge/data/integrity.py): a
  missing, empty, truncated or undecodable image, radar PCD or LiDAR ``.pcd.bin`` raises a
  :class:`~bevbridge.data.integrity.DataFileError` naming the file and the sample. With ``skip_bad_samples=True``
  (training) the sample is replaced by the next good one instead, logged once and counted, up to
  ``max_bad_fraction`` of the split (bevbridge/data/bad_samples.py; the engine reads the counts with
  ``bevbridge.data.skipped_samples(train_set)``).
- ``bevbridge check-data`` reads every file a split references in one pass and reports all problems at once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from bevbridge.data.bad_samples import BadSamples
from bevbridge.data.batch import PastFrames, Sample
from bevbridge.data.bevmap import VEHICLE_CATEGORY_PREFIX, MapRasterizer, vehicle_mask
from bevbridge.data.captions import IGNORED_CAPTION, open_caption_table
from bevbridge.data.info_table import InfoTable
from bevbridge.data.integrity import DataFileError, MissingChannels, TooManyBadSamples, read_image
from bevbridge.data.nuscenes_info import CAMERAS, RADARS, open_info_cache, split_scenes
from bevbridge.data.sweeps import load_lidar_sweeps, load_radar_sweeps
from bevbridge.data.transforms import (BEVAug, ImageAug, apply_bda_boxes, apply_bda_masks, apply_bda_points, sample_bda,
                                       sample_ida, warp_image)
from bevbridge.geometry import BEVGrid, invert_transform

__all__ = ["NuScenesDataset"]

log = logging.getLogger(__name__)


class NuScenesDataset(Dataset):
    """Keyframes of one split as `Sample`s.

    Args:
        dataroot, version, split: the devkit's dataroot and version folder; a devkit split name (train, val,
            mini_train, ...) or a key of ``<dataroot>/<version>/splits.json``.
        cameras: camera channels, in this order. ``image_size``: (H, W) network input; None keeps the originals.
        image_aug: ranges for training-time image augmentation (None: test-time resize + centre crop only).
        bev_aug: ranges for the BEV augmentation (None: identity ``bda``).
        train: sample random augmentations (False: deterministic).
        num_past_frames: adjacent past keyframes (most recent first) with their ego-motion transforms, seen with the
            key frame's ``ida`` (BEVDet4D); a camera in ``drop_cameras`` is dropped in every frame (``cam_mask``).
        radar_sweeps: sweeps per radar, "keyframe + previous": 8 = each radar's keyframe sweep and up to 7 earlier
            ones (fewer at a scene's start; RCBEVDet's 8); 0 disables radar. ``radar_features``: columns.
        radar_filters: the devkit's default radar filters. ``radar_max_points``: random subset in training, first
            n otherwise (None: all). ``radar_velocity_compensation``: also move older sweeps' points by v * dt.
        lidar_sweeps: LiDAR sweeps (keyframe + previous; 0 disables LiDAR).
        map_grid, map_classes: BEV segmentation targets (``vehicle`` from boxes) in the augmented frame, warped or
            redrawn as ``bev_aug.masks`` says; None disables them. The maps load when the dataset opens.
        box_range: (xmin, ymin, xmax, ymax) in the augmented ego frame; boxes outside are dropped (None keeps all).
        min_points: drop boxes with fewer than this many lidar + radar points (1 = the devkit's evaluation rule).
        captions: path of a TOD3Cap-format caption JSON (relative to dataroot or absolute), or None.
        drop_cameras: camera names to mark missing (``cam_mask`` False); drop_radar / drop_lidar: make it None.
        cache_path: where the info cache lives (default: ``nuscenes_info.default_cache_path``); built if missing
            (under a lock: concurrent processes build it once), rebuilt if stale or corrupt.
        seed: base seed of the per-sample augmentation RNG (combined with the index and the epoch); None draws
            the augmentation from numpy's global RNG instead, which the training engine seeds per (seed, epoch,
            index) before loading each sample (engine/loader.py), so augmentation is reproducible there too.
        skip_bad_samples: replace a sample with a missing or corrupt file by the next good one (logged once,
            counted in ``bad_samples``) instead of raising; meant for training sets. ``max_bad_fraction``: more bad
            samples than this fraction of the split raise TooManyBadSamples (0: the first one does).
        allow_missing_radars: accept samples that lack some radar (see the module docstring).
    """

    def __init__(self, dataroot: str | Path, version: str, split: str, *, cameras: Sequence[str] = CAMERAS,
                 image_size: tuple[int, int] | None = (256, 704), image_aug: ImageAug | None = None,
                 bev_aug: BEVAug | None = None, train: bool = False, num_past_frames: int = 0,
                 radar_sweeps: int = 8,
                 radar_features: Sequence[str] = ("x", "y", "z", "vx_comp", "vy_comp", "rcs", "dt"),
                 radar_filters: bool = True, radar_max_points: int | None = None,
                 radar_velocity_compensation: bool = False, lidar_sweeps: int = 1,
                 map_grid: BEVGrid | None = None, map_classes: Sequence[str] = (),
                 box_range: tuple[float, float, float, float] | None = None, min_points: int = 1,
                 captions: str | Path | None = None, drop_cameras: Sequence[str] = (), drop_radar: bool = False,
                 drop_lidar: bool = False, cache_path: str | Path | None = None, seed: int | None = 0,
                 skip_bad_samples: bool = False, max_bad_fraction: float = 0.001, allow_missing_radars: bool = False):
        self.dataroot = Path(dataroot)
        self.version, self.split = version, split
        unknown = [c for c in (*cameras, *drop_cameras) if c not in CAMERAS]
        if unknown:
            raise ValueError(f"unknown camera {unknown[0]!r}; nuScenes cameras: {CAMERAS}")
        self.cameras = tuple(cameras)
        self.image_size = tuple(image_size) if image_size is not None else None
        self.image_aug = image_aug
        self.bev_aug = bev_aug
        self.train = train
        self.num_past_frames = num_past_frames
        self.radar_sweeps = 0 if drop_radar else radar_sweeps
        self.radar_features = tuple(radar_features)
        self.radar_filters = radar_filters
        self.radar_max_points = radar_max_points
        self.radar_velocity_compensation = radar_velocity_compensation
        self.lidar_sweeps = 0 if drop_lidar else lidar_sweeps
        self.map_grid = map_grid
        self.map_classes = tuple(map_classes)
        self.box_range = box_range
        self.min_points = min_points
        self.drop_cameras = set(drop_cameras)
        self.seed = seed
        self.epoch = 0

        self.table = open_info_cache(self.dataroot, version, cache_path, max(radar_sweeps, 0), max(lidar_sweeps, 1))
        scenes = set(split_scenes(self.dataroot, version, split))
        names, times = self.table.column("scene_name"), self.table.column("timestamp")
        order = sorted((i for i, n in enumerate(names) if n in scenes), key=lambda i: (names[i], times[i]))
        self.samples = self.table.view(order)  # sample dicts of the split, by scene and time
        if not len(self.samples):
            raise ValueError(f"split {split!r} has no samples in {self.dataroot / version} "
                             f"(its scenes: {sorted(scenes)[:5]}...)")
        self._check_channels(allow_missing_radars)
        self.bad_samples = (BadSamples(self.table.a["s_token"][self.samples.indices], max_bad_fraction, split)
                            if skip_bad_samples else None)
        self._maps = None
        if map_grid is not None:
            self._maps = MapRasterizer(self.dataroot, map_grid, self.map_classes)
            locations = self.table.column("location")
            self._maps.preload(sorted({locations[i] for i in order}))
        self._captions = None
        if captions is not None:  # only the split's annotations, as flat arrays (data/captions.py)
            spans = self.table.a["s_anns"][self.samples.indices]
            idx = np.repeat(spans[:, 0] - np.cumsum(spans[:, 1]) + spans[:, 1], spans[:, 1]) + np.arange(
                int(spans[:, 1].sum()))
            self._captions = open_caption_table(self.dataroot, version, split, captions,
                                                self.table.a["a_token"][idx])

    # ------------------------------------------------------------------------------------------------- setup
    def _check_channels(self, allow_missing_radars: bool) -> None:
        """Refuse a split whose samples lack a channel this dataset would load (see the module docstring)."""
        radars = RADARS if self.radar_sweeps > 0 else ()
        lacking = self.table.missing_channels(self.samples.indices, self.cameras, radars)
        radar_gaps = {c: v for c, v in lacking.items() if c in RADARS}
        if allow_missing_radars and radar_gaps:
            n = len(np.unique(np.concatenate(list(radar_gaps.values()))))
            log.warning("split %r: %d of %d samples lack a radar (%s); they use the radars they have "
                        "(allow_missing_radars)", self.split, n, len(self.samples), ", ".join(sorted(radar_gaps)))
            lacking = {c: v for c, v in lacking.items() if c not in RADARS}
        if lacking:
            raise MissingChannels(describe_missing_channels(self.table, lacking, self.split,
                                                            self.dataroot / self.version, len(self.samples)))

    def set_epoch(self, epoch: int) -> None:
        """Vary the augmentation per epoch (the engine calls this like DistributedSampler.set_epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def labels_per_sample(self) -> list[np.ndarray]:
        """Detection labels of each sample (after the min-points rule), for class-balanced sampling."""
        out = []
        for i in self.samples.indices:
            lab, pts = self.table.labels(i)
            out.append(lab[(lab >= 0) & (pts.sum(1) >= self.min_points)])
        return out

    def info(self, token: str) -> dict | None:
        """The cache's record of any sample of the version (not only this split) by token, or None."""
        i = self.table.index_of(token)
        return self.table[i] if i is not None else None

    # ----------------------------------------------------------------------------------------------- loading
    def __getitem__(self, idx: int) -> Sample:
        key = None
        if self.train:  # drawn once: a replacement for a bad sample is loaded with the draw of ``idx``
            key = [self.seed, self.epoch, idx] if self.seed is not None else np.random.randint(0, 2**31, size=2)
        if self.bad_samples is None:
            return self._load(idx, key)
        n = len(self.samples)
        for step in range(n):
            j = (idx + step) % n
            if self.bad_samples.is_bad(j):
                continue
            try:
                return self._load(j, key)
            except DataFileError as e:
                self.bad_samples.record(j, e)  # logs it once; raises TooManyBadSamples past max_bad_fraction
        raise TooManyBadSamples(f"every sample of split {self.split!r} is bad (max_bad_fraction="
                                f"{self.bad_samples.max_fraction:g}); `bevbridge check-data` lists the files")

    def _load(self, idx: int, key) -> Sample:
        info = self.samples[idx]
        rng = np.random.default_rng(key) if key is not None else None
        ego2global = np.asarray(info["lidar"]["ego2global"], np.float64)
        global2key = invert_transform(ego2global)
        bda = sample_bda(self.bev_aug, rng)

        cams = self._cameras(info, global2key, rng, ida_override=None)
        past = self._past(info, global2key, cams["ida"]) if self.num_past_frames > 0 else None

        radar = lidar = None
        if self.radar_sweeps > 0:
            pts = load_radar_sweeps(self.dataroot, {r: info["radars"][r] for r in RADARS if r in info["radars"]},
                                    ego2global, info["lidar"]["timestamp"], self.radar_sweeps, self.radar_features,
                                    self.radar_filters, self.radar_velocity_compensation, sample_token=info["token"])
            if self.radar_max_points is not None and len(pts) > self.radar_max_points:
                keep = (rng.choice(len(pts), self.radar_max_points, replace=False) if rng is not None
                        else np.arange(self.radar_max_points))
                pts = pts[np.sort(keep)]
            vel = self._vel_cols()
            radar = torch.from_numpy(apply_bda_points(bda, pts, vel).astype(np.float32))
        if self.lidar_sweeps > 0:
            pts = load_lidar_sweeps(self.dataroot, info["lidar"], ego2global, info["lidar"]["timestamp"],
                                    self.lidar_sweeps, info["token"])
            lidar = torch.from_numpy(apply_bda_points(bda, pts).astype(np.float32))

        anns = info["anns"]
        boxes_all = np.asarray(anns["boxes"], np.float64).reshape(-1, 9)
        boxes_aug = apply_bda_boxes(bda, boxes_all)
        labels = np.asarray(anns["label"], np.int64)
        npts = np.asarray(anns["num_pts"], np.int64).reshape(-1, 2)
        keep = (labels >= 0) & (npts.sum(1) >= self.min_points)
        if self.box_range is not None:
            x0, y0, x1, y1 = self.box_range
            x, y = boxes_aug[:, 0], boxes_aug[:, 1]
            keep &= (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
        idx_keep = np.nonzero(keep)[0]

        gt_masks = None
        if self._maps is not None:
            if self.bev_aug is not None and self.bev_aug.masks == "warp":  # CTAB Sec. IV-B
                gt_masks = apply_bda_masks(bda, self._map_targets(info, ego2global, np.eye(4), boxes_all),
                                           self.map_grid)
            else:
                gt_masks = self._map_targets(info, ego2global, bda, boxes_aug)
            gt_masks = torch.from_numpy(gt_masks)
        captions = None
        if self._captions is not None:
            found = [self._captions.get(anns["tokens"][i]) for i in idx_keep]
            captions = [c if c is not None else IGNORED_CAPTION for c in found]

        return Sample(
            token=info["token"], scene_token=info["scene_token"], location=info["location"],
            timestamp=int(info["lidar"]["timestamp"]), ego2global=torch.from_numpy(ego2global),
            bda=torch.from_numpy(bda.astype(np.float32)), cam_names=self.cameras,
            images=cams["images"], K=cams["K"], sensor2ego=cams["sensor2ego"], ida=cams["ida_t"],
            cam_mask=cams["mask"], past=past, radar=radar, radar_features=self.radar_features, lidar=lidar,
            gt_boxes=torch.from_numpy(boxes_aug[idx_keep].astype(np.float32)),
            gt_labels=torch.from_numpy(labels[idx_keep]),
            gt_attrs=torch.from_numpy(np.asarray(anns["attr"], np.int64)[idx_keep]),
            gt_num_pts=torch.from_numpy(npts[idx_keep]),
            gt_instance_tokens=tuple(anns["instance_tokens"][i] for i in idx_keep),
            gt_masks=gt_masks, mask_classes=self.map_classes if gt_masks is not None else (), captions=captions,
        )

    def _vel_cols(self) -> tuple[int, int] | None:
        f = self.radar_features
        return (f.index("vx_comp"), f.index("vy_comp")) if "vx_comp" in f and "vy_comp" in f else None

    def _cameras(self, info: dict, global2frame: np.ndarray, rng, ida_override) -> dict:
        images, Ks, s2e, idas, mask = [], [], [], [], []
        for i, cam in enumerate(self.cameras):
            rec = info["cams"].get(cam)
            if rec is None:  # refused when the dataset opens; a past frame of another split could still lack it
                raise MissingChannels(f"sample {info['token']} has no {cam} image in {self.dataroot / self.version}")
            dropped = cam in self.drop_cameras
            if dropped:
                img = np.zeros((rec["height"], rec["width"], 3), np.uint8)
            else:  # BGR; made RGB after the warp, on the small image
                img = read_image(self.dataroot / rec["filename"], (rec["width"], rec["height"]),
                                 f"camera image ({cam})", info["token"])
            size = self.image_size or img.shape[:2]
            if ida_override is not None:
                ida = ida_override[i]
            else:
                aug = self.image_aug or ImageAug(tuple(size))
                ida = sample_ida(img.shape[:2], aug, rng if self.image_aug else None)
            # (warping a channel-reversed view instead costs cv2 a full-size copy: 20-30 ms at 1600x900)
            images.append(np.ascontiguousarray(warp_image(img, ida, tuple(size))[:, :, ::-1].transpose(2, 0, 1)))
            Ks.append(np.asarray(rec["K"], np.float64))
            s2e.append(global2frame @ np.asarray(rec["ego2global"]) @ np.asarray(rec["sensor2ego"]))
            idas.append(ida)
            mask.append(not dropped)
        return {
            "images": torch.from_numpy(np.stack(images)), "K": torch.tensor(np.stack(Ks), dtype=torch.float32),
            "sensor2ego": torch.tensor(np.stack(s2e), dtype=torch.float32), "ida": idas,
            "ida_t": torch.tensor(np.stack(idas), dtype=torch.float32), "mask": torch.tensor(mask),
        }

    def _past(self, info: dict, global2key: np.ndarray, idas: list[np.ndarray]) -> PastFrames:
        frames, valid = [], []
        cur = info
        for _ in range(self.num_past_frames):
            prev = self.info(cur["prev"]) if cur["prev"] else None
            valid.append(prev is not None)
            cur = prev if prev is not None else cur
            frames.append(cur)
        imgs, Ks, s2e, ida, e2k, stamps = [], [], [], [], [], []
        for f in frames:
            f_ego2global = np.asarray(f["lidar"]["ego2global"], np.float64)
            cams = self._cameras(f, invert_transform(f_ego2global), None, ida_override=idas)
            imgs.append(cams["images"])
            Ks.append(cams["K"])
            s2e.append(cams["sensor2ego"])
            ida.append(cams["ida_t"])
            e2k.append(torch.tensor(global2key @ f_ego2global, dtype=torch.float32))
            stamps.append(int(f["lidar"]["timestamp"]))
        return PastFrames(images=torch.stack(imgs), K=torch.stack(Ks), sensor2ego=torch.stack(s2e),
                          ida=torch.stack(ida), ego2key=torch.stack(e2k), valid=torch.tensor(valid),
                          timestamps=torch.tensor(stamps, dtype=torch.int64))

    def _map_targets(self, info: dict, ego2global: np.ndarray, bda: np.ndarray, boxes_aug: np.ndarray) -> np.ndarray:
        grid = self.map_grid
        maps = self._maps.masks(info["location"], ego2global, bda)
        out = np.zeros((len(self.map_classes), grid.H, grid.W), np.uint8)
        j = 0
        for i, c in enumerate(self.map_classes):
            if c == "vehicle":
                is_vehicle = np.array([cat.startswith(VEHICLE_CATEGORY_PREFIX) for cat in info["anns"]["category"]],
                                      dtype=bool)
                out[i] = vehicle_mask(grid, boxes_aug[is_vehicle]) if is_vehicle.any() else 0
            else:
                out[i] = maps[j]
                j += 1
        return out


def describe_missing_channels(table: InfoTable, lacking: dict[str, np.ndarray], split: str, where: Path,
                              total: int) -> str:
    """One line: which channels some samples of ``split`` lack, how many and a few of their tokens."""
    tokens = table.a["s_token"]
    parts = []
    for channel, idx in lacking.items():
        names = ", ".join(t.decode() for t in tokens[idx[:3]]) + (", ..." if len(idx) > 3 else "")
        parts.append(f"{len(idx)} lack {channel} ({names})")
    return (f"split {split!r} in {where}: samples lack sensor channels this dataset loads: {'; '.join(parts)} "
            f"(of {total} samples). Fix the tables or move those scenes out of the split; a camera can be left out "
            f"(data.cameras), missing radars allowed (data.allow_missing_radars); `bevbridge check-data` lists all")
