"""Geometry: the ONE place where metres <-> BEV cells, frames, quaternions and boxes are computed.

Conventions (DESIGN.md):
- Frame: ego frame at the keyframe's LIDAR_TOP timestamp; x forward, y left, z up, metres; yaw counter-clockwise
  from +x.
- Box: ``[..., 9] = (x, y, z, l, w, h, yaw, vx, vy)``; (x, y, z) is the geometric centre, l along the heading.
  7-d boxes (no velocity) are accepted wherever 9-d ones are.
- BEV tensors ``[B, C, H, W]``: H along y, W along x. Cell (iy, ix) has centre
  ``x = xmin + (ix + 0.5) * res``, ``y = ymin + (iy + 0.5) * res``.
- Quaternions are ``(w, x, y, z)`` (the devkit's order).

Every function takes torch tensors or numpy arrays and returns the same kind (numpy inputs are computed in torch
and converted back, keeping their dtype).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "BEVGrid",
    "unit_cell_centres",
    "z_to_index",
    "make_transform",
    "invert_transform",
    "transform_points",
    "rotation_z",
    "pose_matrix",
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "yaw_to_quaternion",
    "quaternion_to_yaw",
    "wrap_angle",
    "box_corners",
    "box_bev_corners",
    "transform_boxes",
    "points_in_boxes",
]

Array = TypeVar("Array", torch.Tensor, np.ndarray)


def _numpy_in_numpy_out(fn: Callable) -> Callable:
    """Let a torch implementation accept numpy arrays: numpy in -> numpy out (same dtype as the first array)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        np_dtype = next((a.dtype for a in args if isinstance(a, np.ndarray)), None)
        if np_dtype is None:
            return fn(*args, **kwargs)
        targs = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)) if isinstance(a, np.ndarray) else a
                 for a in args]
        out = fn(*targs, **kwargs)
        conv = lambda t: t.numpy().astype(np_dtype if np_dtype.kind == "f" else np.float64)  # noqa: E731
        if isinstance(out, tuple):
            return tuple(conv(t) if isinstance(t, torch.Tensor) else t for t in out)
        return conv(out)

    return wrapper


