"""What exists in the synthetic world: the devkit's category/attribute/visibility tables and per-class object styles.

Sizes are nuScenes class means (metres, ours ``l`` along the heading); colours are per-class palettes so a small CNN
can tell classes apart by colour as well as by shape; RCS (dBsm) follows typical automotive-radar values per class.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "LOCATIONS", "LEFT_HAND_TRAFFIC", "CATEGORIES", "ATTRIBUTES", "VISIBILITY", "ObjectStyle", "STYLES",
    "style_of", "visibility_token", "PATTERNS", "RIDER_RGB", "RIDER_HEIGHT",
]

# The devkit's NuScenesMap asserts the map name is one of these four.
LOCATIONS: tuple[str, ...] = ("singapore-onenorth", "boston-seaport", "singapore-queenstown", "singapore-hollandvillage")
LEFT_HAND_TRAFFIC = {loc: loc.startswith("singapore") for loc in LOCATIONS}

# nuScenes v1.0 annotation categories (name, description), in the devkit's order.
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("human.pedestrian.adult", "Adult subcategory."),
    ("human.pedestrian.child", "Child subcategory."),
    ("human.pedestrian.wheelchair", "Wheelchairs. If a person is in the wheelchair, include in the annotation."),
    ("human.pedestrian.stroller", "Strollers. If a person is in the stroller, include in the annotation."),
    ("human.pedestrian.personal_mobility", "A small electric or self-propelled vehicle, e.g. skateboard, segway."),
    ("human.pedestrian.police_officer", "Police officer."),
    ("human.pedestrian.construction_worker", "Construction worker"),
    ("animal", "All animals, e.g. cats, rats, dogs, deer, birds."),
    ("vehicle.car", "Vehicle designed primarily for personal use, e.g. sedans, hatch-backs, wagons, vans, SUVs."),
    ("vehicle.motorcycle", "Gasoline or electric powered 2-wheeled vehicle designed to move rapidly."),
    ("vehicle.bicycle", "Human or electric powered 2-wheeled vehicle designed to travel at lower speeds."),
    ("vehicle.bus.bendy", "Bendy bus subcategory. Annotate each section of the bendy bus individually."),
    ("vehicle.bus.rigid", "Rigid bus subcategory."),
    ("vehicle.truck", "Vehicles primarily designed to haul cargo including pick-ups, lorrys, trucks and semi-tractors."),
    ("vehicle.construction", "Vehicles primarily designed for construction. Typically very slow moving or stationary."),
    ("vehicle.emergency.ambulance", "All types of ambulances."),
    ("vehicle.emergency.police", "All types of police vehicles including police bicycles and motorcycles."),
    ("vehicle.trailer", "Any vehicle trailer, both for trucks, cars and bikes."),
    ("movable_object.barrier", "Temporary road barrier placed in the scene in order to redirect traffic."),
    ("movable_object.trafficcone", "All types of traffic cone."),
    ("movable_object.pushable_pullable", "Objects that a pedestrian may push or pull, e.g. dolleys, wheel barrows."),
    ("movable_object.debris", "Movable object that is left on the driveable surface."),
    ("static_object.bicycle_rack", "Area or device intended to park or secure the bicycles in a row."),
)

ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("vehicle.moving", "Vehicle is moving."),
    ("vehicle.stopped", "Vehicle, with a driver/rider in/on it, is currently stationary but has an intent to move."),
    ("vehicle.parked", "Vehicle is stationary (usually for longer duration) with no immediate intent to move."),
    ("cycle.with_rider", "There is a rider on the bicycle or motorcycle."),
    ("cycle.without_rider", "There is NO rider on the bicycle or motorcycle."),
    ("pedestrian.sitting_lying_down", "The human is sitting or lying down."),
    ("pedestrian.standing", "The human is standing."),
    ("pedestrian.moving", "The human is moving."),
)

# (token, level, description): the devkit's visibility table. Visibility is the fraction of the annotation visible
# in all 6 camera images together, binned.
VISIBILITY: tuple[tuple[str, str, str], ...] = (
    ("1", "v0-40", "visibility of whole object is between 0 and 40%"),
    ("2", "v40-60", "visibility of whole object is between 40 and 60%"),
    ("3", "v60-80", "visibility of whole object is between 60 and 80%"),
    ("4", "v80-100", "visibility of whole object is between 80 and 100%"),
)


def visibility_token(fraction: float) -> str:
    """Bin a visible fraction in [0, 1] into the devkit's visibility token."""
    return "1" if fraction < 0.4 else "2" if fraction < 0.6 else "3" if fraction < 0.8 else "4"


