"""LiDAR depth targets: the nearest point of each patch, in the right bin, after undoing bda and ida."""

import math

import numpy as np
import torch

from bevbridge.geometry import make_transform, rotation_z
from bevbridge.models.lift.depth_targets import depth_loss, depth_targets


def camera():
    R = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=np.float64)  # looks along +x
    s2e = torch.tensor(make_transform(R, np.array([1.0, 0.0, 1.5])), dtype=torch.float32)
    K = torch.tensor([[100.0, 0, 64], [0, 100.0, 48], [0, 0, 1]])
    return K, s2e


def test_nearest_point_bin_after_bda_and_ida():
    K, s2e = camera()
    pts = torch.tensor([[11.2, 0.0, 1.5], [31.0, 0.0, 1.5], [5.2, 0.0, 1.5]])  # depths 10.2, 30 (same patch), 4.2
    pts[2, 1] = -2.0  # the third point to the right: another patch
    bda = torch.tensor(make_transform(0.97 * rotation_z(np.array(math.radians(20))), np.zeros(3)), dtype=torch.float32)
    aug_pts = pts @ bda[:3, :3].T
    ida = torch.tensor([[0.5, 0, 2.0], [0, 0.5, 0.0], [0, 0, 1]])  # halve the image, shift right by 2 px
    t = depth_targets(aug_pts[None], torch.ones(1, 3, dtype=torch.bool), K[None, None], s2e[None, None],
                      ida[None, None], bda[None], (48, 64), 8, (1.0, 60.0, 0.5))
    assert t.shape == (1, 1, 6, 8, 118)
    # (64, 48) -> ida -> (34, 24) -> patch (row 3, col 4); nearest depth 10.2 m -> bin 18
    assert t[0, 0, 3, 4].argmax() == 18 and t[0, 0, 3, 4].sum() == 1
    assert t.sum() == 2  # two patches have a point; the far one in the first patch is hidden
    u = 64 + 100 * 2.0 / 4.2
    col = int((0.5 * u + 2) // 8)
    assert t[0, 0, 3, col].argmax() == 6  # 4.2 m -> bin 6


def test_depth_loss_ignores_background_and_is_zero_for_perfect_predictions():
    t = torch.zeros(1, 1, 2, 2, 4)
    t[0, 0, 0, 0, 1] = 1
    perfect = t.permute(0, 1, 4, 2, 3).clone()
    perfect[0, 0, :, 1, 1] = 0.25  # background patch: anything
    assert depth_loss(perfect, t).item() < 1e-3
    wrong = torch.full_like(perfect, 0.25)
    assert depth_loss(wrong, t).item() > 1.0


def test_a_dropped_camera_gets_no_depth_target():
    """``cam_mask`` False: no target for that camera, the others unchanged. Catches depth supervision of a dropped
    camera, whose predicted depth the LSS zeroes (the loss would only add a constant that HUW then reads as noise)."""
    K, s2e = camera()
    pts = torch.tensor([[[11.2, 0.0, 1.5], [5.2, -2.0, 1.5]]])
    two = lambda x: torch.stack([x, x])[None]  # noqa: E731  two identical cameras
    args = (pts, torch.ones(1, 2, dtype=torch.bool), two(K), two(s2e), two(torch.eye(3)), torch.eye(4)[None],
            (96, 128), 16, (1.0, 60.0, 0.5))
    full = depth_targets(*args)
    masked = depth_targets(*args, cam_mask=torch.tensor([[True, False]]))
    assert full[0, 1].sum() == 2 and masked[0, 1].sum() == 0
    assert torch.equal(masked[0, 0], full[0, 0])