# ----------------------------------------------------------------------------------------------------------- BEV grid
@dataclass(frozen=True)
class BEVGrid:
    """An axis-aligned BEV raster over ``[xmin, xmax) x [ymin, ymax)`` metres with square cells of ``res`` metres.

    ``shape == (H, W)`` with H along y and W along x. Examples: CTAB features ``BEVGrid(-51.2, 51.2, -51.2, 51.2,
    0.8)`` (128x128); the BEVFusion map target ``BEVGrid(-50, 50, -50, 50, 0.5)`` (200x200).
    """

    xmin: float
    xmax: float
    ymin: float
    ymax: float
    res: float

    def __post_init__(self) -> None:
        if not (self.res > 0 and self.xmax > self.xmin and self.ymax > self.ymin):
            raise ValueError(f"BEVGrid needs xmax > xmin, ymax > ymin and res > 0, got {self}")
        for lo, hi, axis in ((self.xmin, self.xmax, "x"), (self.ymin, self.ymax, "y")):
            n = (hi - lo) / self.res
            if abs(n - round(n)) > 1e-6 * max(1.0, n):
                raise ValueError(f"BEVGrid {axis} extent {hi - lo} m is not a whole number of {self.res} m cells")

    @classmethod
    def square(cls, half_extent: float, res: float) -> BEVGrid:
        """``BEVGrid(-half, half, -half, half, res)``."""
        return cls(-half_extent, half_extent, -half_extent, half_extent, res)

    def with_shape(self, H: int, W: int) -> BEVGrid:  # noqa: N803
        """The same extent divided into ``H x W`` cells (e.g. CTAB's 128x128 features upsampled to 200x200).

        The one place a derived grid's resolution is computed; the cells must stay square.
        """
        res_x, res_y = (self.xmax - self.xmin) / W, (self.ymax - self.ymin) / H
        if abs(res_x - res_y) > 1e-9 * max(res_x, res_y):
            raise ValueError(f"BEVGrid.with_shape({H}, {W}) of {self} would give non-square cells "
                             f"({res_x} x {res_y} m)")
        return BEVGrid(self.xmin, self.xmax, self.ymin, self.ymax, res_x)

    @property
    def W(self) -> int:  # noqa: N802 - the paper's and the tensor's name
        return int(round((self.xmax - self.xmin) / self.res))

    @property
    def H(self) -> int:  # noqa: N802
        return int(round((self.ymax - self.ymin) / self.res))

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return self.H, self.W

    def xy_to_cell(self, xy: Array) -> Array:
        """Continuous cell coordinates ``[..., 2] = (ix, iy)``; a cell centre maps to a whole number."""
        out = xy[..., :2] * 0  # same kind/dtype/device, works for numpy and torch
        out[..., 0] = (xy[..., 0] - self.xmin) / self.res - 0.5
        out[..., 1] = (xy[..., 1] - self.ymin) / self.res - 0.5
        return out

    def xy_to_index(self, xy: Array) -> tuple[Array, Array, Array]:
        """The cell containing each point: ``(ix, iy, inside)``; ix, iy are int64, ``inside`` is a bool mask."""
        fx = (xy[..., 0] - self.xmin) / self.res
        fy = (xy[..., 1] - self.ymin) / self.res
        if isinstance(xy, np.ndarray):
            ix, iy = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
        else:
            ix, iy = torch.floor(fx).long(), torch.floor(fy).long()
        inside = (ix >= 0) & (ix < self.W) & (iy >= 0) & (iy < self.H)
        return ix, iy, inside

    def index_to_xy(self, ix: Array, iy: Array) -> Array:
        """Centres ``[..., 2] = (x, y)`` in metres of cells (ix, iy)."""
        x = self.xmin + (ix + 0.5) * self.res
        y = self.ymin + (iy + 0.5) * self.res
        if isinstance(x, torch.Tensor):
            return torch.stack([x, y], -1)
        return np.stack([np.asarray(x), np.asarray(y)], -1)  # numpy arrays, including 0-d ones

    def cell_centres(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``[H, W, 2] = (x, y)`` metres of every cell centre."""
        ix = torch.arange(self.W, device=device, dtype=torch.float64)
        iy = torch.arange(self.H, device=device, dtype=torch.float64)
        gy, gx = torch.meshgrid(iy, ix, indexing="ij")
        return self.index_to_xy(gx, gy).to(dtype)

    def xy_to_normalized(self, xy: Array) -> Array:
        """``[..., 2]`` metres -> ``grid_sample`` coordinates in [-1, 1] (first = x, align_corners=False)."""
        out = xy[..., :2] * 0
        out[..., 0] = (xy[..., 0] - self.xmin) / (self.xmax - self.xmin) * 2 - 1
        out[..., 1] = (xy[..., 1] - self.ymin) / (self.ymax - self.ymin) * 2 - 1
        return out

    def xy_to_unit(self, xy: Array) -> Array:
        """``[..., 2]`` metres -> [0, 1] normalised (x, y): the reference-point convention of deformable attention."""
        out = xy[..., :2] * 0
        out[..., 0] = (xy[..., 0] - self.xmin) / (self.xmax - self.xmin)
        out[..., 1] = (xy[..., 1] - self.ymin) / (self.ymax - self.ymin)
        return out

    def unit_to_xy(self, unit: Array) -> Array:
        """``[..., 2]`` normalised (x, y) in [0, 1] -> metres: the inverse of :meth:`xy_to_unit` (DETR box centres
        regressed in [0, 1] over the grid's extent, BEVFormer's reference points)."""
        out = unit[..., :2] * 0
        out[..., 0] = unit[..., 0] * (self.xmax - self.xmin) + self.xmin
        out[..., 1] = unit[..., 1] * (self.ymax - self.ymin) + self.ymin
        return out

    def sample(self, feat: torch.Tensor, xy: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """Sample ``feat [B, C, H, W]`` (on this grid) at metres ``xy [B, N, 2]`` -> ``[B, C, N]``; zeros outside."""
        if feat.shape[-2:] != self.shape:
            raise ValueError(f"feature map {tuple(feat.shape[-2:])} does not match BEVGrid shape {self.shape}")
        grid = self.xy_to_normalized(xy).to(feat.dtype).unsqueeze(1)  # [B, 1, N, 2]
        return F.grid_sample(feat, grid, mode=mode, padding_mode="zeros", align_corners=False)[:, :, 0]

    def resample(self, feat: torch.Tensor, target: BEVGrid, mode: str = "bilinear") -> torch.Tensor:
        """Resample ``feat [B, C, H, W]`` on this grid onto ``target`` -> ``[B, C, target.H, target.W]``.

        Each target cell takes the value at its centre (bilinear or nearest); cells outside this grid get zeros.
        This is BEVFusion's BEVGridTransform (e.g. 128x128 @ 0.8 m onto 200x200 @ 0.5 m).
        """
        B = feat.shape[0]
        xy = target.cell_centres(feat.device, torch.float64).reshape(1, -1, 2).expand(B, -1, -1)
        out = self.sample(feat, xy, mode=mode)
        return out.reshape(B, feat.shape[1], target.H, target.W)


def unit_cell_centres(H: int, W: int, device: torch.device | str | None = None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[H*W, 2]`` centres ``((ix + 0.5) / W, (iy + 0.5) / H)`` of an H x W map in [0, 1], row-major (iy outer).

    The reference points of deformable attention over a BEV map (BEVFormer, RCBEVDet's CAMF, CTAB).
    """
    ys = (torch.arange(H, device=device, dtype=torch.float64) + 0.5) / H
    xs = (torch.arange(W, device=device, dtype=torch.float64) + 0.5) / W
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], -1).to(dtype)


