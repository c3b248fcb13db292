"""Perspective-view 3D box targets of BEVFormer v2's perspective head (DD3D/FCOS3D style), from the Batch's boxes.

Every camera is one "image" M = (sample, camera). Per box and camera (``project_boxes``): the box in the key ego
frame (the BEV augmentation ``bda`` undone), its centre's depth along the optical axis, its projected centre and 2D
box (the 8 corners projected, depths clamped to ``min_depth``, clipped to the image) in network-input pixels
(through ``ida``: resize, crop, flip), and its allocentric yaw and velocity: relative to the azimuth phi of the ray
from the camera to the centre in the ego's BEV plane, and mirrored when ``ida`` flips the image (sign s = sign det
ida, since a flipped image shows the mirrored object)::

    alpha = s * wrap(yaw - phi)        (v_r, v_t) = (R(-phi) v) * (1, s)

``decode_boxes`` inverts it for any location: pixel + offset --ida^-1--> original pixel --K^-1 x depth-->
camera --sensor2ego--> ego, yaw = s * alpha + phi, then ``bda``: the round trip is exact (tested with a flipped,
resized image and a rotated, mirrored BEV).

Assignment (``assign_locations``, FCOS with centre sampling as DD3D): a feature location (the centre of its
stride x stride cell in input pixels) is a positive of a box if it lies inside the box's 2D box, within
``center_radius`` x stride of its projected centre (clamped into the image) on both axes, and its largest distance
to the 2D box's sides is in its level's size range; a location claimed by several boxes takes the smallest 2D box.
Pixel convention: integer coordinates are pixel centres (OpenCV, the data layer's ``ida``).
"""

from __future__ import annotations

import math

import torch

from bevbridge.geometry import box_corners, invert_transform, transform_boxes, wrap_angle

__all__ = ["project_boxes", "decode_boxes", "assign_locations", "feature_locations", "mirror_sign"]


def mirror_sign(ida: torch.Tensor) -> torch.Tensor:
    """``[...]`` +1, or -1 where ``ida [..., 3, 3]`` mirrors the image (negative determinant)."""
    return torch.sign(torch.linalg.det(ida[..., :2, :2])).clamp(min=-1, max=1).where(
        torch.linalg.det(ida[..., :2, :2]) != 0, torch.ones_like(ida[..., 0, 0]))


