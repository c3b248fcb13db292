"""The ego's route: straight segments joined by circular arcs, evaluated exactly at any arc length."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Route"]


@dataclass(frozen=True)
class _Segment:
    s0: float  # arc length at the segment start
    length: float
    start: tuple[float, float]
    yaw0: float  # heading at the start
    curvature: float  # 0 for a straight segment, +1/R turning left, -1/R turning right


class Route:
    """A planar path built from ``straight(length)`` and ``arc(radius, angle)`` pieces, starting at a pose.

    ``pose(s)`` returns positions ``[..., 2]`` and headings ``[...]`` at arc lengths ``s`` (clamped to the path).
    """

    def __init__(self, start: tuple[float, float], yaw: float):
        self._segments: list[_Segment] = []
        self._end = (float(start[0]), float(start[1]))
        self._yaw = float(yaw)

    @property
    def length(self) -> float:
        return sum(seg.length for seg in self._segments)

    def straight(self, length: float) -> Route:
        return self._add(length, 0.0)

    def arc(self, radius: float, angle: float) -> Route:
        """Turn by ``angle`` radians (positive = left) on a circle of ``radius`` metres."""
        return self._add(radius * abs(angle), math.copysign(1.0 / radius, angle))

    def _add(self, length: float, curvature: float) -> Route:
        if length <= 0:
            return self
        seg = _Segment(self.length, float(length), self._end, self._yaw, curvature)
        self._segments.append(seg)
        xy, yaw = self._eval_segment(seg, np.array([length]))
        self._end, self._yaw = (float(xy[0, 0]), float(xy[0, 1])), float(yaw[0])
        return self

    @staticmethod
    def _eval_segment(seg: _Segment, ds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x0, y0 = seg.start
        if seg.curvature == 0.0:
            c, s = math.cos(seg.yaw0), math.sin(seg.yaw0)
            return np.stack([x0 + ds * c, y0 + ds * s], -1), np.full_like(ds, seg.yaw0)
        k = seg.curvature
        yaw = seg.yaw0 + k * ds
        # Exact integration of the unit tangent along a circle.
        x = x0 + (np.sin(yaw) - math.sin(seg.yaw0)) / k
        y = y0 - (np.cos(yaw) - math.cos(seg.yaw0)) / k
        return np.stack([x, y], -1), yaw

    def pose(self, s: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        s = np.clip(np.asarray(s, dtype=np.float64), 0.0, self.length)
        xy = np.zeros((*s.shape, 2))
        yaw = np.zeros(s.shape)
        for i, seg in enumerate(self._segments):
            last = i == len(self._segments) - 1
            m = (s >= seg.s0) & ((s < seg.s0 + seg.length) | last)
            if m.any():
                xy[m], yaw[m] = self._eval_segment(seg, s[m] - seg.s0)
        return xy, yaw

    def curvature(self, s: np.ndarray | float) -> np.ndarray:
        s = np.clip(np.asarray(s, dtype=np.float64), 0.0, self.length)
        k = np.zeros(s.shape)
        for seg in self._segments:
            k[(s >= seg.s0) & (s < seg.s0 + seg.length)] = seg.curvature
        return k

    def polyline(self, step: float = 0.5) -> np.ndarray:
        """Points every ``step`` metres (and the end): ``[N, 2]``."""
        s = np.append(np.arange(0.0, self.length, step), self.length)
        return self.pose(s)[0]
