"""Data augmentation as matrices: ``ida`` for images (per camera), ``bda`` for the BEV (per sample).

Image: resize, crop, flip and rotate compose into ONE 3x3 affine ``ida`` mapping original pixels to augmented
pixels; the image is warped once with it (bilinear). BEVDet's sampling ranges (RCBEVDet: resize (-0.06, 0.11)
around the base scale, rotation ±5.4°, flip, no vertical crop jitter) are the defaults.

BEV: rotation about z, uniform scale, flips of x and/or y compose into ONE 4x4 ``bda`` (CTAB/RCBEVDet: ±22.5°,
0.95–1.05, each flip with p = 0.5). The same matrix is applied to points (and radar velocities), to boxes (centre,
yaw, size under scale, velocity; via bevbridge.geometry) and to masks (nearest neighbour, the same affine), so they
stay aligned by construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from bevbridge.geometry import BEVGrid, invert_transform, make_transform, rotation_z, transform_boxes

__all__ = ["ImageAug", "BEVAug", "sample_ida", "warp_image", "sample_bda", "apply_bda_points", "apply_bda_boxes",
           "apply_bda_masks"]


@dataclass(frozen=True)
class ImageAug:
    """Image augmentation ranges. ``final_size = (H, W)`` of the network input."""

    final_size: tuple[int, int]
    resize_range: tuple[float, float] = (-0.06, 0.11)  # added to the base scale W_final / W_src
    rot_range: tuple[float, float] = (-5.4, 5.4)  # degrees
    flip: bool = True
    crop_h_range: tuple[float, float] = (0.0, 0.0)  # fraction of the resized height kept above the crop


@dataclass(frozen=True)
class BEVAug:
    rot_range: tuple[float, float] = (-22.5, 22.5)  # degrees
    scale_range: tuple[float, float] = (0.95, 1.05)
    flip_x_prob: float = 0.5
    flip_y_prob: float = 0.5
    masks: str = "warp"  # "warp" (CTAB Sec. IV-B) or "redraw"; see bevbridge.config.schema.BEVAugConfig

    def __post_init__(self) -> None:
        if self.masks not in ("warp", "redraw"):
            raise ValueError(f"BEVAug.masks must be 'warp' or 'redraw', got {self.masks!r}")


def sample_ida(src_hw: tuple[int, int], aug: ImageAug, rng: np.random.Generator | None) -> np.ndarray:
    """A 3x3 ``ida`` for one camera; ``rng=None`` gives the deterministic test-time transform (resize + centred
    crop, no flip/rotation)."""
    H, W = src_hw
    fH, fW = aug.final_size
    if rng is not None:
        resize = fW / W + rng.uniform(*aug.resize_range)
    else:
        resize = fW / W
    newW, newH = int(W * resize), int(H * resize)
    if rng is not None:
        crop_h = int((1 - rng.uniform(*aug.crop_h_range)) * newH) - fH
        crop_w = int(rng.uniform(0, max(0, newW - fW)))
        flip = bool(aug.flip and rng.uniform() < 0.5)
        rot = float(rng.uniform(*aug.rot_range))
    else:
        crop_h = int((1 - float(np.mean(aug.crop_h_range))) * newH) - fH
        crop_w = int(max(0, newW - fW) / 2)
        flip, rot = False, 0.0
    A = np.diag([resize, resize, 1.0])
    A = np.array([[1, 0, -crop_w], [0, 1, -crop_h], [0, 0, 1.0]]) @ A
    if flip:
        A = np.array([[-1, 0, fW], [0, 1, 0], [0, 0, 1.0]]) @ A
    if rot:
        c, s = math.cos(math.radians(rot)), math.sin(math.radians(rot))
        centre = np.array([fW / 2, fH / 2])
        R = np.array([[c, s], [-s, c]])  # rotation of the image content by +rot degrees (counter-clockwise)
        T = np.eye(3)
        T[:2, :2] = R
        T[:2, 2] = centre - R @ centre
        A = T @ A
    return A


def warp_image(img: np.ndarray, ida: np.ndarray, final_size: tuple[int, int]) -> np.ndarray:
    """Warp ``img [H, W, 3]`` uint8 by ``ida`` into ``final_size`` (bilinear; zeros outside)."""
    import cv2

    fH, fW = final_size
    return cv2.warpAffine(img, ida[:2].astype(np.float64), (fW, fH), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def sample_bda(aug: BEVAug | None, rng: np.random.Generator | None) -> np.ndarray:
    """A 4x4 ``bda`` = flip @ scale @ rot (BEVDet's order); identity when ``aug`` or ``rng`` is None."""
    if aug is None or rng is None:
        return np.eye(4)
    rot = math.radians(rng.uniform(*aug.rot_range))
    scale = rng.uniform(*aug.scale_range)
    fx = -1.0 if rng.uniform() < aug.flip_x_prob else 1.0
    fy = -1.0 if rng.uniform() < aug.flip_y_prob else 1.0
    A = np.diag([fx, fy, 1.0]) @ (scale * rotation_z(np.array(rot)))
    return make_transform(A, np.zeros(3))


def apply_bda_points(bda: np.ndarray, points: np.ndarray, vel_cols: tuple[int, int] | None = None) -> np.ndarray:
    """``points [n, >=3]``: xyz by the full matrix, the optional (vx, vy) columns by its 2x2 linear part."""
    out = points.copy()
    out[:, :3] = points[:, :3] @ bda[:3, :3].T + bda[:3, 3]
    if vel_cols is not None:
        a, b = vel_cols
        out[:, [a, b]] = points[:, [a, b]] @ bda[:2, :2].T
    return out


def apply_bda_boxes(bda: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``boxes [n, 9]`` through geometry.transform_boxes (centre, yaw, size under scale, velocity)."""
    return transform_boxes(bda, boxes) if len(boxes) else boxes.copy()


def apply_bda_masks(bda: np.ndarray, masks: np.ndarray, grid: BEVGrid) -> np.ndarray:
    """``masks [C, H, W]`` on ``grid`` -> the same masks seen in the augmented frame (nearest neighbour).

    Each augmented cell takes the value at ``bda^-1 @ (its centre)`` in the original masks; outside -> 0.
    """
    if np.allclose(bda, np.eye(4)):
        return masks.copy()
    inv = invert_transform(np.asarray(bda, np.float64))
    centres = grid.cell_centres(dtype=torch.float64).reshape(-1, 2)
    src = centres @ torch.from_numpy(inv[:2, :2]).T + torch.from_numpy(inv[:2, 3])
    t = torch.from_numpy(np.ascontiguousarray(masks)).to(torch.float32)[None]
    out = grid.sample(t, src[None].to(torch.float32), mode="nearest")[0]
    return out.reshape(masks.shape).round().numpy().astype(masks.dtype)
