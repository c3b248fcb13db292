"""The ground texture: the road layout painted into a class raster (canonical frame, 0.1 m cells) + colours.

The raster is painted from the same shapely polygons the map expansion JSON is written from, so the road the
cameras see is the road the map says is there. Outside the raster everything is grass.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from bevbridge.geometry import BEVGrid

from .roads import CARPARK, GRASS, ROAD, WALKWAY, WORKSITE, RoadLayout

__all__ = ["GroundRaster", "GROUND_RGB", "GROUND_INTENSITY", "SKY_ZENITH", "SKY_HORIZON"]

# RGB per ground class (roads.GROUND_CLASSES order) and texture amplitude (grey levels).
GROUND_RGB = np.array([
    (74, 112, 52),    # grass
    (78, 78, 84),     # road (asphalt)
    (170, 160, 145),  # walkway (paving)
    (104, 102, 118),  # carpark
    (228, 228, 222),  # white paint
    (222, 182, 40),   # yellow paint
    (140, 112, 80),   # work site (dirt)
], dtype=np.float32)
GROUND_TEXTURE = np.array([16.0, 6.0, 6.0, 7.0, 4.0, 4.0, 14.0], dtype=np.float32)
# LiDAR reflectance (0-255) per ground class: paint is retro-reflective, asphalt dark.
GROUND_INTENSITY = np.array([6.0, 9.0, 22.0, 12.0, 70.0, 60.0, 15.0], dtype=np.float32)
SKY_ZENITH = np.array((88, 138, 205), dtype=np.float32)
SKY_HORIZON = np.array((196, 214, 232), dtype=np.float32)
_TILE = 256


def _fill(raster: np.ndarray, grid: BEVGrid, polygons, value: int) -> None:
    """Fill shapely polygons (holes honoured) into ``raster`` with ``value`` at quarter-cell precision."""
    ext, holes = [], []
    for poly in polygons:
        if poly.is_empty:
            continue
        for part in ([poly] if poly.geom_type == "Polygon" else poly.geoms):
            ext.append(np.round(grid.xy_to_cell(np.asarray(part.exterior.coords)) * 4).astype(np.int32))
            holes += [np.round(grid.xy_to_cell(np.asarray(h.coords)) * 4).astype(np.int32) for h in part.interiors]
    if ext:
        cv2.fillPoly(raster, ext, int(value), lineType=cv2.LINE_8, shift=2)
    if holes:
        raise ValueError("ground raster: polygons with holes are not expected in the road layout")


class GroundRaster:
    """Ground classes over the layout's extent (``grid``), looked up at canonical points with a tiled texture."""

    def __init__(self, layout: RoadLayout, res: float = 0.1, seed: int = 0):
        x0, y0, x1, y1 = layout.extent
        x0, y0 = math.floor(x0 / res) * res, math.floor(y0 / res) * res
        x1, y1 = math.ceil(x1 / res) * res, math.ceil(y1 / res) * res
        self.grid = BEVGrid(x0, x1, y0, y1, res)
        r = np.full(self.grid.shape, GRASS, dtype=np.uint8)
        _fill(r, self.grid, layout.walkways, WALKWAY)
        _fill(r, self.grid, [layout.worksite], WORKSITE)
        _fill(r, self.grid, [layout.carpark.polygon], CARPARK)
        _fill(r, self.grid, [layout.road, layout.carpark.driveway], ROAD)
        for cls in sorted({c for c, _ in layout.paint}):
            _fill(r, self.grid, [p for c, p in layout.paint if c == cls], cls)
        self.classes = r
        rng = np.random.default_rng(seed)
        # Smooth-ish noise in [-1, 1]: white noise blurred a little so the texture reads as a surface.
        noise = cv2.GaussianBlur(rng.standard_normal((_TILE, _TILE)).astype(np.float32), (0, 0), 1.2)
        self.noise = np.clip(noise / (noise.std() + 1e-6) / 2.5, -1, 1)

    def lookup(self, xy: np.ndarray) -> np.ndarray:
        """Ground class (uint8) at canonical points ``[..., 2]``; grass outside the raster."""
        ix, iy, inside = self.grid.xy_to_index(xy)
        out = np.full(xy.shape[:-1], GRASS, dtype=np.uint8)
        out[inside] = self.classes[iy[inside], ix[inside]]
        return out

    def colour(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(rgb float32 [..., 3], class uint8 [...])`` of the ground at canonical points ``[..., 2]``."""
        cls = self.lookup(xy)
        ix = np.floor(xy[..., 0] / self.grid.res).astype(np.int64) % _TILE
        iy = np.floor(xy[..., 1] / self.grid.res).astype(np.int64) % _TILE
        tex = self.noise[iy, ix] * GROUND_TEXTURE[cls]
        rgb = GROUND_RGB[cls] + tex[..., None]
        # paving slabs: darker joints every metre on walkways
        joint = ((xy[..., 0] % 1.0) < 0.06) | ((xy[..., 1] % 1.0) < 0.06)
        rgb[(cls == WALKWAY) & joint] *= 0.82
        return rgb, cls
