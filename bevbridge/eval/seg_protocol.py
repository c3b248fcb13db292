"""Map-segmentation evaluation protocols: on which BEV grid and at which thresholds the IoU is counted.

=========  =======================================  ==================================================================
protocol   grid                                     thresholds (IoU@max = best of these per class, over the split)
=========  =======================================  ==================================================================
native     the model's own map grid (``DataNeeds.   BEVFusion's 0.35, 0.40, ..., 0.65 (``DEFAULT_THRESHOLDS``): the
           map_grid``; CTAB: 102.4 m, 200x200 at    numbers of CTAB's Tables I-III
           0.512 m)
bevcar     ``BEVGrid(-50, 50, -50, 50, 0.5)``:      BEVCar's 0.25, 0.30, ..., 0.80 (12 values)
           100 m x 100 m, 200x200 at 0.5 m
=========  =======================================  ==================================================================

BEVCar (Schramm et al., ICRA 2024; the comparison of CTAB's Table I, mIoU-4) evaluates map segmentation on Simple-BEV's
200x200 grid over 100 m x 100 m (public code: ``eval.py`` bounds ``XMIN, XMAX = -50, 50`` / ``ZMIN, ZMAX = -50, 50``,
``Z, X = 200, 200``; the map patch is ``100 x 100`` m drawn on a ``200 x 200`` canvas) and reports, per class, the best
IoU over ``map_seg_thresholds = [0.25, 0.3, ..., 0.8]`` with TP/FP/FN summed over the split, i.e. the same IoU@max as
BEVFusion's, over another threshold set.

How a prediction on the native grid is scored on the protocol grid (:func:`to_protocol_grid`): every protocol cell
takes the predicted probability at its centre (bilinear, :meth:`BEVGrid.resample`) and the ground-truth label of
the native cell containing its centre (:meth:`BEVGrid.xy_to_index`); a protocol cell outside the native grid is
negative in both. When the two grids are equal nothing is resampled.

Known differences from BEVCar's own numbers (documented, not replicated):

- the ground truth is the native raster read at the 0.5 m cell centres, not the map re-rasterised at 0.5 m (the
  CTAB 0.512 m raster: a boundary moves by up to half a native cell, 0.256 m); a model whose map grid already is
  the 100 m / 0.5 m grid is scored on its own raster, exactly;
- the grid is centred on the origin of bevbridge's ego frame (the vehicle frame at the keyframe's LIDAR_TOP
  timestamp, x forward), like every grid here; BEVCar's map patch is centred on and turned with the front camera
  (``fetch_nusc_map2``: about 1.7 m ahead of that origin in nuScenes);
- BEVCar scores its vehicle (object) channel at 0.5 only, over cells of sufficiently visible objects; here vehicle
  is a map class like the others (its ``IoU@0.5/vehicle`` is reported too);
- BEVCar's mean divides by the number of classes with a non-zero IoU; here an undefined (NaN) class omits the mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bevbridge.eval.segmentation import DEFAULT_THRESHOLDS
from bevbridge.geometry import BEVGrid

__all__ = ["SEG_PROTOCOLS", "BEVCAR_GRID", "BEVCAR_THRESHOLDS", "SegProtocol", "seg_protocol", "to_protocol_grid"]

BEVCAR_GRID = BEVGrid(-50.0, 50.0, -50.0, 50.0, 0.5)
BEVCAR_THRESHOLDS: tuple[float, ...] = (0.25, 0.30, 0.35, 0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75, 0.80)


@dataclass(frozen=True)
class SegProtocol:
    """A named evaluation protocol: ``grid`` None = the model's own map grid."""

    name: str
    grid: BEVGrid | None
    thresholds: tuple[float, ...]

    def eval_grid(self, native: BEVGrid | None) -> BEVGrid | None:
        """The grid the IoU is counted on for predictions on ``native``."""
        return self.grid if self.grid is not None else native

    def describe(self, native: BEVGrid | None) -> dict[str, Any]:
        """What metrics.json records: the protocol, the grid scored (range, resolution, shape), the thresholds, and
        the model's own grid with how predictions were brought onto the scored one."""
        grid = self.eval_grid(native)
        resampled = grid is not None and native is not None and grid != native
        return {"name": self.name, "grid": _grid_dict(grid), "thresholds": list(self.thresholds),
                "native_grid": _grid_dict(native),
                "resampling": ("probabilities bilinear at the scored cells' centres; ground truth of the native cell "
                               "containing each centre" if resampled else "none")}


SEG_PROTOCOLS: dict[str, SegProtocol] = {
    "native": SegProtocol("native", None, DEFAULT_THRESHOLDS),
    "bevcar": SegProtocol("bevcar", BEVCAR_GRID, BEVCAR_THRESHOLDS),
}


def seg_protocol(name: str) -> SegProtocol:
    """The protocol called ``name`` (``eval.seg_protocol``)."""
    if name not in SEG_PROTOCOLS:
        raise ValueError(f"eval.seg_protocol must be one of {', '.join(SEG_PROTOCOLS)}, got {name!r}")
    return SEG_PROTOCOLS[name]


def _grid_dict(g: BEVGrid | None) -> dict[str, Any] | None:
    if g is None:
        return None
    return {"x_range": [g.xmin, g.xmax], "y_range": [g.ymin, g.ymax], "res": g.res, "shape": list(g.shape)}


def to_protocol_grid(probs: torch.Tensor, gt: torch.Tensor, native: BEVGrid, target: BEVGrid,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``probs [B, C, H, W]`` and binary ``gt [B, C, H, W]`` on ``native`` -> the same on ``target``
    (``[B, C, target.H, target.W]``; gt as bool). Identity (no copy) when the grids are equal."""
    if native == target:
        return probs, gt
    if probs.shape[-2:] != native.shape or gt.shape != probs.shape:
        raise ValueError(f"to_protocol_grid: probs {tuple(probs.shape)} and gt {tuple(gt.shape)} must both be "
                         f"[B, C, {native.H}, {native.W}] (the model's map grid)")
    p = native.resample(probs.float(), target, mode="bilinear").clamp_(0.0, 1.0).to(probs.dtype)
    ix, iy, inside = native.xy_to_index(target.cell_centres(gt.device, torch.float64))  # [Ht, Wt] each
    g = gt[:, :, iy.clamp(0, native.H - 1), ix.clamp(0, native.W - 1)] != 0
    return p, g & inside