def z_to_index(z: Array, zmin: float, zmax: float, num_bins: int = 1) -> tuple[Array, Array]:
    """Height bins over ``[zmin, zmax)`` (``num_bins`` equal bins): ``(iz int64, inside bool)`` for ``z [...]``.

    The vertical companion of ``BEVGrid.xy_to_index`` (LSS voxels, pillars): BEVDet's z range [-5, 3] in one bin.
    """
    if not (zmax > zmin and num_bins >= 1):
        raise ValueError(f"z_to_index needs zmax > zmin and num_bins >= 1, got [{zmin}, {zmax}) in {num_bins} bins")
    f = (z - zmin) / ((zmax - zmin) / num_bins)
    iz = np.floor(f).astype(np.int64) if isinstance(z, np.ndarray) else torch.floor(f).long()
    return iz, (iz >= 0) & (iz < num_bins)


# ----------------------------------------------------------------------------------------------- rigid transforms
def make_transform(rotation: Array, translation: Array) -> Array:
    """``[..., 3, 3]`` rotation and ``[..., 3]`` translation -> ``[..., 4, 4]`` homogeneous transform."""
    if isinstance(rotation, np.ndarray):
        T = np.zeros((*rotation.shape[:-2], 4, 4), dtype=np.result_type(rotation, translation))
    else:
        T = rotation.new_zeros((*rotation.shape[:-2], 4, 4))
    T[..., :3, :3] = rotation
    T[..., :3, 3] = translation
    T[..., 3, 3] = 1
    return T


def invert_transform(T: Array) -> Array:
    """Inverse of ``[..., 4, 4]`` transforms (rigid or not: a scaling BEV augmentation is inverted too)."""
    return np.linalg.inv(T) if isinstance(T, np.ndarray) else torch.linalg.inv(T)


def transform_points(T: Array, points: Array) -> Array:
    """Apply ``T [..., 4, 4]`` to ``points [..., N, >=3]``; columns beyond xyz are passed through unchanged."""
    xyz = points[..., :3]
    out = points.copy() if isinstance(points, np.ndarray) else points.clone()
    R = T[..., None, :3, :3] if T.ndim > 2 else T[:3, :3]
    t = T[..., None, :3, 3] if T.ndim > 2 else T[:3, 3]
    out[..., :3] = (R @ xyz[..., None])[..., 0] + t
    return out


