"""One scene's world: its road layout and objects (canonical frame), placed into the global frame, and the ego.

Canonical -> global is a 2D similarity ``p_g = A p_c + b`` with ``A = R(theta) @ M``, where ``M`` mirrors y for
left-hand-traffic locations (Singapore) so traffic keeps to the left there. Everything global (map JSON, ego poses,
annotations) goes through :meth:`SceneWorld.to_global`; the ground texture is looked up through the inverse.
Objects move at constant velocity with a constant heading; the ego follows its route at a constant speed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bevbridge.geometry import make_transform, rotation_z, wrap_angle

from .catalog import LEFT_HAND_TRAFFIC
from .ground import GroundRaster
from .objects import Actors
from .placement import place_objects
from .roads import RoadLayout, build_layout

__all__ = ["SceneTiming", "Placement", "SceneWorld", "build_world", "layout_for", "KEYFRAME_INTERVAL"]

KEYFRAME_INTERVAL = 0.5  # s: nuScenes keyframes are at 2 Hz


@dataclass(frozen=True)
class SceneTiming:
    """Keyframes at ``k * 0.5 s`` (k < n_samples); sweeps start ``lead`` seconds before the first keyframe."""

    n_samples: int
    lead: float = KEYFRAME_INTERVAL

    @property
    def keyframe_times(self) -> np.ndarray:
        return np.arange(self.n_samples) * KEYFRAME_INTERVAL

    @property
    def start(self) -> float:
        return -self.lead

    @property
    def end(self) -> float:
        return (self.n_samples - 1) * KEYFRAME_INTERVAL

    def check_times(self, step: float = 0.25) -> np.ndarray:
        return np.arange(self.start, self.end + 1e-9, step)


class Placement:
    """Where a scene sits in its location's global frame: ``p_g = A p_c + b`` (A orthogonal, mirrored for LHT)."""

    def __init__(self, location: str, theta: float, origin: np.ndarray):
        self.location = location
        self.mirror = LEFT_HAND_TRAFFIC[location]
        M = np.diag([1.0, -1.0 if self.mirror else 1.0])
        self.A = rotation_z(np.array(theta, dtype=np.float64))[:2, :2] @ M
        self.b = np.asarray(origin, dtype=np.float64)

    def to_global(self, xy: np.ndarray) -> np.ndarray:
        return np.asarray(xy) @ self.A.T + self.b

    def to_canonical(self, xy: np.ndarray) -> np.ndarray:
        return (np.asarray(xy) - self.b) @ self.A  # A is orthogonal: A^-1 = A^T

    def yaw_to_global(self, yaw: np.ndarray) -> np.ndarray:
        h = np.stack([np.cos(yaw), np.sin(yaw)], -1) @ self.A.T
        return np.arctan2(h[..., 1], h[..., 0])


class SceneWorld(Placement):
    """The world of one scene; times are seconds relative to the first keyframe."""

    def __init__(self, layout: RoadLayout, actors: Actors, timing: SceneTiming, ego_speed: float,
                 placement: Placement, ground: GroundRaster, sun: np.ndarray):
        self.__dict__.update(placement.__dict__)
        self.layout, self.actors, self.timing = layout, actors, timing
        self.ego_speed, self.ground = ego_speed, ground
        self.sun = sun  # unit vector towards the sun, global frame
        arr = actors.arrays()
        self.size = arr["size"]  # [N, 3] l, w, h
        self.rgb = arr["rgb"]
        self.rider = arr["rider"]
        self._p0 = self.to_global(arr["p0"]) if len(actors) else np.zeros((0, 2))
        self._vel = arr["vel"] @ self.A.T
        self._yaw = self.yaw_to_global(arr["yaw"])

    # ------------------------------------------------------------------ ego
    def _route_s(self, t: np.ndarray) -> np.ndarray:
        return self.ego_speed * (np.asarray(t, dtype=np.float64) - self.timing.start)

    def ego_xy_yaw(self, t) -> tuple[np.ndarray, np.ndarray]:
        """Global ego position ``[..., 2]`` and heading ``[...]`` at times ``t``."""
        xy, yaw = self.layout.route.pose(self._route_s(t))
        return self.to_global(xy), wrap_angle(self.yaw_to_global(yaw))

    def ego_canonical(self, t) -> tuple[np.ndarray, np.ndarray]:
        return self.layout.route.pose(self._route_s(t))

    def ego2global(self, t: float) -> np.ndarray:
        """``[4, 4]`` ego -> global at time ``t`` (the ego frame sits on the ground: z = 0, no roll/pitch)."""
        xy, yaw = self.ego_xy_yaw(np.array(t))
        return make_transform(rotation_z(np.asarray(yaw, dtype=np.float64)), np.array([xy[0], xy[1], 0.0]))

    def ego_motion(self, t: float) -> tuple[np.ndarray, float]:
        """(velocity of the ego origin in the EGO frame ``[2]``, yaw rate rad/s) at time ``t``."""
        k = float(self.layout.route.curvature(self._route_s(t)))
        sign = -1.0 if self.mirror else 1.0  # a mirror image turns the other way
        return np.array([self.ego_speed, 0.0]), sign * k * self.ego_speed

    # ------------------------------------------------------------------ objects
    def boxes(self, t: float) -> np.ndarray:
        """``[N, 9]`` global boxes ``(x, y, z, l, w, h, yaw, vx, vy)`` of every object at time ``t``."""
        xy = self._p0 + self._vel * t
        z = self.size[:, 2:3] / 2
        return np.concatenate([xy, z, self.size, self._yaw[:, None], self._vel], -1)


def _rngs(key: tuple[int, ...]) -> tuple[np.random.Generator, ...]:
    """Independent streams for the layout, the objects and the rest, from a scene key such as (seed, index)."""
    return tuple(np.random.default_rng([*key, stream]) for stream in range(3))


def layout_for(key: tuple[int, ...], timing: SceneTiming) -> tuple[RoadLayout, float]:
    """The layout and ego speed of the scene with this key (cheap: lets the writer plan global placement first)."""
    r_layout, _, r_misc = _rngs(key)
    speed = float(r_misc.uniform(5.0, 10.0))
    return build_layout(r_layout, route_length=speed * (timing.end - timing.start) + 1.0), speed


def build_world(key: tuple[int, ...], timing: SceneTiming, placement: Placement) -> SceneWorld:
    """Sample one scene from its key: layout, ego speed, objects; placed into the global frame by ``placement``."""
    layout, speed = layout_for(key, timing)
    _, r_objects, r_misc = _rngs(key)
    r_misc.uniform()  # the speed draw, consumed by layout_for
    timing_check = timing.check_times()
    s = speed * (timing_check - timing.start)
    ego_xy, ego_yaw = layout.route.pose(s)
    actors = place_objects(r_objects, layout, timing_check, ego_xy, ego_yaw)
    ground = GroundRaster(layout, seed=int(r_misc.integers(2**31)))
    az, el = r_misc.uniform(-math.pi, math.pi), r_misc.uniform(math.radians(35), math.radians(65))
    sun = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    return SceneWorld(layout, actors, timing, speed, placement, ground, sun)

