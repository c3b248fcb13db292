"""NuScenesDataset on the synthetic world: shapes, alignment of every target, caches, errors, sensor dropout."""

from __future__ import annotations

import gzip
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import bevbridge.data.sweeps as sweeps_module
from bevbridge.data.batch import DETECTION_CLASSES, collate
from bevbridge.data.bevmap import MapRasterizer, vehicle_mask
from bevbridge.data.cbgs import CBGSDataset
from bevbridge.data.info_table import InfoTable
from bevbridge.data.nuscenes import NuScenesDataset
from bevbridge.data.nuscenes_info import (SCHEMA_VERSION, InfoCacheError, StaleInfoCache, build_info_cache,
                                          load_info_cache)
from bevbridge.data.transforms import BEVAug, ImageAug, apply_bda_masks
from bevbridge.geometry import BEVGrid, invert_transform, make_transform, rotation_z, transform_points
from bevbridge.models.ctab.config import CTAB_MAP_CLASSES

MAP_GRID = BEVGrid.square(51.2, 0.512)  # CTAB's 200 x 200 target over the features' 102.4 m
VEHICLES = {DETECTION_CLASSES.index(c) for c in ("car", "truck", "bus", "trailer", "construction_vehicle",
                                                  "motorcycle", "bicycle")}


def make(world, split=None, **kw):
    opts = dict(image_size=(64, 112), radar_sweeps=3, lidar_sweeps=1)
    opts.update(kw)
    return NuScenesDataset(world.dataroot, world.version, split or world.train_split, **opts)


