"""Camera renderer: one ray per pixel against the ground plane, the sky and the objects' solid 3D boxes.

Each pixel's ray is cast through its centre; objects are exact oriented boxes (occlusion is a z-buffer over all
(pixel, box) pairs), shaded by the angle between the face and the sun, and painted with class-specific details
(windows, wheels, heads, cone bands, barrier stripes) so classes differ in colour AND in shape. The ground colour
comes from the ground raster (the same polygons as the map). Since boxes are convex and rays start outside them, a
box's pixels are exactly where its geometry projects: a visible box's projected centre lands on its own pixels
unless something nearer covers it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bevbridge.geometry import box_corners, rotation_z, transform_points

from .catalog import PATTERNS, RIDER_RGB
from .ground import SKY_HORIZON, SKY_ZENITH, GroundRaster
from .raycast import cast_boxes, pairs_from_rects
from .rig import SensorCalib

__all__ = ["CameraFrame", "render_camera", "pixel_rays"]

CAR, TRUCK, BUS, TRAILER, CONSTRUCTION, PERSON, CYCLE, CONE, BARRIER = range(len(PATTERNS))
_GLASS = np.array((38, 48, 62), dtype=np.float32)
_RUBBER = np.array((28, 28, 30), dtype=np.float32)
_SKIN = np.array((226, 186, 152), dtype=np.float32)
_TROUSERS = np.array((45, 45, 66), dtype=np.float32)
_WHITE = np.array((236, 236, 236), dtype=np.float32)
_GREY = np.array((120, 120, 120), dtype=np.float32)
_RIDER = np.array(RIDER_RGB, dtype=np.float32)
_NEAR = 0.05  # m: box corners nearer than this to the image plane make the box 'straddle' the camera


@dataclass
class CameraFrame:
    """``image [H, W, 3]`` uint8 RGB; ``instance [H, W]`` int32 index of the box seen at each pixel (-1: ground or
    sky); per box ``hit_pixels [M]`` (pixels whose ray pierces it, occluded or not) and ``visible_pixels [M]``."""

    image: np.ndarray
    instance: np.ndarray
    hit_pixels: np.ndarray
    visible_pixels: np.ndarray


def pixel_rays(K: np.ndarray, H: int, W: int) -> torch.Tensor:
    """Unit ray directions through every pixel centre, camera frame: ``[H * W, 3]`` (row-major)."""
    u = (torch.arange(W, dtype=torch.float64) + 0.5 - K[0, 2]) / K[0, 0]
    v = (torch.arange(H, dtype=torch.float64) + 0.5 - K[1, 2]) / K[1, 1]
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    d = torch.stack([uu, vv, torch.ones_like(uu)], -1).reshape(-1, 3)
    return (d / d.norm(dim=-1, keepdim=True)).float()


# The 12 edges of a box as corner-index pairs (corners differ in one bit, see geometry.box_corners).
_EDGES = np.array([(k, k | bit) for k in range(8) for bit in (1, 2, 4) if not k & bit])


def _box_rects(calib: SensorCalib, boxes: np.ndarray) -> torch.Tensor:
    """Pixel rectangles ``[M, 4] = (r0, r1, c0, c1)`` that contain each box's projection (empty if not in view).

    A box is clipped by the plane z = _NEAR in front of the camera first (its corners in front plus the points where
    its edges cross the plane), so a box beside the car that reaches behind the camera still gets a tight rectangle.
    """
    H, W = calib.image_size
    M = len(boxes)
    rects = np.zeros((M, 4), dtype=np.int64)
    if M == 0:
        return torch.from_numpy(rects)
    corners = transform_points(calib.ego2sensor, box_corners(boxes[:, :7]))  # [M, 8, 3]
    a, b = corners[:, _EDGES[:, 0]], corners[:, _EDGES[:, 1]]  # [M, 12, 3]
    za, zb = a[..., 2], b[..., 2]
    crosses = (za > _NEAR) != (zb > _NEAR)
    s = np.where(crosses, (_NEAR - za) / np.where(crosses, zb - za, 1.0), 0.0)
    pts = np.concatenate([corners, a + s[..., None] * (b - a)], 1)  # [M, 20, 3]
    valid = np.concatenate([corners[..., 2] > _NEAR, crosses], 1)
    z = np.where(valid, np.maximum(pts[..., 2], _NEAR), 1.0)
    u = calib.K[0, 0] * pts[..., 0] / z + calib.K[0, 2]
    v = calib.K[1, 1] * pts[..., 1] / z + calib.K[1, 2]
    inf = np.inf
    rects[:, 0] = np.clip(np.floor(np.where(valid, v, inf).min(-1)), 0, H)
    rects[:, 1] = np.clip(np.ceil(np.where(valid, v, -inf).max(-1)), 0, H)
    rects[:, 2] = np.clip(np.floor(np.where(valid, u, inf).min(-1)), 0, W)
    rects[:, 3] = np.clip(np.ceil(np.where(valid, u, -inf).max(-1)), 0, W)
    rects[~valid.any(-1)] = 0
    return torch.from_numpy(rects)


def _paint_objects(hits, boxes: np.ndarray, pattern: np.ndarray, rgb: np.ndarray, rider: np.ndarray,
                   sun_ego: np.ndarray, pix: np.ndarray) -> np.ndarray:
    """Colours ``[K, 3]`` of the pixels ``pix`` whose nearest surface is a box."""
    b = hits.box[pix].numpy()
    face = hits.face[pix].numpy()
    loc = hits.local[pix].numpy()
    size = boxes[b, 3:6]
    l, w, h = size[:, 0], size[:, 1], size[:, 2]
    hz = (loc[:, 2] + h / 2) / h  # relative height of the hit point, 0 = ground
    code = pattern[b]
    side = face < 4
    col = rgb[b].copy()
    glass = side & (((code == CAR) & (hz > 0.58) & (hz < 0.9))
                    | ((code == BUS) & (hz > 0.45) & (hz < 0.85))
                    | ((code == TRUCK) & (loc[:, 0] > l / 2 - 2.0) & (hz > 0.55) & (hz < 0.85))
                    | ((code == CONSTRUCTION) & (loc[:, 0] < -l / 2 + 2.6) & (hz > 0.55)))
    col[glass] = _GLASS
    dark = side & ((np.isin(code, (CAR, BUS, TRUCK)) & (hz < 0.2)) | ((code == TRAILER) & (hz < 0.25))
                   | ((code == CONSTRUCTION) & (hz < 0.3)) | ((code == CYCLE) & (hz < 0.14)))
    col[dark] = _RUBBER
    person = code == PERSON
    col[person & (hz > 0.86)] = _SKIN
    col[person & (hz < 0.47)] = _TROUSERS
    cyc_rider = (code == CYCLE) & rider[b]
    col[cyc_rider & (hz > 0.5)] = _RIDER
    col[cyc_rider & (hz > 0.9)] = _RUBBER  # helmet
    cone = code == CONE
    col[cone & (hz > 0.45) & (hz < 0.62)] = _WHITE
    col[cone & (hz < 0.06)] = _RUBBER
    barrier = code == BARRIER
    stripe = (np.floor((loc[:, 1] + w / 2) / 0.6) % 2) == 1
    col[barrier & stripe] = _WHITE
    col[barrier & (hz < 0.15)] = _GREY
    # Lambert shading by the face normal in the ego frame
    axis, positive = face // 2, (face % 2) * 2.0 - 1.0
    n_local = np.zeros((len(pix), 3), dtype=np.float32)
    n_local[np.arange(len(pix)), axis] = positive
    n = (rotation_z(boxes[b, 6]) @ n_local[:, :, None])[..., 0]
    light = 0.5 + 0.55 * np.clip(n @ sun_ego, 0.0, None)
    return col * light[:, None]


def render_camera(calib: SensorCalib, rays_cam: torch.Tensor, boxes: np.ndarray, pattern: np.ndarray, rgb: np.ndarray,
                  rider: np.ndarray, ground: GroundRaster, ego2canonical: np.ndarray, sun_ego: np.ndarray,
                  noise: np.ndarray) -> CameraFrame:
    """Render one camera. ``boxes [M, >=7]`` in the ego frame; ``pattern [M]`` (catalog.PATTERNS index), ``rgb
    [M, 3]`` and ``rider [M]`` per box; ``ego2canonical [3, 3]`` maps ego xy to the ground raster's frame;
    ``rays_cam`` from :func:`pixel_rays`; ``sun_ego [3]`` unit vector towards the sun in the ego frame; ``noise
    [H * W, 3]`` sensor noise added to the image."""
    H, W = calib.image_size
    R = torch.from_numpy(calib.sensor2ego[:3, :3]).float()
    origin = torch.from_numpy(calib.sensor2ego[:3, 3]).float()
    dirs = rays_cam @ R.T  # [HW, 3] ego frame
    ray_idx, box_idx = pairs_from_rects(_box_rects(calib, boxes), W)
    hits = cast_boxes(origin, dirs, torch.from_numpy(boxes[:, :7]).float(), ray_idx, box_idx)

    img = np.empty((H * W, 3), dtype=np.float32)
    dz = dirs[:, 2]
    t_ground = torch.where(dz < -1e-6, -origin[2] / dz.clamp(max=-1e-6), torch.full_like(dz, float("inf")))
    is_obj = hits.t < t_ground
    is_ground = ~is_obj & torch.isfinite(t_ground)
    is_sky = ~is_obj & ~is_ground

    up = dz[is_sky].clamp(min=0).numpy()
    img[is_sky.numpy()] = SKY_HORIZON + (SKY_ZENITH - SKY_HORIZON) * np.clip(up * 2.5, 0, 1)[:, None] ** 0.8
    g = is_ground.numpy()
    if g.any():
        tg = t_ground[is_ground]
        xy_ego = (origin[:2] + tg[:, None] * dirs[is_ground, :2]).double().numpy()
        xy_can = xy_ego @ ego2canonical[:2, :2].T + ego2canonical[:2, 2]
        col, _ = ground.colour(xy_can)
        haze = (1.0 - np.exp(-tg.numpy() / 350.0))[:, None]
        img[g] = col * (1 - haze) + SKY_HORIZON * haze
    o = is_obj.numpy()
    if o.any():
        img[o] = _paint_objects(hits, boxes, pattern, rgb, rider, sun_ego, np.nonzero(o)[0])
    img += noise
    instance = np.where(o, hits.box.numpy(), -1).astype(np.int32)
    visible = np.bincount(instance[o], minlength=len(boxes)) if len(boxes) else np.zeros(0, np.int64)
    return CameraFrame(np.clip(img, 0, 255).astype(np.uint8).reshape(H, W, 3), instance.reshape(H, W),
                       hits.hit_rays.numpy(), visible)
