"""One scene's road network, built in its canonical frame with shapely.

Canonical frame: right-hand traffic, the intersection centre at the origin, the main road along x, the cross road
along y. A scene is one 4-way intersection (or a T-junction without the +y arm) with rounded curbs, 1-2 lanes per
direction, an optional parking strip, walkways along every road, a zebra crossing and a stop line on every arm, a car
park reached by a driveway, and a work site beside the road. The ego drives the curb-side lane of the -x arm towards
+x and either goes straight or turns right into the -y arm (never crossing oncoming traffic).

Every consumer reads the geometry from here: the map expansion JSON (the polygons and lines as they are), the ground
texture (painted from the same polygons) and the object placement (lanes, walkways, car park bays, crossings), so the
map, the images and the annotations agree by construction. Left-hand traffic is a mirror image applied later
(world.py), never a second code path here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely.geometry import LineString, Point, Polygon, box
from shapely.ops import unary_union

from .route import Route

__all__ = ["GROUND_CLASSES", "Arm", "Lane", "Carpark", "RoadLayout", "build_layout", "polygon_parts"]

# Ground texture classes (ground.py colours them, lidar.py gives them an intensity).
GROUND_CLASSES = ("grass", "road", "walkway", "carpark", "white_paint", "yellow_paint", "worksite")
GRASS, ROAD, WALKWAY, CARPARK, WHITE, YELLOW, WORKSITE = range(len(GROUND_CLASSES))

CROSSING_GAP = 0.5  # m between the end of the curb fillet and the zebra crossing
STOP_LINE_GAP, STOP_LINE_WIDTH = 1.0, 0.4
BAY_WIDTH, BAY_DEPTH, AISLE = 2.6, 5.0, 6.0


@dataclass(frozen=True)
class Arm:
    """A straight road arm leaving the intersection along ``u``; ``d`` is the distance along ``u`` from the
    intersection centre, ``o`` the lateral offset along the left normal ``n``. Incoming lanes (towards the
    intersection) lie at ``o > 0`` and outgoing ones at ``o < 0`` (right-hand traffic)."""

    name: str
    u: tuple[float, float]
    d0: float
    d1: float
    n_lanes: int
    lane_width: float
    parking_side: int  # +1: a parking strip beyond the incoming lanes, -1: beyond the outgoing ones, 0: none
    parking_width: float
    crossing_width: float

    @property
    def n(self) -> tuple[float, float]:
        return (-self.u[1], self.u[0])

    @property
    def yaw(self) -> float:
        """Heading of outgoing traffic."""
        return math.atan2(self.u[1], self.u[0])

    @property
    def o_min(self) -> float:
        return -self.n_lanes * self.lane_width - (self.parking_width if self.parking_side < 0 else 0.0)

    @property
    def o_max(self) -> float:
        return self.n_lanes * self.lane_width + (self.parking_width if self.parking_side > 0 else 0.0)

    @property
    def d_crossing(self) -> tuple[float, float]:
        return self.d0 + CROSSING_GAP, self.d0 + CROSSING_GAP + self.crossing_width

    @property
    def d_markings(self) -> float:
        """Where lane markings start (after the crossing and the stop line)."""
        return self.d_crossing[1] + STOP_LINE_GAP + STOP_LINE_WIDTH

    def point(self, d, o) -> np.ndarray:
        d, o = np.asarray(d, dtype=np.float64), np.asarray(o, dtype=np.float64)
        return np.stack([d * self.u[0] + o * self.n[0], d * self.u[1] + o * self.n[1]], -1)

    def rect(self, da: float, db: float, oa: float, ob: float) -> Polygon:
        corners = self.point(np.array([da, db, db, da]), np.array([oa, oa, ob, ob]))
        return shapely.normalize(Polygon(corners))

    def lane_span(self, k: int, outgoing: bool) -> tuple[float, float]:
        """Lateral span of lane ``k`` (0 = next to the centre line) in one direction."""
        lo, hi = k * self.lane_width, (k + 1) * self.lane_width
        return (-hi, -lo) if outgoing else (lo, hi)

    def parking_span(self) -> tuple[float, float] | None:
        if self.parking_side == 0:
            return None
        inner = self.n_lanes * self.lane_width
        return (inner, inner + self.parking_width) if self.parking_side > 0 else \
            (-inner - self.parking_width, -inner)


@dataclass(frozen=True)
class Lane:
    key: str  # e.g. "W/in/0"
    arm: str
    polygon: Polygon
    start: np.ndarray  # centre line start/end in the direction of travel
    end: np.ndarray
    yaw: float
    width: float
    outgoing: bool


@dataclass(frozen=True)
class Carpark:
    polygon: Polygon
    driveway: Polygon
    bays: tuple[tuple[float, float, float], ...]  # (x, y, yaw) of free bays, canonical frame
    aisle: tuple[np.ndarray, np.ndarray]  # aisle centre line (start, end)


@dataclass
class RoadLayout:
    params: dict
    arms: dict[str, Arm]
    route: Route
    turn: str  # "right" | "straight"
    intersection: Polygon
    road: Polygon  # union of the arms and the intersection
    drivable: Polygon
    lanes: list[Lane]
    crossings: dict[str, Polygon]
    stop_lines: dict[str, Polygon]
    walkways: list[Polygon]
    carpark: Carpark
    worksite: Polygon
    worksite_arm: tuple[str, int]  # (arm, lateral side)
    road_dividers: dict[str, LineString]  # one per arm
    lane_dividers: list[LineString]
    paint: list[tuple[int, Polygon]] = field(default_factory=list)

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of everything that is not grass, plus a small border."""
        geoms = [self.drivable, self.worksite, *self.walkways]
        x0, y0, x1, y1 = unary_union(geoms).bounds
        return x0 - 2.0, y0 - 2.0, x1 + 2.0, y1 + 2.0

    def context(self, xy: np.ndarray) -> list[str]:
        """The most specific map context of each canonical point ``[N, 2]`` (used by captions)."""
        x, y = xy[:, 0], xy[:, 1]
        out = np.full(len(xy), "beside the road", dtype=object)
        strips = [a.rect(a.d0, a.d1, *a.parking_span()) for a in self.arms.values() if a.parking_side]
        ordered = [
            ("on the road", self.road), ("at the side of the road", unary_union(strips) if strips else Polygon()), ("in the work zone", self.worksite),
            ("on the walkway", unary_union(self.walkways)), ("in the car park", self.carpark.polygon),
            ("at the intersection", self.intersection), ("on the crosswalk", unary_union(list(self.crossings.values()))),
        ]
        for name, geom in ordered:  # later entries are more specific and win
            out[shapely.contains_xy(geom, x, y)] = name
        return out.tolist()