def dist_to_boxes(pts: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """BEV distance of each point to the nearest box footprint (0 inside)."""
    best = np.full(len(pts), np.inf)
    for b in boxes:
        T = invert_transform(make_transform(rotation_z(np.array(b[6])), b[:3]))
        local = pts[:, :3] @ T[:3, :3].T + T[:3, 3]
        outside = np.maximum(np.abs(local[:, :2]) - b[3:5] / 2, 0)
        best = np.minimum(best, np.linalg.norm(outside, axis=1))
    return best


def test_sample_shapes_and_dtypes(synth_world):
    ds = make(synth_world, num_past_frames=2, map_grid=MAP_GRID, map_classes=CTAB_MAP_CLASSES,
              captions=f"{synth_world.version}/final_caption_bbox_token.json")
    s = ds[1]
    assert s.images.shape == (6, 3, 64, 112) and s.images.dtype == torch.uint8
    assert s.K.shape == (6, 3, 3) and s.sensor2ego.shape == (6, 4, 4) and s.ida.shape == (6, 3, 3)
    assert s.cam_mask.all() and s.bda.shape == (4, 4) and s.ego2global.dtype == torch.float64
    assert s.radar.shape[1] == 7 and s.radar.dtype == torch.float32 and s.lidar.shape[1] == 5
    n = len(s.gt_boxes)
    assert s.gt_boxes.shape == (n, 9) and s.gt_labels.shape == (n,) and len(s.gt_instance_tokens) == n
    assert s.gt_masks.shape == (7, 200, 200) and s.gt_masks.dtype == torch.uint8 and s.mask_classes == CTAB_MAP_CLASSES
    assert len(s.captions) == n and all(isinstance(c, str) and c for c in s.captions)
    assert s.past.images.shape == (2, 6, 3, 64, 112) and s.past.ego2key.shape == (2, 4, 4)
    # the first keyframe of a scene has no past: the frame is repeated and marked invalid
    first = ds[0]
    assert not first.past.valid.any()
    assert s.past.valid[0] and not torch.allclose(s.past.ego2key[0], torch.eye(4), atol=1e-3)  # the ego moved


def test_past_frame_timestamps_are_the_previous_keyframes(synth_world):
    """Past frames carry their own LIDAR_TOP timestamps (BEVFormer's ego velocity by finite differences): a bug that
    stamped every frame with the key time, or mixed up the order (most recent first), fails here; so does a speed
    from ego2key / dt outside the synthetic ego's 5-10 m/s."""
    ds = make(synth_world, num_past_frames=2)
    s = ds[2]  # the third keyframe of the first scene: both past frames exist
    assert s.past.valid.all() and s.past.timestamps.dtype == torch.int64
    assert s.past.timestamps.tolist() == [ds.samples[1]["lidar"]["timestamp"], ds.samples[0]["lidar"]["timestamp"]]
    assert s.timestamp > s.past.timestamps[0] > s.past.timestamps[1]
    dt = (s.timestamp - int(s.past.timestamps[0])) * 1e-6
    speed = float(s.past.ego2key[0, :2, 3].norm()) / dt
    assert 4.0 < speed < 11.0
    first = ds[0]  # no earlier frame: the key frame is repeated with its own timestamp
    assert not first.past.valid.any() and first.past.timestamps.tolist() == [first.timestamp] * 2
    b = collate([ds[1], ds[2]])
    assert b.past.timestamps.shape == (2, 2)


@pytest.mark.parametrize("masks", ["warp", "redraw"])
def test_vehicle_mask_covers_every_vehicle_box_centre(synth_world, masks):
    ds = make(synth_world, map_grid=MAP_GRID, map_classes=CTAB_MAP_CLASSES, bev_aug=BEVAug(masks=masks), train=True)
    vi = CTAB_MAP_CLASSES.index("vehicle")
    checked = exact = 0
    for i in range(len(ds)):
        s = ds[i]
        sel = torch.tensor([int(l) in VEHICLES for l in s.gt_labels], dtype=torch.bool)
        ix, iy, ok = MAP_GRID.xy_to_index(s.gt_boxes[sel, :2].double())
        mask = s.gt_masks[vi].float()
        if masks == "warp":  # a nearest-neighbour warp may shift a small box's cells by up to one cell
            before = transform_points(invert_transform(s.bda.double().numpy()), s.gt_boxes[sel, :3].double().numpy())
            ok &= MAP_GRID.xy_to_index(torch.from_numpy(before[:, :2]))[2]  # corners rotated in from outside: empty
            exact += int(mask[iy[ok], ix[ok]].sum())
            mask = torch.nn.functional.max_pool2d(mask[None], 3, stride=1, padding=1)[0]
        assert mask[iy[ok], ix[ok]].all()
        checked += int(ok.sum())
    assert checked > 20
    assert masks == "redraw" or exact >= 0.9 * checked


def test_map_mask_rotation_and_axes_against_a_known_polygon(synth_world, tmp_path):
    """An L-shaped walkway at known global coordinates, seen from a pose yawed by 30 degrees: the devkit's mask (with
    our half-cell alignment) must equal our own rasterisation of the polygon in the ego frame."""
    loc = "boston-seaport"
    m = json.loads((synth_world.dataroot / "maps" / "expansion" / f"{loc}.json").read_text())
    L = [(0, 0), (12, 0), (12, 4), (4, 4), (4, 10), (0, 10)]  # metres, around a global origin
    gx, gy = 1000.0, 500.0
    m["node"] += [{"token": f"n{i}", "x": gx + x, "y": gy + y} for i, (x, y) in enumerate(L)]
    m["polygon"].append({"token": "pL", "exterior_node_tokens": [f"n{i}" for i in range(len(L))], "holes": []})
    m["walkway"] = [{"token": "wL", "polygon_token": "pL"}]
    (tmp_path / "maps" / "expansion").mkdir(parents=True)
    (tmp_path / "maps" / "expansion" / f"{loc}.json").write_text(json.dumps(m))
    grid = BEVGrid(-8.0, 24.0, -12.0, 12.0, 0.25)
    yaw = math.radians(30)
    pose = make_transform(rotation_z(np.array(yaw)), np.array([gx - 3.0, gy + 1.0, 0.0]))
    got = MapRasterizer(tmp_path, grid, ("walkway",)).masks(loc, pose)[0]

    corners = transform_points(invert_transform(pose), np.array([[gx + x, gy + y, 0.0] for x, y in L]))
    import cv2

    want = np.zeros(grid.shape, np.uint8)
    cv2.fillPoly(want, [np.round(grid.xy_to_cell(corners[:, :2]) * 256).astype(np.int32)], 1, shift=8)
    inter, union = (got & want).sum(), (got | want).sum()
    assert union > 500 and inter / union > 0.97, inter / union
    # a point in the polygon's long arm, and one in the notch of the L, by hand in the ego frame
    inside = transform_points(invert_transform(pose), np.array([[gx + 10.0, gy + 2.0, 0.0]]))[0]
    notch = transform_points(invert_transform(pose), np.array([[gx + 8.0, gy + 7.0, 0.0]]))[0]
    for p, expected in ((inside, 1), (notch, 0)):
        ix, iy, _ = grid.xy_to_index(p[None, :2])
        assert got[iy[0], ix[0]] == expected


def test_radar_sweeps_are_ego_motion_compensated(synth_world, monkeypatch):
    """Points of older radar sweeps land on the boxes in the key frame; without ego-motion compensation they don't."""
    def on_box_fraction():
        ds = make(synth_world, radar_sweeps=7, lidar_sweeps=0, min_points=0)
        fr = []
        for i in range(len(ds)):
            s = ds[i]
            p = s.radar.numpy()
            old = p[:, 6] >= 0.2  # dt: sweeps at least 0.2 s older than the keyframe
            fr.append((dist_to_boxes(p[old], s.gt_boxes.numpy().astype(np.float64)) < 0.3).mean())
        return float(np.mean(fr))

    good = on_box_fraction()
    monkeypatch.setattr(sweeps_module, "_key_from_sensor", lambda rec, g2k: np.asarray(rec["sensor2ego"]))
    bad = on_box_fraction()
    assert good > 0.7 and bad < good - 0.25, (good, bad)


def test_augmented_sample_stays_aligned(synth_world):
    plain = make(synth_world, min_points=0)
    aug = make(synth_world, min_points=0, bev_aug=BEVAug(), image_aug=ImageAug((64, 112)), train=True, seed=3)
    for i in (0, 2):
        s0, s1 = plain[i], aug[i]
        bda = s1.bda.double().numpy()
        assert not np.allclose(bda, np.eye(4))
        # radar points keep their distance to the boxes (both moved by the same bda)
        d0 = dist_to_boxes(s0.radar.numpy(), s0.gt_boxes.numpy().astype(np.float64))
        d1 = dist_to_boxes(s1.radar.numpy(), s1.gt_boxes.numpy().astype(np.float64))
        scale = abs(np.linalg.det(bda[:2, :2])) ** 0.5
        assert np.allclose(d1, d0 * scale, atol=1e-3)
        # the image augmentation is in ida (test_dataset_geometry.py checks that projections through it land on
        # the objects in the augmented images)
        assert not torch.allclose(s1.ida, s0.ida)


def test_info_cache_schema_version_and_sweeps_are_checked(synth_world, tmp_path):
    path = build_info_cache(synth_world.dataroot, synth_world.version, tmp_path / "infos.npz", radar_sweeps=4,
                            lidar_sweeps=2, workers=2)
    table = load_info_cache(path, synth_world.version, 4, 2)
    assert len(table) == 12 and all(not s["lidar"]["filename"].startswith("/") for s in table)  # relative paths
    with pytest.raises(InfoCacheError, match="v1.0-trainval.*rebuild"):
        load_info_cache(path, "v1.0-trainval")
    with pytest.raises(InfoCacheError, match="holds 4 radar_sweeps, 8 were asked"):
        load_info_cache(path, synth_world.version, radar_sweeps=8)
    InfoTable(table.a, {**table.meta, "schema": 0}).save(tmp_path / "old.npz")
    with pytest.raises(InfoCacheError, match=f"schema 0.*reads schema {SCHEMA_VERSION}.*rebuild"):
        load_info_cache(tmp_path / "old.npz", synth_world.version)
    with pytest.raises(InfoCacheError, match="schema 0.*rebuild"):  # the dataset refuses it too
        make(synth_world, cache_path=tmp_path / "old.npz")
    with gzip.open(tmp_path / "old.json.gz", "wt") as f:  # a cache of the JSON era
        json.dump({"schema": 1, "samples": []}, f)
    with pytest.raises(InfoCacheError, match=f"not a schema-{SCHEMA_VERSION} cache.*rebuild"):
        load_info_cache(tmp_path / "old.json.gz", synth_world.version)
    with pytest.raises(StaleInfoCache, match="built from other v1.0-mini tables"):
        load_info_cache(path, synth_world.version, fingerprint="0123")
    # too few sweeps at an explicit path: the dataset rebuilds the cache there
    ds = make(synth_world, cache_path=path, radar_sweeps=6)
    assert load_info_cache(path, synth_world.version).meta["radar_sweeps"] == 10 and len(ds[0].radar)


def test_info_table_round_trip_equals_the_devkit(synth_world, tmp_path):
    """Every sample read back from the table matches the devkit: files, times, poses, calibration, boxes."""
    from bevbridge.geometry import pose_matrix, quaternion_to_yaw

    nusc = synth_world.nusc
    table = load_info_cache(build_info_cache(synth_world.dataroot, synth_world.version, tmp_path / "t.npz",
                                             radar_sweeps=3, lidar_sweeps=2), synth_world.version)
    for s in nusc.sample:
        info = table[table.index_of(s["token"])]
        assert info["scene_name"] == nusc.get("scene", s["scene_token"])["name"] and info["prev"] == s["prev"]
        for channel, rec in [("LIDAR_TOP", info["lidar"]), *info["cams"].items(),
                             *((r, sw[0]) for r, sw in info["radars"].items())]:
            sd = nusc.get("sample_data", s["data"][channel])
            cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            ep = nusc.get("ego_pose", sd["ego_pose_token"])
            assert rec["filename"] == sd["filename"] and rec["timestamp"] == sd["timestamp"]
            assert np.allclose(rec["sensor2ego"], pose_matrix(np.array(cs["translation"]), np.array(cs["rotation"])))
            assert np.allclose(rec["ego2global"], pose_matrix(np.array(ep["translation"]), np.array(ep["rotation"])))
            if channel.startswith("CAM"):
                assert np.allclose(rec["K"], cs["camera_intrinsic"]) and rec["width"] == sd["width"]
        older = nusc.get("sample_data", s["data"]["RADAR_FRONT"])["prev"]
        assert len(info["radars"]["RADAR_FRONT"]) == (3 if older else 1)
        assert [r["filename"] for r in info["lidar"]["sweeps"]] == (
            [nusc.get("sample_data", nusc.get("sample_data", s["data"]["LIDAR_TOP"])["prev"])["filename"]])
        anns = [nusc.get("sample_annotation", t) for t in s["anns"]]
        assert info["anns"]["tokens"] == s["anns"] and len(info["anns"]["boxes"]) == len(anns)
        g2e = invert_transform(info["lidar"]["ego2global"])
        for box, a in zip(info["anns"]["boxes"], anns):
            assert np.allclose(box[:3], transform_points(g2e, np.array([a["translation"]]))[0], atol=1e-5)
            yaw = quaternion_to_yaw(np.array(a["rotation"])) + math.atan2(g2e[1, 0], g2e[0, 0])  # global -> ego
            assert np.isclose(math.cos(box[6] - yaw), 1.0, atol=1e-6)
            assert np.allclose(box[3:6], np.array(a["size"])[[1, 0, 2]])  # devkit wlh -> l, w, h
    assert table.nbytes() < 30_000 * len(table)  # the JSON era held ~190 KB of Python objects per sample


def test_dataloader_with_two_workers_and_cbgs(synth_world):
    ds = make(synth_world, map_grid=MAP_GRID, map_classes=("drivable_area", "vehicle"))
    loader = DataLoader(CBGSDataset(ds, len(DETECTION_CLASSES)), batch_size=2, num_workers=2, collate_fn=collate)
    batches = [b for _, b in zip(range(2), loader)]
    assert batches[1].images.shape == (2, 6, 3, 64, 112) and batches[1].radar_mask.shape[0] == 2
    assert batches[0].gt_masks.shape == (2, 2, 200, 200)


def test_sensor_dropout(synth_world):
    ds = make(synth_world, drop_cameras=("CAM_BACK",), drop_radar=True, drop_lidar=True)
    s = ds[0]
    assert s.cam_mask.tolist() == [c != "CAM_BACK" for c in s.cam_names]
    assert s.radar is None and s.lidar is None
    assert collate([s, ds[1]]).radar is None


def test_clear_errors(synth_world, tmp_path):
    with pytest.raises(FileNotFoundError, match="dataroot does not exist"):
        NuScenesDataset(tmp_path / "nope", "v1.0-mini", "mini_val", cache_path=tmp_path / "c.json.gz")
    with pytest.raises(FileNotFoundError, match=r"version folder missing.*versions present.*v1.0-mini"):
        NuScenesDataset(synth_world.dataroot, "v1.0-trainval", "val", cache_path=tmp_path / "c.json.gz")
    with pytest.raises(ValueError, match="unknown split 'nope'"):
        make(synth_world, split="nope")
    # a copy of the world without its map expansion, and with one radar sweep deleted
    root = tmp_path / "copy"
    shutil.copytree(synth_world.dataroot, root)
    shutil.rmtree(root / "maps" / "expansion")
    with pytest.raises(FileNotFoundError, match=r"map expansion missing.*nuScenes-map-expansion-v1.3"):
        NuScenesDataset(root, synth_world.version, synth_world.train_split, image_size=(64, 112), radar_sweeps=3,
                        map_grid=MAP_GRID, map_classes=("walkway",))  # maps load when the dataset opens
    ds2 = NuScenesDataset(root, synth_world.version, synth_world.train_split, image_size=(64, 112), radar_sweeps=3)
    victim = root / ds2.samples[0]["radars"]["RADAR_FRONT"][1]["filename"]
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=f"radar sweep.*{victim.name}"):
        ds2[0]
    for kind, rec in (("lidar sweep", ds2.samples[1]["lidar"]), ("camera image", ds2.samples[1]["cams"]["CAM_BACK"])):
        (root / rec["filename"]).unlink()
        with pytest.raises(FileNotFoundError, match=f"{kind}.*{Path(rec['filename']).name}"):
            ds2[1]
        shutil.copy(synth_world.dataroot / rec["filename"], root / rec["filename"])


