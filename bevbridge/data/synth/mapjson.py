"""The map expansion (version 1.3) JSON per location, and the devkit's semantic-prior PNG, from the scene layouts.

Geometry is copied from each scene's road layout (roads.py) into the global frame (world.py's placement), so the
devkit's NuScenesMap returns exactly the roads the ego drives and the cameras see. Written: node/line/polygon,
drivable_area, road_segment (arms + intersection), road_block (one per arm and direction), lane (with straight
arcline paths), ped_crossing, walkway, stop_line (PED_CROSSING type, linked to its crossing), carpark_area,
road_divider, lane_divider. Not modelled: traffic lights, lane connectors through the intersection (their tables
are empty and ``connectivity`` lists no neighbours).

Every line is a straight 2-node segment: the devkit's line masks break on MultiLineStrings under shapely 2, and a
straight segment clipped by a rectangular patch is always a single LineString.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from shapely.geometry import LineString, Polygon

from .roads import RoadLayout, polygon_parts
from .world import Placement

__all__ = ["MapBuilder", "SEMANTIC_PRIOR_RES"]

SEMANTIC_PRIOR_RES = 0.1  # m per pixel: the devkit's MapMask assumes this resolution
_LAYERS = ("polygon", "line", "node", "drivable_area", "road_segment", "road_block", "lane", "ped_crossing", "walkway",
           "stop_line", "carpark_area", "road_divider", "lane_divider", "traffic_light", "lane_connector")


class MapBuilder:
    """Accumulates the scenes of one location; :meth:`to_json` gives the expansion JSON (a dict)."""

    def __init__(self, location: str, token):
        self.location = location
        self._token = token  # callable(*parts) -> 32-hex token
        self.layers: dict[str, list[dict]] = {name: [] for name in _LAYERS}
        self.arcline_path_3: dict[str, list[dict]] = {}
        self.connectivity: dict[str, dict] = {}
        self.prior_polygons: list[Polygon] = []  # global drivable area + walkways, for the semantic prior
        self._max_xy = np.zeros(2)

    def _tok(self, *parts) -> str:
        return self._token(self.location, *parts)

    def _nodes(self, key: str, coords: np.ndarray) -> list[str]:
        tokens = []
        for j, (x, y) in enumerate(coords):
            t = self._tok("node", key, j)
            self.layers["node"].append(dict(token=t, x=round(float(x), 4), y=round(float(y), 4)))
            tokens.append(t)
        self._max_xy = np.maximum(self._max_xy, coords.max(0))
        return tokens

    def polygon(self, key: str, poly: Polygon) -> str:
        t = self._tok("polygon", key)
        ext = self._nodes(key + "/ext", np.asarray(poly.exterior.coords)[:-1])
        holes = [dict(node_tokens=self._nodes(f"{key}/hole{h}", np.asarray(r.coords)[:-1]))
                 for h, r in enumerate(poly.interiors)]
        self.layers["polygon"].append(dict(token=t, exterior_node_tokens=ext, holes=holes))
        return t

    def line(self, key: str, coords: np.ndarray) -> str:
        t = self._tok("line", key)
        self.layers["line"].append(dict(token=t, node_tokens=self._nodes(key, np.asarray(coords))))
        return t

    def add_scene(self, name: str, L: RoadLayout, world: Placement) -> None:
        g = lambda geom: _to_global(geom, world)  # noqa: E731
        da_token = self._tok("drivable_area", name)
        drivable = [g(p) for p in polygon_parts(L.drivable)]
        self.layers["drivable_area"].append(dict(token=da_token, polygon_tokens=[
            self.polygon(f"{name}/drivable/{i}", p) for i, p in enumerate(drivable)]))
        self.prior_polygons += drivable + [g(w) for w in L.walkways]

        seg_token = {}
        inter_tok = self._tok("road_segment", name, "intersection")
        self.layers["road_segment"].append(dict(token=inter_tok, polygon_token=self.polygon(
            f"{name}/intersection", g(L.intersection)), is_intersection=True, drivable_area_token=da_token))
        for k, a in L.arms.items():
            seg_token[k] = self._tok("road_segment", name, k)
            self.layers["road_segment"].append(dict(token=seg_token[k], polygon_token=self.polygon(
                f"{name}/segment/{k}", g(a.rect(a.d0, a.d1, a.o_min, a.o_max))), is_intersection=False,
                drivable_area_token=da_token))
        block_token = {}
        for k, a in L.arms.items():
            for direction, (oa, ob) in (("in", (0.0, a.o_max)), ("out", (a.o_min, 0.0))):
                key = f"{name}/block/{k}/{direction}"
                d_from, d_to = (a.d1, a.d0) if direction == "in" else (a.d0, a.d1)
                block_token[(k, direction)] = bt = self._tok("road_block", key)
                self.layers["road_block"].append(dict(
                    token=bt, polygon_token=self.polygon(key, g(a.rect(a.d0, a.d1, oa, ob))),
                    from_edge_line_token=self.line(key + "/from", _gxy(a.point([d_from] * 2, [oa, ob]), world)),
                    to_edge_line_token=self.line(key + "/to", _gxy(a.point([d_to] * 2, [oa, ob]), world)),
                    road_segment_token=seg_token[k]))
        for lane in L.lanes:
            key = f"{name}/lane/{lane.key}"
            lt = self._tok("lane", key)
            a = L.arms[lane.arm]
            half = lane.width / 2
            n = np.array(a.n) * half
            start, end = _gxy(lane.start[None], world)[0], _gxy(lane.end[None], world)[0]
            yaw = float(world.yaw_to_global(np.array(lane.yaw)))
            self.layers["lane"].append(dict(
                token=lt, polygon_token=self.polygon(key, g(lane.polygon)), lane_type="CAR",
                from_edge_line_token=self.line(key + "/from", _gxy(np.stack([lane.start - n, lane.start + n]), world)),
                to_edge_line_token=self.line(key + "/to", _gxy(np.stack([lane.end - n, lane.end + n]), world)),
                left_lane_divider_segments=[], right_lane_divider_segments=[]))
            length = float(np.hypot(*(end - start)))
            pose = lambda p: [round(float(p[0]), 4), round(float(p[1]), 4), yaw]  # noqa: E731
            self.arcline_path_3[lt] = [dict(start_pose=pose(start), end_pose=pose(end), shape="LSR", radius=999.0,
                                            segment_length=[0.0, length, 0.0])]
            self.connectivity[lt] = dict(incoming=[], outgoing=[])
        for k, poly in L.crossings.items():
            ct = self._tok("ped_crossing", name, k)
            self.layers["ped_crossing"].append(dict(token=ct, polygon_token=self.polygon(f"{name}/crossing/{k}",
                                                                                          g(poly)),
                                                    road_segment_token=seg_token[k]))
            self.layers["stop_line"].append(dict(
                token=self._tok("stop_line", name, k), polygon_token=self.polygon(f"{name}/stop/{k}",
                                                                                   g(L.stop_lines[k])),
                stop_line_type="PED_CROSSING", ped_crossing_tokens=[ct], traffic_light_tokens=[],
                road_block_token=block_token[(k, "in")]))
        for i, w in enumerate(L.walkways):
            self.layers["walkway"].append(dict(token=self._tok("walkway", name, i),
                                               polygon_token=self.polygon(f"{name}/walkway/{i}", g(w))))
        cp = L.carpark
        self.layers["carpark_area"].append(dict(
            token=self._tok("carpark_area", name), polygon_token=self.polygon(f"{name}/carpark", g(cp.polygon)),
            orientation=float(world.yaw_to_global(np.array(cp.bays[0][2]))) if cp.bays else 0.0,
            road_block_token=""))
        for k, line in L.road_dividers.items():
            self.layers["road_divider"].append(dict(
                token=self._tok("road_divider", name, k), line_token=self.line(
                    f"{name}/road_divider/{k}", _gxy(np.asarray(line.coords), world)),
                road_segment_token=seg_token[k]))
        for i, line in enumerate(L.lane_dividers):
            lt = self.line(f"{name}/lane_divider/{i}", _gxy(np.asarray(line.coords), world))
            nodes = self.layers["line"][-1]["node_tokens"]
            self.layers["lane_divider"].append(dict(
                token=self._tok("lane_divider", name, i), line_token=lt,
                lane_divider_segments=[dict(node_token=nt, segment_type="SINGLE_DASHED_WHITE") for nt in nodes]))

    def canvas_edge(self, margin: float = 50.0) -> list[float]:
        return [float(math.ceil(self._max_xy[0] + margin)), float(math.ceil(self._max_xy[1] + margin))]

    def to_json(self) -> dict:
        out: dict = {"version": "1.3", "canvas_edge": self.canvas_edge()}
        out.update(self.layers)
        out["arcline_path_3"] = self.arcline_path_3
        out["connectivity"] = self.connectivity
        return out

    def semantic_prior_png(self) -> bytes:
        """The devkit's legacy semantic prior (drivable area and walkways = 255) at 0.1 m, origin at the bottom left."""
        w, h = (int(round(v / SEMANTIC_PRIOR_RES)) for v in self.canvas_edge())
        mask = np.zeros((h, w), dtype=np.uint8)
        polys = []
        for p in self.prior_polygons:
            xy = np.asarray(p.exterior.coords) / SEMANTIC_PRIOR_RES
            polys.append(np.round(np.stack([xy[:, 0], h - xy[:, 1]], -1) * 4).astype(np.int32))
        cv2.fillPoly(mask, polys, 255, shift=2)
        ok, buf = cv2.imencode(".png", mask, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        return buf.tobytes()


def _gxy(xy: np.ndarray, world: Placement) -> np.ndarray:
    return world.to_global(np.asarray(xy, dtype=np.float64))


def _to_global(geom, world: Placement):
    if isinstance(geom, Polygon):
        return Polygon(_gxy(np.asarray(geom.exterior.coords), world),
                       [_gxy(np.asarray(r.coords), world) for r in geom.interiors])
    return LineString(_gxy(np.asarray(geom.coords), world))