def rotation_z(yaw: Array) -> Array:
    """``[...]`` yaw (rad) -> ``[..., 3, 3]`` rotation about +z (counter-clockwise)."""
    lib = np if isinstance(yaw, np.ndarray) else torch
    c, s = lib.cos(yaw), lib.sin(yaw)
    z, o = c * 0, c * 0 + 1
    rows = [lib.stack([c, -s, z], -1), lib.stack([s, c, z], -1), lib.stack([z, z, o], -1)]
    return lib.stack(rows, -2)


@_numpy_in_numpy_out
def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` quaternions (w, x, y, z), any norm -> ``[..., 3, 3]`` rotation matrices."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        -1,
    ).reshape(*q.shape[:-1], 3, 3)


@_numpy_in_numpy_out
def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """``[..., 3, 3]`` rotation matrices -> ``[..., 4]`` unit quaternions (w, x, y, z) with w >= 0.

    Computes all four candidate forms and keeps the best-conditioned one per matrix (numerically stable for any
    rotation, including 180 degrees).
    """
    m = R
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    diag = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    cands = torch.stack(
        [
            torch.stack([diag[..., 0], m21 - m12, m02 - m20, m10 - m01], -1),
            torch.stack([m21 - m12, diag[..., 1], m10 + m01, m02 + m20], -1),
            torch.stack([m02 - m20, m10 + m01, diag[..., 2], m12 + m21], -1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, diag[..., 3]], -1),
        ],
        -2,
    )  # [..., 4 candidates, 4]; candidate k is 2*sqrt(diag_k) * q
    best = diag.argmax(-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4))[..., 0, :]
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def yaw_to_quaternion(yaw: Array) -> Array:
    """``[...]`` yaw about +z -> ``[..., 4]`` quaternions (w, x, y, z)."""
    lib = np if isinstance(yaw, np.ndarray) else torch
    z = yaw * 0
    return lib.stack([lib.cos(yaw / 2), z, z, lib.sin(yaw / 2)], -1)


def quaternion_to_yaw(q: Array) -> Array:
    """Heading of the rotated +x axis in the xy plane: ``[..., 4]`` (w, x, y, z) -> ``[...]`` radians."""
    R = quaternion_to_matrix(q)
    lib = np if isinstance(R, np.ndarray) else torch
    return lib.arctan2(R[..., 1, 0], R[..., 0, 0])


def pose_matrix(translation: Array, rotation_wxyz: Array) -> Array:
    """A devkit pose (translation ``[..., 3]``, rotation ``[..., 4]`` wxyz) -> ``[..., 4, 4]`` sensor->parent."""
    return make_transform(quaternion_to_matrix(rotation_wxyz), translation)


def wrap_angle(a: Array) -> Array:
    """Angles wrapped to ``[-pi, pi)``."""
    return (a + math.pi) % (2 * math.pi) - math.pi


# ------------------------------------------------------------------------------------------------------------- boxes
# Corner order: index bits (x, y, z) -> sign; corner k = centre + R @ (±l/2, ±w/2, ±h/2) with bit 2 of k for x,
# bit 1 for y, bit 0 for z (0 = minus). So corners 0..3 are the x- half (rear), 4..7 the x+ half (front).
_CORNER_SIGNS = np.array([[(k >> 2) & 1, (k >> 1) & 1, k & 1] for k in range(8)], dtype=np.float64) * 2 - 1
# BEV corners counter-clockwise starting at the rear-right: (-l/2,-w/2), (l/2,-w/2), (l/2,w/2), (-l/2,w/2).
_BEV_SIGNS = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)


def box_corners(boxes: Array) -> Array:
    """``[..., >=7]`` boxes -> ``[..., 8, 3]`` corners (order: see ``_CORNER_SIGNS``; 0-3 rear, 4-7 front)."""
    lib = np if isinstance(boxes, np.ndarray) else torch
    signs = _CORNER_SIGNS if lib is np else torch.as_tensor(_CORNER_SIGNS, dtype=boxes.dtype, device=boxes.device)
    local = boxes[..., None, 3:6] / 2 * signs  # [..., 8, 3]
    R = rotation_z(boxes[..., 6])  # [..., 3, 3]
    return (R[..., None, :, :] @ local[..., None])[..., 0] + boxes[..., None, :3]


def box_bev_corners(boxes: Array) -> Array:
    """``[..., >=7]`` boxes -> ``[..., 4, 2]`` BEV footprint corners, counter-clockwise."""
    lib = np if isinstance(boxes, np.ndarray) else torch
    signs = _BEV_SIGNS if lib is np else torch.as_tensor(_BEV_SIGNS, dtype=boxes.dtype, device=boxes.device)
    local = boxes[..., None, 3:5] / 2 * signs  # [..., 4, 2]
    c, s = lib.cos(boxes[..., 6])[..., None], lib.sin(boxes[..., 6])[..., None]
    x = local[..., 0] * c - local[..., 1] * s + boxes[..., 0:1]
    y = local[..., 0] * s + local[..., 1] * c + boxes[..., 1:2]
    return lib.stack([x, y], -1)


def transform_boxes(T: Array, boxes: Array) -> Array:
    """Apply ``T [4, 4]`` (rigid, or a BEV augmentation with flips and scale) to ``boxes [..., 7 or 9]``.

    The centre is transformed as a point; the yaw is the heading of the transformed +l axis; l, w, h are scaled by
    the length of the transformed l, w and z axes (identity for rigid transforms); velocity (vx, vy) is a vector and
    gets the linear part. A box is symmetric, so under a reflection the same solid keeps l along its heading.
    Assumes T does not tilt the z axis (true for every ego/global pose in nuScenes to within the box's own yaw).
    A batch of transforms ``T [M, 4, 4]`` applies to ``boxes [M, n, 7 or 9]`` (one transform per row of boxes).
    """
    lib = np if isinstance(boxes, np.ndarray) else torch
    out = boxes.copy() if lib is np else boxes.clone()
    A = T[:3, :3] if T.ndim == 2 else T[..., None, :3, :3]
    out[..., :3] = transform_points(T, boxes[..., :3])
    c, s = lib.cos(boxes[..., 6]), lib.sin(boxes[..., 6])
    z = c * 0
    head = lib.stack([c, s, z], -1)  # [..., 3]
    side = lib.stack([-s, c, z], -1)
    up = lib.stack([z, z, z + 1], -1)
    head_t, side_t, up_t = ((A @ v[..., None])[..., 0] for v in (head, side, up))
    out[..., 6] = lib.arctan2(head_t[..., 1], head_t[..., 0])
    for col, v in ((3, head_t), (4, side_t), (5, up_t)):
        out[..., col] = boxes[..., col] * lib.sqrt((v * v).sum(-1))
    if boxes.shape[-1] >= 9:
        vel = boxes[..., 7:9]
        out[..., 7:9] = (A[..., :2, :2] @ vel[..., None])[..., 0]
    return out


def points_in_boxes(points: Array, boxes: Array, margin: float = 0.0) -> Array:
    """``[N, M]`` bool: point n (``points [N, >=3]``) lies inside box m (``boxes [M, >=7]``, same frame), each box
    grown by ``margin`` metres on every side (a point on a face is inside)."""
    lib = np if isinstance(points, np.ndarray) else torch
    rel = points[:, None, :3] - boxes[None, :, :3]  # [N, M, 3]
    c, s = lib.cos(boxes[:, 6]), lib.sin(boxes[:, 6])
    lx = c * rel[..., 0] + s * rel[..., 1]
    ly = -s * rel[..., 0] + c * rel[..., 1]
    half = boxes[:, 3:6] / 2 + margin
    return (abs(lx) <= half[:, 0]) & (abs(ly) <= half[:, 1]) & (abs(rel[..., 2]) <= half[:, 2])