def _rounded_intersection(hc: float, hr: float, hl: float, r: float, north: bool) -> Polygon:
    top = hl + r if north else hl
    poly = box(-hc - r, -hr - r, hc + r, top)
    corners = [(-hc - r, -hr - r), (hc + r, -hr - r)] + ([(-hc - r, hl + r), (hc + r, hl + r)] if north else [])
    cut = unary_union([Point(c).buffer(r, quad_segs=8) for c in corners])
    return poly.difference(cut)


def polygon_parts(geom, min_area: float = 1.0) -> list[Polygon]:
    """The polygons of a Polygon or MultiPolygon (empty parts and slivers under ``min_area`` m^2 dropped)."""
    if geom.is_empty:
        return []
    parts = [geom] if isinstance(geom, Polygon) else [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon)]
    return [g for g in parts if g.area >= min_area]


def build_layout(rng: np.random.Generator, route_length: float, margin: float = 110.0) -> RoadLayout:
    """Sample one scene's roads and the ego route of ``route_length`` metres; roads extend ``margin`` m past it."""
    lw = float(rng.uniform(3.3, 3.7))
    n_main = int(rng.choice([1, 2], p=[0.35, 0.65]))
    n_cross = int(rng.choice([1, 2], p=[0.6, 0.4]))
    park_w = 2.5 if rng.random() < 0.5 else 0.0
    r_curb = float(rng.uniform(5.5, 8.0))
    ww = float(rng.uniform(2.5, 4.0))
    cw = float(rng.uniform(3.0, 4.0))
    north = bool(rng.random() < 0.7)  # False: a T-junction
    turn = "right" if rng.random() < 0.5 else "straight"
    hr, hl, hc = n_main * lw, n_main * lw + park_w, n_cross * lw

    # --- the ego route: the curb-side lane of the -x arm, heading +x
    pre = float(rng.uniform(0.35, 0.65)) * route_length
    y_lane = -hr + lw / 2
    if turn == "right":
        radius = r_curb + lw / 2  # concentric with the curb fillet at (-hc - r, -hr - r)
        x_tan = -hc - r_curb
        route = Route((x_tan - pre, y_lane), 0.0).straight(pre).arc(radius, -math.pi / 2)
        route.straight(max(route_length - route.length, 1.0))
    else:
        route = Route((-pre, y_lane), 0.0).straight(route_length)
    pts = route.polyline(1.0)
    xmin, ymin, xmax = pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max()

    # --- arms
    def arm(name, u, d0, d_far, n_lanes, parking_side):
        return Arm(name, u, d0, max(d_far, d0 + 10.0) + margin, n_lanes, lw, parking_side,
                   park_w if parking_side else 0.0, cw)

    arms = {
        "W": arm("W", (-1.0, 0.0), hc + r_curb, -xmin, n_main, -1 if park_w else 0),
        "E": arm("E", (1.0, 0.0), hc + r_curb, xmax, n_main, 1 if park_w else 0),
        "S": arm("S", (0.0, -1.0), hr + r_curb, -ymin, n_cross, 0),
    }
    if north:
        arms["N"] = arm("N", (0.0, 1.0), hl + r_curb, 0.0, n_cross, 0)
    inter = _rounded_intersection(hc, hr, hl, r_curb, north)
    arm_rects = {k: a.rect(a.d0, a.d1, a.o_min, a.o_max) for k, a in arms.items()}
    road = unary_union([inter, *arm_rects.values()])

    # --- lanes, crossings, stop lines, dividers
    lanes, crossings, stop_lines, road_div, lane_div = [], {}, {}, {}, []
    for k, a in arms.items():
        for i in range(a.n_lanes):
            for outgoing in (False, True):
                oa, ob = a.lane_span(i, outgoing)
                oc = (oa + ob) / 2
                d_from, d_to = (a.d0, a.d1) if outgoing else (a.d1, a.d0)
                lanes.append(Lane(f"{k}/{'out' if outgoing else 'in'}/{i}", k, a.rect(a.d0, a.d1, oa, ob),
                                  a.point(d_from, oc), a.point(d_to, oc),
                                  a.yaw if outgoing else a.yaw + math.pi, lw, outgoing))
        dc0, dc1 = a.d_crossing
        crossings[k] = a.rect(dc0, dc1, a.o_min, a.o_max)
        ds = dc1 + STOP_LINE_GAP
        stop_lines[k] = a.rect(ds, ds + STOP_LINE_WIDTH, 0.0, a.n_lanes * lw)
        dm = a.d_markings
        road_div[k] = LineString(a.point(np.array([dm, a.d1]), np.zeros(2)))
        for i in range(1, a.n_lanes):
            for sgn in (-1.0, 1.0):
                lane_div.append(LineString(a.point(np.array([dm, a.d1]), np.full(2, sgn * i * lw))))

    # --- car park (+ driveway) and work site, beside the main arms beyond the walkway
    sides = [("W", 1), ("W", -1), ("E", 1), ("E", -1)]
    cp_arm, cp_side = sides[int(rng.choice(2 if rng.random() < 0.65 else 4))]
    # the work site is beside the -x arm, which the ego always drives along, somewhere it passes
    ws_arm = "W"
    ws_side = -cp_side if cp_arm == "W" else (1 if rng.random() < 0.5 else -1)
    carpark = _carpark(rng, arms[cp_arm], cp_side, ww)
    a = arms[ws_arm]
    d_ego_start = -float(pts[0, 0])
    ws_d = float(rng.uniform(a.d_markings, max(a.d_markings, d_ego_start - 12.0) + 1e-6))
    ws_edge = (a.o_max if ws_side > 0 else a.o_min) + ws_side * (ww + 0.5)
    worksite = a.rect(ws_d, ws_d + float(rng.uniform(16.0, 24.0)), ws_edge,
                      ws_edge + ws_side * float(rng.uniform(8.0, 12.0)))

    drivable = unary_union([road, carpark.polygon, carpark.driveway])

    # --- walkways: a band of width ww around the road, cut at the arm ends and by the driveway
    band = road.buffer(ww, quad_segs=8).difference(road).difference(carpark.driveway)
    caps = [a.rect(a.d1 - 0.01, a.d1 + ww + 1.0, a.o_min - ww - 1.0, a.o_max + ww + 1.0) for a in arms.values()]
    walkways = polygon_parts(band.difference(unary_union(caps)))

    layout = RoadLayout(
        params=dict(lane_width=lw, lanes_main=n_main, lanes_cross=n_cross, parking_width=park_w, curb_radius=r_curb,
                    walkway_width=ww, crossing_width=cw, junction="cross" if north else "tee", turn=turn),
        arms=arms, route=route, turn=turn, intersection=inter, road=road, drivable=drivable, lanes=lanes,
        crossings=crossings, stop_lines=stop_lines, walkways=walkways, carpark=carpark, worksite=worksite,
        worksite_arm=(ws_arm, ws_side), road_dividers=road_div, lane_dividers=lane_div,
    )
    layout.paint = _paint(layout)
    return layout


