"""Dense object captions in TOD3Cap's format: one JSON keyed by sample_annotation token, ``{"final_caption": str}``.

Each caption is templated from what the annotation says: the object's class and colour, its distance and direction
from the ego ("in the front left of the ego car", TOD3Cap's phrasing), its motion (speed and heading relative to the
ego for moving objects) and its map context (road, intersection, crosswalk, walkway, car park, work zone). Several
templates and synonyms give the wording some variety. TOD3Cap's real file is ``final_caption_bbox_token.json``; we
write it with that name into the version folder (DIR/VERSION/final_caption_bbox_token.json).
"""

from __future__ import annotations

import math

import numpy as np

from .catalog import style_of

__all__ = ["CAPTIONS_FILENAME", "direction_phrase", "make_caption"]

CAPTIONS_FILENAME = "final_caption_bbox_token.json"
_SECTORS = ("front", "front left", "left", "back left", "back", "back right", "right", "front right")


def direction_phrase(x: float, y: float) -> str:
    """The ego-relative direction of a point in the ego frame (x forward, y left): one of 8 sectors."""
    a = math.degrees(math.atan2(y, x)) % 360.0
    return _SECTORS[int(((a + 22.5) % 360.0) // 45.0)]


def _motion(category: str, attribute: str | None, speed: float, rel_yaw: float, rng: np.random.Generator) -> str:
    heading = ("in the same direction as the ego car" if abs(rel_yaw) < math.pi / 4 else
               "towards the ego car" if abs(rel_yaw) > 3 * math.pi / 4 else "across the ego car's path")
    pick = lambda *opts: opts[int(rng.integers(len(opts)))]  # noqa: E731
    if attribute == "vehicle.moving":
        return pick(f"driving {heading} at about {speed:.0f} m/s", f"moving {heading}",
                    f"travelling at roughly {speed:.0f} m/s {heading}")
    if attribute == "vehicle.stopped":
        return pick("stopped and waiting to move", "waiting at the stop line", "standing still in its lane")
    if attribute == "vehicle.parked":
        return pick("parked", "parked and unoccupied", "standing parked")
    if attribute == "cycle.with_rider":
        if speed > 0.3:
            return pick(f"ridden by a cyclist {heading}", f"with a rider, moving {heading}")
        return pick("with a rider, waiting", "with its rider stopped")
    if attribute == "cycle.without_rider":
        return pick("parked without a rider", "standing unattended")
    if attribute == "pedestrian.moving":
        return pick(f"walking {heading}", "walking", f"walking at about {speed:.1f} m/s")
    if attribute == "pedestrian.standing":
        return pick("standing still", "standing", "waiting")
    return pick("placed there", "set up", "standing")  # cones, barriers


def _a(word: str) -> str:
    return ("an " if word[:1].lower() in "aeio" else "a ") + word


def make_caption(category: str, colour: str, attribute: str | None, xy_ego: np.ndarray, speed: float,
                 rel_yaw: float, context: str, rng: np.random.Generator) -> str:
    """One caption. ``xy_ego`` is the object centre in the ego frame, ``rel_yaw`` its heading minus the ego's."""
    style = style_of(category)
    noun = style.noun
    person = style.pattern == "person"
    thing = f"{_a(noun)} in {colour}" if person else f"{_a(colour)} {noun}"  # people: the colour of their clothes
    looks = f"is dressed in {colour}" if person else f"is {colour}"
    dist = float(np.hypot(*xy_ego[:2]))
    where = direction_phrase(float(xy_ego[0]), float(xy_ego[1]))
    motion = _motion(category, attribute, speed, rel_yaw, rng)
    d = f"{max(dist, 1.0):.0f}"
    templates = (
        f"{thing[0].upper()}{thing[1:]} {motion} {context}, about {d} meters away in the {where} of the ego car.",
        f"There is {thing} {context} in the {where} of the ego car, roughly {d} meters away; it is {motion}.",
        f"The {noun} {looks} and {motion} {context}, about {d} meters away in the {where} of the ego car.",
        f"In the {where} of the ego car, about {d} meters away, {thing} is {motion} {context}.",
    )
    return templates[int(rng.integers(len(templates)))]