def test_radar_velocities_are_rotated_into_the_key_frame(synth_world):
    """A return on a moving box carries the box's velocity projected on the line of sight (radial), in ego axes."""
    ds = make(synth_world, radar_sweeps=1, lidar_sweeps=0, min_points=0)
    errors = []
    for i in range(len(ds)):
        s = ds[i]
        p = s.radar.numpy()
        for b in s.gt_boxes.numpy().astype(np.float64):
            if np.hypot(*b[7:9]) < 1.0:
                continue
            on = dist_to_boxes(p, b[None]) < 0.3
            u = p[on, :2] / np.linalg.norm(p[on, :2], axis=1, keepdims=True)  # line of sight from the ego (approx.)
            radial = (u @ b[7:9])[:, None] * u
            errors += list(np.linalg.norm(p[on, 3:5] - radial, axis=1))
    errors = np.asarray(errors)
    assert len(errors) > 50 and (errors < 0.5).mean() > 0.6, ((errors < 0.5).mean(), len(errors))


def test_a_regenerated_dataroot_does_not_reuse_a_stale_cache(tmp_path):
    """The default cache is keyed by the dataroot's path; the tables' fingerprint catches new data at the same path
    (e.g. `bevbridge synth` run again with other parameters) and the cache is rebuilt."""
    from bevbridge.data import synth

    root = tmp_path / "w"
    params = dict(scenes=1, samples_per_scene=2, image_size=(32, 64), version="v1.0-mini")
    synth.generate(root, seed=1, **params)
    first = NuScenesDataset(root, "v1.0-mini", synth.TRAIN_SPLIT, image_size=None, radar_sweeps=1)
    synth.generate(root, seed=2, **params)
    second = NuScenesDataset(root, "v1.0-mini", synth.TRAIN_SPLIT, image_size=None, radar_sweeps=1)
    tokens = json.loads((root / "v1.0-mini" / "sample.json").read_text())
    assert {s["token"] for s in second.samples} == {s["token"] for s in tokens}
    assert {s["token"] for s in first.samples}.isdisjoint(s["token"] for s in second.samples)
    second[0]


