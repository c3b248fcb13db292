"""Objects of one scene (canonical frame, constant velocity) and the placer that keeps them from ever overlapping.

Every candidate is checked against the ego and every accepted object at every 0.25 s over the scene (circles first,
exact rotated footprints for the close pairs), so no two boxes ever intersect. Where objects go is placement.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import shapely

from bevbridge.geometry import box_bev_corners

from .catalog import RIDER_HEIGHT, style_of

__all__ = ["Actors", "Placer", "add_vehicle", "add_truck_trailer", "EGO_SIZE", "EGO_CENTRE_OFFSET", "MOVING"]

EGO_SIZE = (4.2, 1.9, 1.6)  # l, w, h of the ego vehicle
EGO_CENTRE_OFFSET = 1.3  # box centre ahead of the ego frame origin (the rear axle)
MOVING = ("vehicle.car",) * 8 + ("vehicle.truck",) * 2 + ("vehicle.bus.rigid", "vehicle.motorcycle", "vehicle.bicycle")


@dataclass
class Actors:
    """N objects; canonical position ``p0 [N, 2]`` at t = 0, velocity ``vel [N, 2]`` (m/s), heading ``yaw [N]``,
    size ``[N, 3] = (l, w, h)``."""

    category: list[str] = field(default_factory=list)
    attribute: list[str | None] = field(default_factory=list)
    colour: list[str] = field(default_factory=list)
    rgb: list[tuple[int, int, int]] = field(default_factory=list)
    rider: list[bool] = field(default_factory=list)
    p0: list[np.ndarray] = field(default_factory=list)
    vel: list[np.ndarray] = field(default_factory=list)
    yaw: list[float] = field(default_factory=list)
    size: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.category)

    def arrays(self) -> dict[str, np.ndarray]:
        n = len(self)
        return dict(p0=np.array(self.p0).reshape(n, 2), vel=np.array(self.vel).reshape(n, 2),
                    yaw=np.array(self.yaw, dtype=np.float64), size=np.array(self.size).reshape(n, 3),
                    rgb=np.array(self.rgb, dtype=np.float32).reshape(n, 3), rider=np.array(self.rider, dtype=bool))


class Placer:
    """Accepts objects whose boxes never overlap any accepted object (or the ego) at the sample times."""

    def __init__(self, rng: np.random.Generator, times: np.ndarray, ego_xy: np.ndarray, ego_yaw: np.ndarray):
        self.rng, self.times = rng, times
        self.actors = Actors()
        c = np.stack([np.cos(ego_yaw), np.sin(ego_yaw)], -1)
        ego_centre = ego_xy + EGO_CENTRE_OFFSET * c
        l, w, h = EGO_SIZE
        ego_boxes = np.concatenate([ego_centre, np.zeros((len(times), 1)), np.tile([l + 1.0, w + 0.6, h], (len(times), 1)),
                                    ego_yaw[:, None]], -1)
        self._boxes = [ego_boxes]  # each [T, 7]: (x, y, z, l, w, h, yaw) over the sample times

    def add(self, category: str, xy, yaw: float, vel=(0.0, 0.0), attribute: str | None = None, rider: bool = False,
            size: np.ndarray | None = None, margin: float = 0.25) -> bool:
        style = style_of(category)
        rng = self.rng
        if size is None:
            size = np.array(style.size) * rng.uniform(0.92, 1.08, 3)
            if rider:
                size[2] = RIDER_HEIGHT * rng.uniform(0.95, 1.05)
        xy, vel = np.asarray(xy, dtype=np.float64), np.asarray(vel, dtype=np.float64)
        pos = xy + vel * self.times[:, None]
        cand = np.concatenate([pos, np.zeros((len(pos), 1)), np.tile(size + 2 * margin, (len(pos), 1)),
                               np.full((len(pos), 1), yaw)], -1)
        if self._overlaps(cand):
            return False
        name, rgb = style.palette[int(rng.integers(len(style.palette)))]
        a = self.actors
        a.category.append(category)
        a.attribute.append(attribute)
        a.colour.append(name)
        a.rgb.append(tuple(int(v) for v in np.clip(np.array(rgb) + rng.integers(-14, 15, 3), 0, 255)))
        a.rider.append(rider)
        a.p0.append(xy)
        a.vel.append(vel)
        a.yaw.append(float(yaw))
        a.size.append(size)
        self._boxes.append(np.concatenate([pos, np.zeros((len(pos), 1)), np.tile(size, (len(pos), 1)),
                                           np.full((len(pos), 1), yaw)], -1))
        return True

    def _overlaps(self, cand: np.ndarray) -> bool:
        placed = np.stack(self._boxes)  # [M, T, 7]
        r_c = np.hypot(cand[0, 3], cand[0, 4]) / 2
        r_p = np.hypot(placed[..., 3], placed[..., 4]) / 2
        close = np.linalg.norm(placed[..., :2] - cand[None, :, :2], axis=-1) < r_c + r_p
        if not close.any():
            return False
        m, t = np.nonzero(close)
        a = shapely.polygons(box_bev_corners(placed[m, t]))
        b = shapely.polygons(box_bev_corners(cand[t]))
        return bool(shapely.intersects(a, b).any())


def _vehicle_attribute(cat: str, motion: str) -> tuple[str | None, bool]:
    """(attribute, rider) for a vehicle-like object in a given motion state ('moving' | 'stopped' | 'parked')."""
    if cat in ("vehicle.bicycle", "vehicle.motorcycle"):
        return ("cycle.without_rider", False) if motion == "parked" else ("cycle.with_rider", True)
    return f"vehicle.{motion}", False


def add_vehicle(P: Placer, rng, cat: str, xy, yaw: float, vel, motion: str, size_w: float | None = None,
                 shift: float = 0.0) -> bool:
    if cat == "vehicle.trailer":
        c = np.array([math.cos(yaw), math.sin(yaw)])
        return add_truck_trailer(P, rng, np.asarray(xy) + c * 4.0, yaw, c, float(np.hypot(*vel)), motion)
    attr, rider = _vehicle_attribute(cat, motion)
    size = None
    if size_w is not None:
        size = np.array(style_of(cat).size) * rng.uniform(0.92, 1.08, 3)
        size[1] = min(size[1], size_w)
        if rider:
            size[2] = RIDER_HEIGHT
    c = np.array([math.cos(yaw), math.sin(yaw)])
    return P.add(cat, np.asarray(xy) + shift * c, yaw, vel, attr, rider, size=size)


def add_truck_trailer(P: Placer, rng, truck_xy, yaw: float, direction, speed: float, motion: str) -> bool:
    """A truck (tractor) with a trailer behind it, 0.6 m apart, moving together."""
    direction = np.asarray(direction, dtype=np.float64) / np.linalg.norm(direction)
    vel = direction * speed
    truck = np.array([6.0, 2.5, 3.0]) * rng.uniform(0.95, 1.05, 3)
    trailer = np.array(style_of("vehicle.trailer").size) * rng.uniform(0.92, 1.08, 3)
    trailer[1] = truck[1]
    trailer_xy = np.asarray(truck_xy) - direction * (truck[0] / 2 + 0.6 + trailer[0] / 2)
    n_before = len(P.actors)
    if not P.add("vehicle.truck", truck_xy, yaw, vel, f"vehicle.{motion}", size=truck, margin=0.1):
        return False
    if not P.add("vehicle.trailer", trailer_xy, yaw, vel, f"vehicle.{motion}", size=trailer, margin=0.1):
        _pop(P, n_before)
        return False
    return True


def _pop(P: Placer, n: int) -> None:
    a = P.actors
    for f in ("category", "attribute", "colour", "rgb", "rider", "p0", "vel", "yaw", "size"):
        del getattr(a, f)[n:]
    del P._boxes[n + 1:]


