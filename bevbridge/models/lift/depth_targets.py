"""LiDAR depth supervision for the LSS depth net (BEVDepth; RCBEVDet: BCE, weight 3.0).

``depth_targets`` projects the batch's LiDAR points into every camera (undoing the BEV augmentation, then camera
extrinsics, intrinsics and the image augmentation) and keeps, for each ``downsample x downsample`` image patch, the
nearest point's depth as a one-hot over the depth bins (BEVDet's ``get_downsampled_gt_depth``: bin k covers
[d_min + k step, d_min + (k + 1) step)). Patches without a point are background and do not count in the loss.
Vectorised over points and cameras: one ``scatter_reduce(amin)``, no loops over points.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["depth_targets", "depth_loss"]


def depth_targets(lidar: torch.Tensor, lidar_mask: torch.Tensor, K: torch.Tensor, sensor2ego: torch.Tensor,
                  ida: torch.Tensor, bda: torch.Tensor, image_hw: tuple[int, int], downsample: int,
                  depth_range: tuple[float, float, float], feat_hw: tuple[int, int] | None = None,
                  cam_mask: torch.Tensor | None = None) -> torch.Tensor:
    """One-hot depth targets ``[B, N, h, w, D]`` (all zeros where no LiDAR point falls in a patch).

    Shapes: ``lidar [B, P, >=3]`` (augmented ego frame), ``lidar_mask [B, P]``, ``K, ida [B, N, 3, 3]``,
    ``sensor2ego [B, N, 4, 4]`` (camera -> key ego, before bda), ``bda [B, 4, 4]``. ``feat_hw`` is the depth
    map's (h, w) when the image size is not a multiple of ``downsample`` (the backbone rounds up); patches are
    ``downsample`` pixels wide from the top-left corner either way. ``cam_mask [B, N]`` (bool): a camera marked False
    (dropped) gets no target at all, as the LSS gives it no depth (its prediction is zeroed, so supervising it would
    only add a constant to the loss).
    """
    B, N = K.shape[:2]
    H, W = image_hw
    h, w = feat_hw if feat_hw is not None else (H // downsample, W // downsample)
    dmin, dmax, step = depth_range
    D = int(round((dmax - dmin) / step))
    xyz = lidar[..., :3].to(torch.float32)
    # augmented ego -> ego -> camera, for every camera at once: [B, N, P, 3]
    ego = (xyz - bda[:, None, :3, 3]) @ torch.linalg.inv(bda[:, :3, :3]).transpose(1, 2)
    cam2ego = sensor2ego.to(torch.float32)
    R, t = cam2ego[..., :3, :3], cam2ego[..., :3, 3]
    pc = (ego[:, None] - t[:, :, None]) @ R  # R^T (p - t), as row vectors
    depth = pc[..., 2]
    uvw = pc @ K.transpose(-1, -2)
    uv = uvw[..., :2] / uvw[..., 2:3].clamp(min=1e-5)
    uv = uv @ ida[..., :2, :2].transpose(-1, -2) + ida[:, :, None, :2, 2]
    u, v = uv[..., 0], uv[..., 1]
    valid = (lidar_mask[:, None] & (depth >= dmin) & (depth < dmax) & (u >= 0) & (u < min(W, w * downsample))
             & (v >= 0) & (v < min(H, h * downsample)))
    if cam_mask is not None:
        valid &= cam_mask.to(torch.bool)[..., None]
    patch = (v.floor().long() // downsample).clamp(0, h - 1) * w + (u.floor().long() // downsample).clamp(0, w - 1)
    flat = (torch.arange(B * N, device=K.device).view(B, N, 1) * (h * w) + patch)[valid]
    nearest = torch.full((B * N * h * w,), float("inf"), device=K.device)
    nearest.scatter_reduce_(0, flat, depth[valid], reduce="amin")
    bins = ((nearest - dmin) / step).floor()
    fg = torch.isfinite(nearest) & (bins >= 0) & (bins < D)
    onehot = torch.zeros(B * N * h * w, D, device=K.device)
    onehot[fg] = F.one_hot(bins[fg].long(), D).float()
    return onehot.view(B, N, h, w, D)


def depth_loss(depth_probs: torch.Tensor, targets: torch.Tensor, weight: float = 3.0) -> torch.Tensor:
    """BCE between predicted depth distributions ``[B, N, D, h, w]`` (softmax) and one-hot targets
    ``[B, N, h, w, D]``, summed over bins and averaged over foreground patches; times ``weight``."""
    pred = depth_probs.permute(0, 1, 3, 4, 2).reshape(-1, depth_probs.shape[2])
    tgt = targets.reshape(-1, targets.shape[-1])
    fg = tgt.amax(1) > 0
    if not fg.any():
        return depth_probs.sum() * 0
    with torch.autocast(device_type=depth_probs.device.type, enabled=False):
        bce = F.binary_cross_entropy(pred[fg].float().clamp(1e-6, 1 - 1e-6), tgt[fg], reduction="none")
    return weight * bce.sum() / fg.sum()