def test_augmentation_is_a_function_of_seed_epoch_and_index(synth_world):
    """Same (seed, epoch, index) -> the same sample, whichever dataset object or worker draws it; set_epoch and
    another seed change the draws; train=False draws nothing."""
    kw = dict(bev_aug=BEVAug(), image_aug=ImageAug((64, 112)), train=True, radar_max_points=40, seed=7)
    a, b = make(synth_world, **kw), make(synth_world, **kw)
    s0, s1 = a[3], b[3]
    for f in ("images", "ida", "bda", "radar", "lidar", "gt_boxes"):
        assert torch.equal(getattr(s0, f), getattr(s1, f)), f
    b.set_epoch(1)
    s2 = b[3]
    assert not torch.equal(s0.bda, s2.bda) and not torch.equal(s0.ida, s2.ida)
    assert not torch.equal(make(synth_world, **{**kw, "seed": 8})[3].bda, s0.bda)
    assert not torch.equal(a[2].bda, s0.bda)
    test = make(synth_world, **{**kw, "train": False})
    assert torch.equal(test[3].bda, torch.eye(4)) and torch.equal(test[3].ida, make(synth_world)[3].ida)


def test_every_modality_through_a_two_worker_loader_and_batch_to(synth_world):
    ds = make(synth_world, num_past_frames=2, radar_sweeps=8, lidar_sweeps=2, map_grid=MAP_GRID,
              map_classes=CTAB_MAP_CLASSES, captions=f"{synth_world.version}/final_caption_bbox_token.json",
              bev_aug=BEVAug(), image_aug=ImageAug((64, 112)), train=True, drop_cameras=("CAM_BACK",))
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate, shuffle=False)
    batches = list(loader)
    assert sum(len(b) for b in batches) == len(ds)
    b = batches[1]
    assert b.images.shape == (2, 6, 3, 64, 112) and b.past.images.shape == (2, 2, 6, 3, 64, 112)
    assert b.past.ego2key.shape == (2, 2, 4, 4) and b.past.valid.shape == (2, 2)
    assert b.radar.shape[0] == 2 and b.radar.shape[2] == 7 and b.radar_mask.any(1).all()
    assert b.lidar.shape[2] == 5 and b.lidar_mask.any(1).all()
    assert b.gt_masks.shape == (2, 7, 200, 200) and len(b.captions) == 2
    assert [len(c) for c in b.captions] == [len(x) for x in b.gt_boxes]
    assert not b.cam_mask[:, b.cam_names.index("CAM_BACK")].any() and b.cam_mask.sum() == 10
    # the loader's worker drew the same sample the main process does
    assert torch.equal(b.images[0], ds[2].images) and torch.equal(b.bda[1], ds[3].bda)
    moved = b.to("meta")
    tensors = [moved.images, moved.K, moved.sensor2ego, moved.ida, moved.cam_mask, moved.radar, moved.radar_mask,
               moved.lidar, moved.lidar_mask, moved.bda, moved.ego2global, moved.timestamps, moved.gt_masks,
               *moved.gt_boxes, *moved.gt_labels, *moved.gt_attrs, *moved.gt_num_pts,
               *(getattr(moved.past, f) for f in ("images", "K", "sensor2ego", "ida", "ego2key", "valid", "timestamps"))]
    assert all(t.device.type == "meta" for t in tensors)
    assert b.images.device.type == "cpu"  # .to() returns a copy


