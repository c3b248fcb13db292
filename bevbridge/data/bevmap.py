"""BEV map-segmentation targets: map layers through the devkit's ``NuScenesMap.get_map_mask``, vehicles from boxes.

Targets are multi-label ``uint8 [C, H, W]`` on a ``BEVGrid`` in the key ego frame (H along y, W along x), before
any BEV augmentation (``transforms.apply_bda_masks`` applies it afterwards).

Map classes are unions of map-expansion layers (``MAP_LAYERS``): ``divider`` = road_divider ∪ lane_divider (DESIGN
.md); ``drivable_area`` = drivable_area ∪ road_segment ∪ lane (BEVFusion's definition). ``vehicle`` is rasterised
from the 3D boxes of every ``vehicle.*`` annotation (BEVCar/CTAB), not from the map.

Alignment with the devkit: ``get_map_mask`` takes a patch centred at (x, y) rotated by ``patch_angle`` degrees and
rounds polygon vertices to whole pixels, i.e. pixel j covers [j - 0.5, j + 0.5) of the canvas. Our cell j covers
[j, j + 1). Shifting the patch centre by +res/2 along both local axes makes the devkit's pixel j our cell j; the
test that overlays a known polygon proves both the shift and the rotation sign.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from bevbridge.geometry import BEVGrid, box_bev_corners, transform_points

__all__ = ["MAP_LAYERS", "VEHICLE_CATEGORY_PREFIX", "MapRasterizer", "vehicle_mask", "MapExpansionMissing"]

MAP_LAYERS: dict[str, tuple[str, ...]] = {
    "drivable_area": ("drivable_area", "road_segment", "lane"),
    "carpark_area": ("carpark_area",),
    "ped_crossing": ("ped_crossing",),
    "walkway": ("walkway",),
    "stop_line": ("stop_line",),
    "divider": ("road_divider", "lane_divider"),
    "road_divider": ("road_divider",),
    "lane_divider": ("lane_divider",),
    "road_segment": ("road_segment",),
    "lane": ("lane",),
}
VEHICLE_CATEGORY_PREFIX = "vehicle."


class MapExpansionMissing(FileNotFoundError):
    pass


class MapRasterizer:
    """Rasterises map classes for one BEVGrid; one ``NuScenesMap`` per location, loaded on first use."""

    def __init__(self, dataroot: str | Path, grid: BEVGrid, classes: tuple[str, ...],
                 layers: dict[str, tuple[str, ...]] | None = None):
        self.dataroot = Path(dataroot)
        self.grid = grid
        self.layers = {**MAP_LAYERS, **(layers or {})}
        unknown = [c for c in classes if c != "vehicle" and c not in self.layers]
        if unknown:
            raise ValueError(f"unknown map class {unknown[0]!r}; known: {sorted(self.layers) + ['vehicle']}")
        self.classes = tuple(c for c in classes if c != "vehicle")
        self._maps: dict[str, object] = {}

    def _map(self, location: str):
        if location not in self._maps:
            path = self.dataroot / "maps" / "expansion" / f"{location}.json"
            if not path.is_file():
                raise MapExpansionMissing(
                    f"map expansion missing: {path} not found. Download 'nuScenes-map-expansion-v1.3' from "
                    f"nuscenes.org and unpack it so that {self.dataroot / 'maps' / 'expansion'}/<location>.json exist")
            from nuscenes.map_expansion.map_api import NuScenesMap

            self._maps[location] = NuScenesMap(dataroot=str(self.dataroot), map_name=location)
        return self._maps[location]

    def masks(self, location: str, ego2global: np.ndarray) -> np.ndarray:
        """``uint8 [len(classes without vehicle), H, W]`` for the ego pose ``ego2global [4, 4]``."""
        g = self.grid
        if not self.classes:
            return np.zeros((0, g.H, g.W), np.uint8)
        # patch centre: the grid's centre shifted by half a cell (see the module docstring), in the global frame
        local = np.array([[(g.xmin + g.xmax) / 2 + g.res / 2, (g.ymin + g.ymax) / 2 + g.res / 2, 0.0]])
        cx, cy, _ = transform_points(np.asarray(ego2global, np.float64), local)[0]
        yaw_deg = math.degrees(math.atan2(ego2global[1][0], ego2global[0][0]))
        needed = sorted({layer for c in self.classes for layer in self.layers[c]})
        raw = self._map(location).get_map_mask((cx, cy, g.ymax - g.ymin, g.xmax - g.xmin), yaw_deg, needed,
                                               canvas_size=(g.H, g.W))
        by_layer = dict(zip(needed, raw))
        out = np.zeros((len(self.classes), g.H, g.W), np.uint8)
        for i, c in enumerate(self.classes):
            for layer in self.layers[c]:
                out[i] |= by_layer[layer].astype(np.uint8)
        return out


def vehicle_mask(grid: BEVGrid, boxes: np.ndarray) -> np.ndarray:
    """``uint8 [H, W]``: cells whose centre lies inside the BEV footprint of any box ``[n, >=7]``, plus the cell
    holding each box centre (so an object narrower than a cell still marks one cell)."""
    import cv2

    out = np.zeros((grid.H, grid.W), np.uint8)
    if len(boxes) == 0:
        return out
    corners = grid.xy_to_cell(box_bev_corners(np.asarray(boxes, np.float64)))  # cell coords, centres on integers
    shift = 8  # fixed-point sub-pixel precision for cv2.fillPoly
    pts = np.round(corners * (1 << shift)).astype(np.int32)
    for poly in pts:  # one call per box: fillPoly on several overlapping polygons would XOR their overlap
        cv2.fillConvexPoly(out, poly, 1, lineType=cv2.LINE_8, shift=shift)
    ix, iy, inside = grid.xy_to_index(np.asarray(boxes, np.float64)[:, :2])
    out[iy[inside], ix[inside]] = 1
    return out
