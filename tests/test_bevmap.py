"""BEV map targets: agreement with the devkit's get_map_mask, lines that cross the patch border more than once,
rendering in the BEV-augmented frame (rotated corners included)."""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from bevbridge.data.bevmap import MapRasterizer
from bevbridge.data.nuscenes import NuScenesDataset
from bevbridge.data.transforms import BEVAug
from bevbridge.geometry import BEVGrid, invert_transform, make_transform, rotation_z, transform_points

LOC = "boston-seaport"


def map_with(tmp_path, world_root, **layers):
    """A copy of the synthetic world's map of LOC with extra nodes/polygons/lines and layers replaced."""
    m = json.loads((world_root / "maps" / "expansion" / f"{LOC}.json").read_text())
    for key in ("node", "polygon", "line"):
        m[key] += layers.pop(key, [])
    m.update(layers)
    (tmp_path / "maps" / "expansion").mkdir(parents=True, exist_ok=True)
    (tmp_path / "maps" / "expansion" / f"{LOC}.json").write_text(json.dumps(m))
    return tmp_path


def test_a_divider_that_leaves_and_reenters_the_patch_is_drawn(synth_world, tmp_path):
    """A U-shaped lane divider whose bottom lies outside the BEV patch intersects it in two pieces (a
    MultiLineString). The devkit 1.2.0's mask_for_lines iterates it, which shapely 2 forbids (TypeError)."""
    gx, gy = 2000.0, 800.0
    U = [(0.0, 3.0), (30.0, 3.0), (30.0, -3.0), (0.0, -3.0)]  # reaches x = 30 m; the patch ends at x = 24 m
    nodes = [{"token": f"u{i}", "x": gx + x, "y": gy + y} for i, (x, y) in enumerate(U)]
    root = map_with(tmp_path, synth_world.dataroot, node=nodes,
                    line=[{"token": "lU", "node_tokens": [n["token"] for n in nodes]}],
                    lane_divider=[{"token": "dU", "line_token": "lU", "lane_divider_segments": []}],
                    road_divider=[])
    grid = BEVGrid(-8.0, 24.0, -12.0, 12.0, 0.25)
    pose = make_transform(rotation_z(np.array(0.0)), np.array([gx, gy, 0.0]))
    got = MapRasterizer(root, grid, ("divider",)).masks(LOC, pose)[0]
    for y in (3.0, -3.0):  # both arms are drawn along their whole length inside the patch
        ix, iy, ok = grid.xy_to_index(np.array([[x, y] for x in np.arange(0.5, 23.5, 0.25)]))
        assert ok.all() and got[iy, ix].all(), y
    assert got[grid.xy_to_index(np.array([[10.0, 0.0]]))[1][0], grid.xy_to_index(np.array([[10.0, 0.0]]))[0][0]] == 0


def test_polygon_layers_agree_with_the_devkit_get_map_mask(synth_world):
    """On the synthetic map, for rotated poses along the scenes: our masks == NuScenesMap.get_map_mask (patch
    centre shifted by half a cell: the devkit rounds vertices, so its pixel j covers [j - 0.5, j + 0.5))."""
    from nuscenes.map_expansion.map_api import NuScenesMap

    grid = BEVGrid(-40.0, 40.0, -30.0, 30.0, 0.5)
    classes = ("drivable_area", "ped_crossing", "walkway", "carpark_area", "stop_line")
    ds = NuScenesDataset(synth_world.dataroot, synth_world.version, synth_world.train_split, image_size=None,
                         radar_sweeps=0, lidar_sweeps=0)
    ours = MapRasterizer(synth_world.dataroot, grid, classes)
    inters = unions = 0
    for info in ds.samples[::3]:
        nmap = NuScenesMap(dataroot=str(synth_world.dataroot), map_name=info["location"])
        pose = np.asarray(info["lidar"]["ego2global"])
        centre = transform_points(pose, np.array([[grid.res / 2, grid.res / 2, 0.0]]))[0]
        yaw = math.degrees(math.atan2(pose[1, 0], pose[0, 0]))
        layers = {"drivable_area": ("drivable_area", "road_segment", "lane")}
        got = ours.masks(info["location"], pose)
        for i, c in enumerate(classes):
            names = list(layers.get(c, (c,)))
            want = nmap.get_map_mask((centre[0], centre[1], 60.0, 80.0), yaw, names, canvas_size=grid.shape).max(0)
            inters += int((got[i] & want).sum())
            unions += int((got[i] | want).sum())
    assert unions > 5000 and inters / unions > 0.98, inters / unions


def test_map_targets_are_rendered_in_the_augmented_frame(synth_world):
    """With a BEV augmentation and masks="redraw" the map target is the map seen from the augmented frame,
    including the corners that a warp of the unaugmented target would leave empty."""
    grid = BEVGrid.square(25.6, 0.4)
    big = BEVGrid.square(51.2, 0.4)  # covers every cell of the rotated and scaled grid
    aug = NuScenesDataset(synth_world.dataroot, synth_world.version, synth_world.train_split, image_size=None,
                          radar_sweeps=0, lidar_sweeps=0, map_grid=grid, map_classes=("drivable_area",),
                          bev_aug=BEVAug(rot_range=(20.0, 25.0), masks="redraw"), train=True,
                          seed=1)
    reference = MapRasterizer(synth_world.dataroot, big, ("drivable_area",))
    corner_cells = agree = total = 0
    for i in range(0, len(aug), 2):
        s = aug[i]
        bda = s.bda.double().numpy()
        want_big = reference.masks(s.location, s.ego2global.numpy())[0]
        src = transform_points(invert_transform(bda), np.c_[grid.cell_centres(dtype=torch.float64)
                                                               .reshape(-1, 2).numpy(), np.zeros(grid.H * grid.W)])
        ix, iy, ok = big.xy_to_index(src[:, :2])
        assert ok.all()
        want = want_big[iy, ix].reshape(grid.shape)
        got = s.gt_masks[0].numpy()
        agree += int((got == want).sum())
        total += got.size
        _, _, inside_orig = grid.xy_to_index(src[:, :2])
        corner_cells += int((want.reshape(-1)[~inside_orig] == 1).sum())
        assert (got.reshape(-1)[~inside_orig] == want.reshape(-1)[~inside_orig]).mean() > 0.97
    assert corner_cells > 100 and agree / total > 0.98, (corner_cells, agree / total)