def _to_pixels(pts_ego: torch.Tensor, K: torch.Tensor, s2e: torch.Tensor, ida: torch.Tensor,
               min_depth: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``pts_ego [M, ..., 3]`` -> (network-input pixels [M, ..., 2], depth [M, ...]); depth clamped to min_depth for
    the division only."""
    M = pts_ego.shape[0]
    flat = pts_ego.reshape(M, -1, 3)
    R, t = s2e[:, :3, :3], s2e[:, :3, 3]
    cam = (flat - t[:, None]) @ R  # R^T (p - t)
    uvw = cam @ K.transpose(1, 2)
    z = cam[..., 2]
    pix = uvw[..., :2] / z.clamp(min=min_depth)[..., None]
    pix = pix @ ida[:, :2, :2].transpose(1, 2) + ida[:, None, :2, 2]
    return pix.reshape(*pts_ego.shape[:-1], 2), z.reshape(pts_ego.shape[:-1])


def project_boxes(boxes: torch.Tensor, K: torch.Tensor, sensor2ego: torch.Tensor, ida: torch.Tensor,
                  bda: torch.Tensor | None, image_hw: tuple[int, int], min_depth: float = 0.1,
                  max_depth: float = 80.0) -> dict[str, torch.Tensor]:
    """Per camera and box: ``boxes [M, n, 9]`` (augmented ego frame, padded rows allowed), ``K, ida [M, 3, 3]``,
    ``sensor2ego, bda [M, 4, 4]``. Returns (all ``[M, n, ...]``): ``centre_pix`` (2), ``depth``, ``box2d``
    (x0, y0, x1, y1, clipped), ``valid`` (depth in range and a 2D box of at least one pixel), ``alpha`` (allocentric
    yaw), ``vel`` (v_r, v_t), ``size`` (l, w, h) and ``ego_boxes`` (the boxes in the key ego frame)."""
    ego = boxes if bda is None else transform_boxes(invert_transform(bda), boxes)
    centre_pix, depth = _to_pixels(ego[..., :3], K, sensor2ego, ida, min_depth)
    corners, cdepth = _to_pixels(box_corners(ego), K, sensor2ego, ida, min_depth)  # [M, n, 8, 2]
    H, W = image_hw
    lo = corners.amin(-2).clamp(min=-0.5)
    hi = corners.amax(-2)
    hi = torch.stack([hi[..., 0].clamp(max=W - 0.5), hi[..., 1].clamp(max=H - 0.5)], -1)
    box2d = torch.cat([lo, hi], -1)
    valid = (depth > min_depth) & (depth < max_depth) & ((hi - lo) >= 1).all(-1) & torch.isfinite(ego[..., :3]).all(-1)
    o = sensor2ego[:, None, :2, 3]
    phi = torch.atan2(ego[..., 1] - o[..., 1], ego[..., 0] - o[..., 0])
    s = mirror_sign(ida)[:, None]
    alpha = s * wrap_angle(ego[..., 6] - phi)
    c, sn = phi.cos(), phi.sin()
    vr = c * ego[..., 7] + sn * ego[..., 8]
    vt = -sn * ego[..., 7] + c * ego[..., 8]
    return {"centre_pix": centre_pix, "depth": depth, "box2d": box2d, "valid": valid, "alpha": alpha,
            "vel": torch.stack([vr, s * vt], -1), "size": ego[..., 3:6], "ego_boxes": ego}


def decode_boxes(pix: torch.Tensor, depth: torch.Tensor, size: torch.Tensor, alpha: torch.Tensor,
                 vel: torch.Tensor, K: torch.Tensor, sensor2ego: torch.Tensor, ida: torch.Tensor,
                 bda: torch.Tensor | None = None) -> torch.Tensor:
    """Boxes ``[M, k, 9]`` from per-location predictions ``pix`` (projected centre, input pixels) ``[M, k, 2]``,
    ``depth [M, k]``, ``size [M, k, 3]``, ``alpha [M, k]``, ``vel [M, k, 2]`` and each camera's matrices; in the
    augmented ego frame when ``bda`` is given, else in the key ego frame."""
    uv1 = torch.cat([pix, torch.ones_like(pix[..., :1])], -1)
    orig = uv1 @ torch.linalg.inv(ida).transpose(1, 2)
    orig = orig / orig[..., 2:3]
    ray = orig @ torch.linalg.inv(K).transpose(1, 2)  # camera z = 1
    cam = ray * depth[..., None]
    R, t = sensor2ego[:, :3, :3], sensor2ego[:, :3, 3]
    ctr = cam @ R.transpose(1, 2) + t[:, None]
    o = t[:, None, :2]
    phi = torch.atan2(ctr[..., 1] - o[..., 1], ctr[..., 0] - o[..., 0])
    s = mirror_sign(ida)[:, None]
    yaw = wrap_angle(s * alpha + phi)
    vr, vt = vel[..., 0], s * vel[..., 1]
    c, sn = phi.cos(), phi.sin()
    v = torch.stack([c * vr - sn * vt, sn * vr + c * vt], -1)
    boxes = torch.cat([ctr, size, yaw[..., None], v], -1)
    return boxes if bda is None else transform_boxes(bda, boxes)


def feature_locations(shapes: list[tuple[int, int]], strides: tuple[int, ...], device=None,
                      dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(locations [Lt, 2] (x, y) input pixels, stride [Lt], level [Lt])`` of every cell of every level, levels
    concatenated, each row-major: cell (i, j) of stride s is centred at ((j + 0.5) s - 0.5, (i + 0.5) s - 0.5)."""
    locs, strd, lvl = [], [], []
    for li, ((h, w), s) in enumerate(zip(shapes, strides)):
        ys = (torch.arange(h, device=device, dtype=torch.float64) + 0.5) * s - 0.5
        xs = (torch.arange(w, device=device, dtype=torch.float64) + 0.5) * s - 0.5
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        locs.append(torch.stack([gx.reshape(-1), gy.reshape(-1)], -1))
        strd.append(torch.full((h * w,), float(s), device=device, dtype=torch.float64))
        lvl.append(torch.full((h * w,), li, device=device, dtype=torch.long))
    return torch.cat(locs).to(dtype), torch.cat(strd).to(dtype), torch.cat(lvl)


def assign_locations(locations: torch.Tensor, strides: torch.Tensor, levels: torch.Tensor, proj: dict,
                     sizes_of_interest: tuple[tuple[float, float], ...], center_radius: float,
                     image_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(box index [M, Lt]`` (-1 = background), ``ltrb [M, Lt, 4]`` distances to the assigned 2D box) for the
    locations of every camera, from :func:`project_boxes`' output (see the module docstring)."""
    H, W = image_hw
    box2d, valid = proj["box2d"], proj["valid"]  # [M, n, 4], [M, n]
    M, n = valid.shape
    Lt = locations.shape[0]
    if n == 0:
        return torch.full((M, Lt), -1, dtype=torch.long, device=locations.device), locations.new_zeros(M, Lt, 4)
    x, y = locations[None, :, None, 0], locations[None, :, None, 1]  # [1, Lt, 1]
    b = box2d[:, None]  # [M, 1, n, 4]
    ltrb = torch.stack([x - b[..., 0], y - b[..., 1], b[..., 2] - x, b[..., 3] - y], -1)  # [M, Lt, n, 4]
    inside = ltrb.amin(-1) > 0
    ctr = proj["centre_pix"].clone()
    ctr[..., 0] = ctr[..., 0].clamp(-0.5, W - 0.5)
    ctr[..., 1] = ctr[..., 1].clamp(-0.5, H - 0.5)
    r = (center_radius * strides)[None, :, None]
    near = ((x - ctr[:, None, :, 0]).abs() < r) & ((y - ctr[:, None, :, 1]).abs() < r)
    soi = torch.tensor(sizes_of_interest, dtype=locations.dtype, device=locations.device)[levels]  # [Lt, 2]
    reach = ltrb.amax(-1)
    in_level = (reach >= soi[None, :, None, 0]) & (reach <= soi[None, :, None, 1])
    ok = inside & near & in_level & valid[:, None, :]
    area = ((b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])).expand(-1, Lt, -1)
    area = torch.where(ok, area, torch.full_like(area, math.inf))
    best_area, best = area.min(-1)
    idx = torch.where(torch.isfinite(best_area), best, torch.full_like(best, -1))
    sel = torch.gather(ltrb, 2, best[..., None, None].expand(-1, -1, 1, 4))[:, :, 0]
    return idx, sel
