"""Which detection class a caption names: for "does the captioner name the right class of a matched object?".

A caption names class c when it contains one of c's words (:data:`CLASS_WORDS`, whole words, plural allowed,
case-insensitive) after removing "ego car"/"ego vehicle" (every TOD3Cap-style caption locates objects relative to
the ego car) and "car park" (a place, not a car). ``class_named@k`` (bevbridge/eval/captioning.py) is the fraction of GT objects matched with IoU > k
whose matched caption names exactly their class and no other.
"""

from __future__ import annotations

import re

from bevbridge.data.batch import DETECTION_CLASSES

__all__ = ["CLASS_WORDS", "named_classes", "names_exactly"]

CLASS_WORDS: dict[str, tuple[str, ...]] = {
    "car": ("car", "sedan", "suv", "van"),
    "truck": ("truck", "lorry", "pickup"),
    "bus": ("bus",),
    "trailer": ("trailer",),
    "construction_vehicle": ("construction vehicle", "excavator", "bulldozer", "crane"),
    "pedestrian": ("pedestrian", "child", "construction worker", "police officer", "person", "man", "woman",
                   "people", "walker"),
    "motorcycle": ("motorcycle", "motorbike", "scooter"),
    "bicycle": ("bicycle", "bike", "cyclist"),
    "traffic_cone": ("traffic cone", "cone"),
    "barrier": ("barrier",),
}
_EGO = re.compile(r"\bego[ -](car|vehicle)s?\b|\bcar[ -]?parks?\b|\bparking\b", re.IGNORECASE)
_PATTERNS = [re.compile(r"\b(" + "|".join(re.escape(w) + "(e?s)?" for w in CLASS_WORDS[c]) + r")\b", re.IGNORECASE)
             for c in DETECTION_CLASSES]


def named_classes(caption: str) -> set[int]:
    """Indices into DETECTION_CLASSES of the classes ``caption`` names (see the module docstring)."""
    text = _EGO.sub(" ", caption)
    return {i for i, p in enumerate(_PATTERNS) if p.search(text)}


def names_exactly(caption: str | None, label: int) -> bool:
    """True if ``caption`` names class ``label`` and no other class."""
    return caption is not None and named_classes(caption) == {int(label)}
