"""Camera views with 3D boxes (and optionally points) projected through K, sensor2ego and the image augmentation."""

from __future__ import annotations

import numpy as np

from bevbridge.geometry import box_corners, invert_transform, transform_points
from bevbridge.viz.bev import CLASS_COLOURS, RADAR_COLOUR

__all__ = ["project_points", "draw_boxes_on_image", "draw_points_on_image"]

# The 12 edges of a box in box_corners' order (bit 2 = x, bit 1 = y, bit 0 = z).
_EDGES = [(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1]


def project_points(xyz_ego: np.ndarray, K: np.ndarray, sensor2ego: np.ndarray, ida: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Ego-frame points ``[..., 3]`` -> pixels ``[..., 2]`` in the (augmented) image and their depth ``[...]``."""
    cam = transform_points(invert_transform(np.asarray(sensor2ego, np.float64)), np.asarray(xyz_ego, np.float64))
    depth = cam[..., 2]
    uvw = cam @ np.asarray(K, np.float64).T
    uv = uvw[..., :2] / np.clip(uvw[..., 2:3], 1e-6, None)
    if ida is not None:
        ida = np.asarray(ida, np.float64)
        uv = uv @ ida[:2, :2].T + ida[:2, 2]
    return uv, depth


def draw_boxes_on_image(img: np.ndarray, boxes: np.ndarray, labels: np.ndarray, class_names, K, sensor2ego,
                        ida=None, thickness: int = 1, min_depth: float = 0.5) -> np.ndarray:
    """Draw the wireframes of ``boxes [n, >=7]`` (ego frame) onto ``img [H, W, 3]`` in place.

    Boxes with any corner closer than ``min_depth`` in front of the camera are skipped (no clipping through the
    image plane).
    """
    import cv2

    if len(boxes) == 0:
        return img
    corners = box_corners(np.asarray(boxes, np.float64))  # [n, 8, 3]
    uv, depth = project_points(corners, K, sensor2ego, ida)
    h, w = img.shape[:2]
    for i in range(len(boxes)):
        if (depth[i] < min_depth).any():
            continue
        if (uv[i, :, 0] < -w).all() or (uv[i, :, 0] > 2 * w).all() or (uv[i, :, 1] > 2 * h).all():
            continue
        colour = CLASS_COLOURS.get(class_names[int(labels[i])], (255, 255, 255))
        pts = np.round(uv[i]).astype(np.int32)
        for a, b in _EDGES:
            cv2.line(img, tuple(pts[a]), tuple(pts[b]), colour, thickness, lineType=cv2.LINE_AA)
    return img


def draw_points_on_image(img: np.ndarray, xyz_ego: np.ndarray, K, sensor2ego, ida=None, colour=RADAR_COLOUR,
                         radius: int = 2) -> np.ndarray:
    """Draw ego-frame points in front of the camera onto ``img`` in place."""
    import cv2

    if len(xyz_ego) == 0:
        return img
    uv, depth = project_points(np.asarray(xyz_ego)[:, :3], K, sensor2ego, ida)
    h, w = img.shape[:2]
    keep = (depth > 0.5) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    for u, v in np.round(uv[keep]).astype(int):
        cv2.circle(img, (int(u), int(v)), radius, colour, -1, lineType=cv2.LINE_AA)
    return img
