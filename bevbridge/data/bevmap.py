"""BEV map-segmentation targets: map-expansion layers rasterised on a BEVGrid, vehicles from boxes.

Targets are multi-label ``uint8 [C, H, W]`` on a ``BEVGrid`` (H along y, W along x) in the BEV-augmented key ego
frame: :meth:`MapRasterizer.masks` takes ``ego2global`` and the sample's ``bda`` and can draw the map as seen from the
augmented frame, so a rotated or scaled target has map content up to its corners. CTAB instead warps the
unaugmented target by nearest neighbour (Sec. IV-B), leaving those corners empty; the dataset does either
(``BEVAug.masks``: "warp", the default, or "redraw").

Map classes are unions of map-expansion layers (``MAP_LAYERS``): ``divider`` = road_divider ∪ lane_divider (DESIGN
.md); ``drivable_area`` = drivable_area ∪ road_segment ∪ lane (BEVFusion's definition). ``vehicle`` is rasterised
from the 3D boxes of every ``vehicle.*`` annotation (BEVCar/CTAB), not from the map.

The geometry comes from the devkit (``NuScenesMap``: its records, ``extract_polygon`` / ``extract_line``, the same
record order and validity rule as ``NuScenesMap.get_map_mask``), but the rasterisation is ours, because the
devkit's ``get_map_mask``
  - crashes (TypeError) with shapely 2 whenever a divider crosses the patch border twice (it iterates a
    MultiLineString), which happens on real maps;
  - loops over every record of a layer on every call (cost grows with the map, not the patch): we query an STRtree;
  - cannot render a flipped or scaled patch, and rounds vertices to whole pixels.
A cell is set when its centre lies inside a polygon (cv2 fill with sub-pixel vertices, cell centres on integer
coordinates: ``BEVGrid.xy_to_cell``); lines are 2 cells wide, as the devkit draws them. tests/test_bevmap.py checks
agreement with ``get_map_mask`` on the synthetic map and a known polygon proves rotation sign and axis order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bevbridge.geometry import BEVGrid, box_bev_corners, invert_transform, transform_points

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
    "road_block": ("road_block",),
    "lane": ("lane",),
}
VEHICLE_CATEGORY_PREFIX = "vehicle."
LINE_WIDTH = 2  # cells, as the devkit's get_map_mask draws lines (2 px)
_SHIFT = 8  # fixed-point sub-pixel bits for cv2 drawing
_FAR = 4096.0  # cells: geometry is clipped to this box around the grid first (cv2 fixed-point coordinate limits)


class MapExpansionMissing(FileNotFoundError):
    pass


class _LayerIndex:
    """One map layer's geometries (global frame, devkit record order) and an STRtree over them."""

    def __init__(self, nusc_map, layer: str):
        from shapely import STRtree

        self.is_line = layer in nusc_map.non_geometric_line_layers
        geoms = []
        for rec in getattr(nusc_map, layer):
            if self.is_line:
                g = nusc_map.extract_line(rec["line_token"])
                if not g.is_empty:
                    geoms.append(g)
            elif layer == "drivable_area":  # the devkit keeps drivable_area polygons without a validity check
                geoms += [nusc_map.extract_polygon(t) for t in rec["polygon_tokens"]]
            else:
                g = nusc_map.extract_polygon(rec["polygon_token"])
                if g.is_valid:
                    geoms.append(g)
        self.geoms = geoms
        self.tree = STRtree(geoms)

    def query(self, region) -> list:
        return [self.geoms[i] for i in sorted(self.tree.query(region))]


def _parts(geom) -> list:
    """The Polygons / LineStrings inside any shapely geometry (Multi*, GeometryCollection)."""
    if geom.is_empty:
        return []
    if hasattr(geom, "geoms"):
        return [p for g in geom.geoms for p in _parts(g)]
    return [geom]


