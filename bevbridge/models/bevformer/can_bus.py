"""BEVFormer's vehicle signal ("CAN bus", 18 values per frame), derived from ego poses, and the MLP that embeds it.

The released BEVFormer reads nuScenes' CAN-bus expansion and overwrites part of it with pose data. We do not depend
on that expansion: every value is computed from the Batch's ego poses and timestamps, in the released layout::

    [0:3]   translation since the previous frame, global frame (m)        released: pose delta, same meaning
    [3:7]   global rotation quaternion (w, x, y, z)                       released: same
    [7:10]  acceleration in this frame's ego frame (m/s^2)                released: CAN IMU (includes gravity)
    [10:13] rotation rate (rad/s): (0, 0, yaw rate)                       released: CAN
    [13:16] velocity in this frame's ego frame (m/s)                      released: CAN
    [16]    global yaw in [0, 2 pi) (rad)                                 released: same
    [17]    yaw change since the previous frame (degrees, wrapped)        released: unwrapped difference

Frames are the key frame (index 0) and the past keyframes (1..T, most recent first); only frames that exist count
(``PastFrames.valid``: a scene's start repeats the nearest frame, which is skipped here). Finite differences:
velocity and yaw rate from a frame and its predecessor (the first frame of the chain uses its successor; a lone key
frame gets 0); acceleration from consecutive velocities (0 for the chain's first frame). As in the released queue,
the first frame of the chain has zero deltas ([0:3] and [17]). Accelerations exclude gravity (the IMU's include it).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bevbridge.geometry import matrix_to_quaternion

__all__ = ["CAN_BUS_DIMS", "can_bus_from_poses", "CanBusMLP"]

CAN_BUS_DIMS = 18


def _wrap(a: torch.Tensor) -> torch.Tensor:
    return (a + math.pi) % (2 * math.pi) - math.pi


def can_bus_from_poses(ego2global: torch.Tensor, key_timestamps: torch.Tensor, ego2key: torch.Tensor | None = None,
                       timestamps: torch.Tensor | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
    """The 18-value signal of the key frame and each past frame: ``[B, 1 + T, 18]`` (float32).

    Args:
        ego2global: ``[B, 4, 4]`` key ego -> global (Batch.ego2global, float64).
        key_timestamps: ``[B]`` microseconds (Batch.timestamps).
        ego2key, timestamps, valid: the past frames' ``[B, T, 4, 4]``, ``[B, T]`` (us), ``[B, T]`` (PastFrames);
            None for no past frames.
    """
    B = ego2global.shape[0]
    dev = ego2global.device
    e2g = ego2global.to(torch.float64)
    frames = e2g[:, None]
    ts = key_timestamps.to(dev, torch.float64)[:, None] * 1e-6
    avail = torch.ones(B, 1, dtype=torch.bool, device=dev)
    if ego2key is not None and ego2key.shape[1] > 0:
        if timestamps is None:
            raise ValueError("can_bus_from_poses: the past frames have no timestamps (PastFrames.timestamps)")
        frames = torch.cat([frames, e2g[:, None] @ ego2key.to(torch.float64)], 1)
        ts = torch.cat([ts, timestamps.to(dev, torch.float64) * 1e-6], 1)
        ok = valid.to(dev).bool() if valid is not None else torch.ones_like(timestamps, dtype=torch.bool)
        avail = torch.cat([avail, ok.cumprod(1).bool()], 1)  # a chain: an older frame exists only if newer ones do
    F = frames.shape[1]
    R, p = frames[..., :3, :3], frames[..., :3, 3]  # [B, F, 3, 3], [B, F, 3]
    yaw = torch.atan2(R[..., 1, 0], R[..., 0, 0])

    def backward_diff(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_i - x_{i+1}, has predecessor) with zeros where frame i+1 does not exist."""
        nxt = torch.cat([x[:, 1:], x[:, -1:]], 1)
        has = torch.cat([avail[:, 1:], torch.zeros_like(avail[:, :1])], 1) & avail
        return x - nxt, has

    dp, has_prev = backward_diff(p)
    dyaw = _wrap(backward_diff(yaw)[0])
    dt = backward_diff(ts)[0]
    has_prev &= dt > 0
    dt_safe = torch.where(has_prev, dt, torch.ones_like(dt))
    v_glob = torch.where(has_prev[..., None], dp / dt_safe[..., None], torch.zeros_like(dp))
    w = torch.where(has_prev, dyaw / dt_safe, torch.zeros_like(dyaw))
    # the chain's first (oldest) frame takes its successor's backward difference (a forward difference)
    first = avail & ~has_prev
    succ_v = torch.cat([v_glob[:, :1], v_glob[:, :-1]], 1)
    succ_w = torch.cat([w[:, :1], w[:, :-1]], 1)
    succ_ok = torch.cat([torch.zeros_like(has_prev[:, :1]), has_prev[:, :-1]], 1)
    v_glob = torch.where((first & succ_ok)[..., None], succ_v, v_glob)
    w = torch.where(first & succ_ok, succ_w, w)
    dv, _ = backward_diff(v_glob)
    a_glob = torch.where(has_prev[..., None], dv / dt_safe[..., None], torch.zeros_like(dv))
    to_ego = lambda v: (R.transpose(-1, -2) @ v[..., None])[..., 0]  # noqa: E731  global vector -> frame's ego

    out = torch.zeros(B, F, CAN_BUS_DIMS, dtype=torch.float64, device=dev)
    out[..., 0:3] = torch.where(has_prev[..., None], dp, torch.zeros_like(dp))
    out[..., 3:7] = matrix_to_quaternion(R)
    out[..., 7:10] = to_ego(a_glob)
    out[..., 12] = w
    out[..., 13:16] = to_ego(v_glob)
    out[..., 16] = yaw % (2 * math.pi)
    out[..., 17] = torch.where(has_prev, torch.rad2deg(dyaw), torch.zeros_like(dyaw))
    return out.to(torch.float32)


class CanBusMLP(nn.Module):
    """``[..., 18] -> [..., C]``: Linear(18, C/2) -> ReLU -> Linear(C/2, C) -> ReLU -> LayerNorm (BEVFormer's
    ``can_bus_mlp``, 35,968 parameters at C = 256)."""

    def __init__(self, embed_dims: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(CAN_BUS_DIMS, embed_dims // 2), nn.ReLU(inplace=True),
                                 nn.Linear(embed_dims // 2, embed_dims), nn.ReLU(inplace=True),
                                 nn.LayerNorm(embed_dims))
        for m in self.net:
            if isinstance(m, nn.Linear):  # mmcv xavier_init(distribution="uniform", bias=0)
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, can_bus: torch.Tensor) -> torch.Tensor:
        return self.net(can_bus)