def test_warped_map_targets_equal_the_unaugmented_target_warped_by_bda(synth_world):
    """CTAB Sec. IV-B: augmented targets are the key-frame targets warped by the same bda (nearest neighbour); the
    "redraw" mode draws them in the augmented frame instead, agreeing away from the border."""
    kw = dict(map_grid=MAP_GRID, map_classes=CTAB_MAP_CLASSES, train=True, seed=11, image_aug=ImageAug((64, 112)))
    warp = make(synth_world, bev_aug=BEVAug(masks="warp"), **kw)[5]
    redraw = make(synth_world, bev_aug=BEVAug(masks="redraw"), **kw)[5]
    plain = make(synth_world, map_grid=MAP_GRID, map_classes=CTAB_MAP_CLASSES)[5]
    bda = warp.bda.double().numpy()
    assert torch.equal(warp.bda, redraw.bda) and not np.allclose(bda, np.eye(4))
    want = apply_bda_masks(bda, plain.gt_masks.numpy(), MAP_GRID)
    assert np.array_equal(warp.gt_masks.numpy(), want)
    agree = (warp.gt_masks == redraw.gt_masks).float().mean().item()
    assert agree > 0.9, agree  # the same map; they differ in the corners and along class borders (nearest warp)
    with pytest.raises(ValueError, match="BEVAug.masks"):
        BEVAug(masks="bilinear")