class MapRasterizer:
    """Rasterises map classes for one BEVGrid; one ``NuScenesMap`` (and its layer indices) per location, loaded on
    first use."""

    def __init__(self, dataroot: str | Path, grid: BEVGrid, classes: tuple[str, ...],
                 layers: dict[str, tuple[str, ...]] | None = None):
        self.dataroot = Path(dataroot)
        self.grid = grid
        self.layers = {**MAP_LAYERS, **(layers or {})}
        unknown = [c for c in classes if c != "vehicle" and c not in self.layers]
        if unknown:
            raise ValueError(f"unknown map class {unknown[0]!r}; known: {sorted(self.layers) + ['vehicle']}")
        self.classes = tuple(c for c in classes if c != "vehicle")
        self._index: dict[tuple[str, str], _LayerIndex] = {}
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

    def _layer(self, location: str, layer: str) -> _LayerIndex:
        key = (location, layer)
        if key not in self._index:
            nusc_map = self._map(location)
            if layer not in nusc_map.non_geometric_layers:
                raise ValueError(f"map layer {layer!r} is not a map-expansion layer ({nusc_map.non_geometric_layers})")
            self._index[key] = _LayerIndex(nusc_map, layer)
        return self._index[key]

    def preload(self, locations) -> None:
        """Load the maps and build the layer indices of ``locations`` now (e.g. before DataLoader workers fork, so
        they share them instead of each loading every map again)."""
        for loc in locations:
            for c in self.classes:
                for layer in self.layers[c]:
                    self._layer(loc, layer)

    def masks(self, location: str, ego2global: np.ndarray, bda: np.ndarray | None = None) -> np.ndarray:
        """``uint8 [len(classes without vehicle), H, W]`` for the key ego pose ``ego2global [4, 4]``, seen from the
        augmented frame ``bda [4, 4]`` (key ego -> augmented; None = identity)."""
        import cv2
        from shapely.geometry import box

        g = self.grid
        out = np.zeros((len(self.classes), g.H, g.W), np.uint8)
        if not self.classes:
            return out
        aug2global = np.asarray(ego2global, np.float64)
        if bda is not None:
            aug2global = aug2global @ invert_transform(np.asarray(bda, np.float64))
        global2aug = invert_transform(aug2global)
        # the grid's footprint in the global frame (for the STRtree) and a generous clipping box
        corners = np.array([[g.xmin, g.ymin, 0], [g.xmax, g.ymin, 0], [g.xmax, g.ymax, 0], [g.xmin, g.ymax, 0.0]])
        foot = transform_points(aug2global, corners)[:, :2]
        region = box(*foot.min(0), *foot.max(0))
        far = _FAR * g.res * np.sqrt(abs(np.linalg.det(global2aug[:2, :2]))) ** -1
        clip = box(*(foot.min(0) - far), *(foot.max(0) + far))

        def to_cells(xy: np.ndarray) -> np.ndarray:
            local = xy @ global2aug[:2, :2].T + global2aug[:2, 3]
            return np.round(g.xy_to_cell(local) * (1 << _SHIFT)).astype(np.int32)

        for i, c in enumerate(self.classes):
            for layer in self.layers[c]:
                index = self._layer(location, layer)
                for geom in index.query(region):
                    if not clip.contains(geom):
                        geom = geom.intersection(clip)
                    for part in _parts(geom):
                        if index.is_line:
                            if part.geom_type == "LineString":
                                cv2.polylines(out[i], [to_cells(np.asarray(part.coords)[:, :2])], False, 1,
                                              LINE_WIDTH, cv2.LINE_8, _SHIFT)
                        elif part.geom_type == "Polygon":
                            cv2.fillPoly(out[i], [to_cells(np.asarray(part.exterior.coords)[:, :2])], 1, cv2.LINE_8,
                                         _SHIFT)
                            holes = [to_cells(np.asarray(r.coords)[:, :2]) for r in part.interiors]
                            if holes:
                                cv2.fillPoly(out[i], holes, 0, cv2.LINE_8, _SHIFT)
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