@dataclass(frozen=True)
class ObjectStyle:
    """How one kind of object looks, moves and reflects.

    ``size`` is the mean (l, w, h) in metres (l along the heading); ``palette`` holds (colour name, RGB) pairs an
    instance picks from (the name goes into its caption); ``pattern`` selects the surface detail the camera renderer
    paints (see camera.py); ``rcs`` is the radar cross-section mean and spread in dBsm; ``max_radar`` caps the radar
    returns per object and sweep; ``intensity`` is the LiDAR reflectance (0-255).
    """

    category: str
    detection_name: str
    size: tuple[float, float, float]
    palette: tuple[tuple[str, tuple[int, int, int]], ...]
    pattern: str
    rcs: tuple[float, float]
    max_radar: int
    intensity: float
    noun: str


STYLES: dict[str, ObjectStyle] = {s.category: s for s in (
    ObjectStyle("vehicle.car", "car", (4.6, 1.95, 1.7),
                (("blue", (40, 80, 200)), ("dark blue", (25, 40, 120)), ("light blue", (110, 150, 230))),
                "car", (10.0, 3.0), 4, 40.0, "car"),
    ObjectStyle("vehicle.truck", "truck", (6.8, 2.5, 2.9),
                (("orange", (225, 125, 30)), ("brown", (140, 90, 45))), "truck", (18.0, 3.0), 6, 45.0, "truck"),
    ObjectStyle("vehicle.bus.rigid", "bus", (11.2, 2.95, 3.4),
                (("yellow", (235, 205, 40)), ("golden", (205, 165, 30))), "bus", (22.0, 3.0), 7, 50.0, "bus"),
    ObjectStyle("vehicle.trailer", "trailer", (10.5, 2.8, 3.6),
                (("white", (215, 215, 210)), ("grey", (140, 140, 145))), "trailer", (18.0, 3.0), 6, 50.0, "trailer"),
    ObjectStyle("vehicle.construction", "construction_vehicle", (6.4, 2.8, 3.2),
                (("olive", (130, 130, 30)), ("khaki", (175, 160, 80))), "construction", (16.0, 3.0), 6, 45.0,
                "construction vehicle"),
    ObjectStyle("human.pedestrian.adult", "pedestrian", (0.73, 0.67, 1.75),
                (("purple", (150, 60, 170)), ("magenta", (200, 50, 150))), "person", (-5.0, 2.0), 2, 25.0,
                "pedestrian"),
    ObjectStyle("human.pedestrian.child", "pedestrian", (0.5, 0.5, 1.2),
                (("pink", (235, 110, 190)), ("violet", (130, 80, 210))), "person", (-8.0, 2.0), 1, 25.0, "child"),
    ObjectStyle("human.pedestrian.construction_worker", "pedestrian", (0.73, 0.67, 1.78),
                (("high-visibility orange", (250, 140, 20)), ("high-visibility yellow", (225, 235, 40))),
                "person", (-5.0, 2.0), 2, 60.0, "construction worker"),
    ObjectStyle("human.pedestrian.police_officer", "pedestrian", (0.73, 0.67, 1.8),
                (("dark navy", (30, 35, 80)),), "person", (-5.0, 2.0), 2, 30.0, "police officer"),
    ObjectStyle("vehicle.motorcycle", "motorcycle", (2.1, 0.8, 1.5),
                (("black", (35, 35, 35)), ("dark red", (120, 20, 25))), "cycle", (3.0, 2.0), 2, 35.0, "motorcycle"),
    ObjectStyle("vehicle.bicycle", "bicycle", (1.75, 0.6, 1.3),
                (("cyan", (40, 190, 200)), ("teal", (20, 120, 120))), "cycle", (0.0, 2.0), 2, 30.0, "bicycle"),
    ObjectStyle("movable_object.trafficcone", "traffic_cone", (0.4, 0.4, 1.0),
                (("orange", (255, 110, 0)),), "cone", (-8.0, 2.0), 1, 120.0, "traffic cone"),
    ObjectStyle("movable_object.barrier", "barrier", (0.5, 2.4, 1.0),
                (("red and white", (215, 30, 30)),), "barrier", (5.0, 2.0), 3, 90.0, "barrier"),
)}

PATTERNS = ("car", "truck", "bus", "trailer", "construction", "person", "cycle", "cone", "barrier")
RIDER_RGB = (60, 150, 70)  # the rider on a cycle (green jacket): distinct from every class palette
RIDER_HEIGHT = 1.7  # a cycle box with its rider (nuScenes annotates the rider inside the cycle box)


def style_of(category: str) -> ObjectStyle:
    try:
        return STYLES[category]
    except KeyError:
        raise KeyError(f"synthetic world has no style for category '{category}'; known: {sorted(STYLES)}") from None