def _carpark(rng: np.random.Generator, a: Arm, side: int, ww: float) -> Carpark:
    length = float(rng.uniform(30.0, 50.0))
    n_bays = int(length // BAY_WIDTH)
    length = n_bays * BAY_WIDTH
    d_start = a.d_markings + float(rng.uniform(4.0, 25.0))
    edge = a.o_max if side > 0 else a.o_min
    o_in = edge + side * ww  # the car park starts where the walkway ends
    depth = 2 * BAY_DEPTH + AISLE
    poly = a.rect(d_start, d_start + length, o_in, o_in + side * depth)
    k_drive = int(rng.integers(1, n_bays - 3))
    dd = d_start + k_drive * BAY_WIDTH
    driveway = a.rect(dd, dd + 2 * BAY_WIDTH, edge, o_in + side * 0.01)
    bays = []
    for row, o_c in ((0, o_in + side * BAY_DEPTH / 2), (1, o_in + side * (BAY_DEPTH * 1.5 + AISLE))):
        for i in range(n_bays):
            if row == 0 and k_drive <= i < k_drive + 2:
                continue  # the driveway enters the aisle here
            x, y = a.point(d_start + (i + 0.5) * BAY_WIDTH, o_c)
            # nose towards the aisle: row 0 faces away from the road, row 1 towards it
            yaw = math.atan2(a.n[1], a.n[0]) + (0.0 if (row == 0) == (side > 0) else math.pi)
            bays.append((float(x), float(y), yaw))
    o_aisle = o_in + side * (BAY_DEPTH + AISLE / 2)
    aisle = (a.point(d_start + 2.0, o_aisle), a.point(d_start + length - 2.0, o_aisle))
    return Carpark(poly, driveway, tuple(bays), aisle)


def _strip(a: Arm, d0: float, d1: float, o: float, width: float) -> Polygon:
    return a.rect(d0, d1, o - width / 2, o + width / 2)


def _paint(layout: RoadLayout) -> list[tuple[int, Polygon]]:
    """Polygons painted on the ground on top of the surface classes, as (ground class, polygon)."""
    paint: list[tuple[int, Polygon]] = []
    for a in layout.arms.values():
        dm = a.d_markings
        paint += [(YELLOW, _strip(a, dm, a.d1, o, 0.12)) for o in (-0.16, 0.16)]
        for i in range(1, a.n_lanes):
            for sgn in (-1.0, 1.0):
                for d in np.arange(dm, a.d1 - 3.0, 9.0):
                    paint.append((WHITE, _strip(a, d, d + 3.0, sgn * i * a.lane_width, 0.15)))
        span = a.parking_span()
        if span is not None:
            o = span[0] if a.parking_side > 0 else span[1]
            paint.append((WHITE, _strip(a, dm, a.d1, o, 0.15)))
        paint.append((WHITE, layout.stop_lines[a.name]))
        dc0, dc1 = a.d_crossing
        for o in np.arange(a.o_min + 0.25, a.o_max - 0.4, 1.0):
            paint.append((WHITE, a.rect(dc0, dc1, o, o + 0.5)))
    cp = layout.carpark
    # bay separators: short white lines between neighbouring bays (rendered from the bay centres)
    for x, y, yaw in cp.bays:
        c, s = math.cos(yaw), math.sin(yaw)
        for side in (-1.0, 1.0):
            cx, cy = x - s * side * BAY_WIDTH / 2, y + c * side * BAY_WIDTH / 2
            line = LineString([(cx - c * BAY_DEPTH / 2, cy - s * BAY_DEPTH / 2),
                               (cx + c * BAY_DEPTH / 2, cy + s * BAY_DEPTH / 2)])
            paint.append((WHITE, line.buffer(0.06, cap_style="flat")))
    return paint

