"""The model contract: what every method's model (and every training-time recipe) implements, and what it returns.

The engine (trainer, evaluation, ``infer``, ``viz``, ``summary``, the demo) relies on exactly this and nothing else::

    outputs = model(batch)                      # Batch -> dict[str, Any]: raw head outputs (tensors, lists of them)
    losses  = model.loss(outputs, batch)        # -> dict[str, Tensor]: "loss" = the scalar to minimise, every
                                                #    other entry a named term (logged; detach what is not summed)
    preds   = model.predict(outputs, batch)     # -> list[Prediction], one per sample, in the batch's order
    model.scalars()                             # -> dict[str, float]: values to log (HUW sigmas, CTAB gates, ...)
    model.data_needs()                          # -> DataNeeds: what the model reads from a Batch
    model.kind                                  # str: the config's ``model.kind`` this model was built from

``forward`` runs under the engine's autocast; ``loss`` runs with autocast disabled on float32 outputs (the engine
casts them: engine/train_step.py), so a loss never sees half-precision tensors. Both run inside the module that DDP
wraps, so parameters used only by a loss (HUW's log-sigmas, a distillation assistant, alignment projectors) are
reduced like any other.

Training-time recipes (``bevbridge/recipes``: BridgeTA's distillation, MTA's alignment) follow the same contract
and in addition name the model they train for deployment::

    recipe.deployable_attr                      # str: the attribute holding the deployable model ("student", ...)
    getattr(recipe, recipe.deployable_attr)     # that model: itself a full BEVModel of another kind

Its weights are also written under that model's own keys (``deployable.safetensors``, engine/checkpoint.py), so
``bevbridge eval`` with the deployed model's config loads a recipe's checkpoint directly. Frozen sub-models (a
teacher, a language model) are wrapped with :func:`bevbridge.models.freeze.freeze`.

Models import nothing from ``bevbridge.data`` but the Batch type, and nothing from ``bevbridge.engine``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from bevbridge.geometry import BEVGrid

__all__ = ["DataNeeds", "SensorUse", "Prediction", "BEVModel", "TASKS"]

# How a model uses a sensor: "no" = not loaded; "optional" = used when present (a dropped sensor is handled by the
# model's design, e.g. CTAB's radar branch sees an empty point set); "required" = the model cannot run without it
# (a config that drops it fails when the dataset is built, never deep inside the model).
SensorUse = Literal["no", "optional", "required"]
_USE_ORDER = {"no": 0, "optional": 1, "required": 2}

# The tasks the four papers report; each has an evaluator slot (eval.evaluators) and a Prediction field.
TASKS = ("detection", "segmentation", "captioning")


@dataclass(frozen=True)
class DataNeeds:
    """What a model reads from a Batch. The dataset builder derives the dataset's options from this plus ``data.*``
    (engine/build.py); a model never reaches into the data config, and a data key is never silently overridden.

    Args:
        images: camera images (and their K, sensor2ego, ida). ``image_size``: (H, W) of the network input.
        num_past_frames: adjacent past keyframes (images + ego motion), most recent first.
        radar, lidar: how the model uses each sensor (:data:`SensorUse`). ``radar_features``: the radar columns.
        box_range: (xmin, ymin, xmax, ymax) of the ground-truth boxes kept, in the augmented ego frame (None: all).
        map_grid, map_classes: the BEV segmentation targets' grid and classes (None / (): no map targets). The
            grid is the one the model's segmentation output covers, which may differ from its feature grid
            (BridgeTA: features on +-51.2 m, targets on +-50 m at 0.5 m).
        captions: per-object captions (TOD3Cap format).
        tasks: what ``predict`` fills in, a subset of :data:`TASKS`; the evaluators are checked against it.
    """

    images: bool = True
    image_size: tuple[int, int] | None = None
    num_past_frames: int = 0
    radar: SensorUse = "no"
    radar_features: tuple[str, ...] = ()
    lidar: SensorUse = "no"
    box_range: tuple[float, float, float, float] | None = None
    map_grid: BEVGrid | None = None
    map_classes: tuple[str, ...] = ()
    captions: bool = False
    tasks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.images and self.image_size is None:
            raise ValueError("DataNeeds: images=True needs image_size (H, W)")
        if self.image_size is not None and min(self.image_size) < 1:
            raise ValueError(f"DataNeeds: image_size must be positive, got {self.image_size}")
        if self.num_past_frames < 0:
            raise ValueError(f"DataNeeds: num_past_frames must be >= 0, got {self.num_past_frames}")
        for name in ("radar", "lidar"):
            if getattr(self, name) not in _USE_ORDER:
                raise ValueError(f"DataNeeds: {name} must be one of {tuple(_USE_ORDER)}, got {getattr(self, name)!r}")
        if self.radar != "no" and not self.radar_features:
            raise ValueError("DataNeeds: a model that uses radar must name radar_features")
        if (self.map_grid is None) != (not self.map_classes):
            raise ValueError("DataNeeds: map_grid and map_classes go together (both set or both empty)")
        bad = [t for t in self.tasks if t not in TASKS]
        if bad:
            raise ValueError(f"DataNeeds: unknown task(s) {bad}; known: {TASKS}")

    def union(self, other: DataNeeds) -> DataNeeds:
        """What two models read together (a recipe's teacher and student): each sensor at the stronger use.

        Image sizes, radar columns, map grids and classes must agree where both set them; box ranges must be equal.
        The tasks are this model's (the deployable one's), not the union.
        """

        def same(name: str) -> Any:
            a, b = getattr(self, name), getattr(other, name)
            if a and b and a != b:
                raise ValueError(f"DataNeeds.union: {name} differs between the two models ({a!r} vs {b!r})")
            return a or b

        return replace(
            self, images=self.images or other.images, image_size=same("image_size"),
            num_past_frames=max(self.num_past_frames, other.num_past_frames),
            radar=max(self.radar, other.radar, key=_USE_ORDER.__getitem__), radar_features=same("radar_features"),
            lidar=max(self.lidar, other.lidar, key=_USE_ORDER.__getitem__), box_range=same("box_range"),
            map_grid=same("map_grid"), map_classes=same("map_classes"), captions=self.captions or other.captions)

    def describe(self) -> str:
        """One line for logs: what the dataset will load."""
        parts = []
        if self.images:
            parts.append(f"images {self.image_size[0]}x{self.image_size[1]}" +  # type: ignore[index]
                         (f" + {self.num_past_frames} past frames" if self.num_past_frames else ""))
        if self.radar != "no":
            parts.append(f"radar ({self.radar}: {', '.join(self.radar_features)})")
        if self.lidar != "no":
            parts.append(f"lidar ({self.lidar})")
        if self.map_grid is not None:
            g = self.map_grid
            parts.append(f"map targets {len(self.map_classes)} classes on {g.H}x{g.W} @ {g.res:g} m")
        if self.captions:
            parts.append("captions")
        return "; ".join(parts) or "nothing"


@dataclass
class Prediction:
    """One sample's predictions, in the augmented ego frame of the batch (the engine undoes ``bda`` at export).

    boxes [n, 9] (x, y, z, l, w, h, yaw, vx, vy); scores [n]; labels [n] int64 (DETECTION_CLASSES index);
    seg_probs [C, Hm, Wm] sigmoid probabilities on ``DataNeeds.map_grid``; captions: one per box (same order), or,
    when ``caption_boxes [k, 9]`` is set, one per caption box: the boxes the captions describe when they are not the
    detections themselves (TOD3Cap captions the top-k (query, class) scores, not the detector's final boxes).
    """

    token: str
    boxes: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    seg_probs: torch.Tensor | None = None
    captions: list[str] | None = None
    caption_boxes: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


@runtime_checkable
class BEVModel(Protocol):
    """The contract of the module docstring, checkable with ``isinstance(model, BEVModel)``."""

    kind: str

    def __call__(self, batch: Any) -> dict[str, Any]: ...

    def loss(self, outputs: dict[str, Any], batch: Any) -> dict[str, torch.Tensor]: ...

    def predict(self, outputs: dict[str, Any], batch: Any) -> list[Prediction]: ...

    def scalars(self) -> dict[str, float]: ...

    def data_needs(self) -> DataNeeds: ...
