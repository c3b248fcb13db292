"""`Sample` (one keyframe from the dataset) and `Batch` (a collated mini-batch): the data contract of every model.

All geometry is in the ego frame at the keyframe's LIDAR_TOP timestamp (DESIGN.md), after the BEV augmentation
``bda`` has been applied to points, boxes and masks. Every modality is optional: a missing or dropped sensor is
``None`` (or ``False`` in a per-camera mask), never silent zeros; models decide what to do without it.

Shapes (N cameras, T past frames, M radar points, P lidar points, n boxes, C mask classes):

=================  ===============================  =========================================================
field              Sample                           Batch
=================  ===============================  =========================================================
images             uint8 [N, 3, H, W]               uint8 [B, N, 3, H, W] (models normalise)
K                  float32 [N, 3, 3]                [B, N, 3, 3] intrinsics of the ORIGINAL image
sensor2ego         float32 [N, 4, 4]                [B, N, 4, 4] camera -> key ego (before bda)
ida                float32 [N, 3, 3]                [B, N, 3, 3] original pixels -> augmented pixels
cam_mask           bool [N]                         [B, N] False = camera dropped (its image is meaningless)
past               PastFrames | None                PastFrames with a leading B (see below)
radar              float32 [M, F] | None            [B, Mmax, F] padded + radar_mask [B, Mmax]
lidar              float32 [P, 5] | None            [B, Pmax, 5] padded + lidar_mask [B, Pmax]
bda                float32 [4, 4]                   [B, 4, 4] key ego (before aug) -> augmented BEV frame
ego2global         float64 [4, 4]                   [B, 4, 4] key ego (before aug) -> global, for export
gt_boxes           float32 [n, 9]                   list of B tensors (x, y, z, l, w, h, yaw, vx, vy)
gt_labels          int64 [n]                        list of B tensors, index into DETECTION_CLASSES
gt_masks           uint8 [C, Hm, Wm] | None         [B, C, Hm, Wm] multi-label {0, 1}
captions           list[str] | None                 list of B lists (one caption per gt box)
=================  ===============================  =========================================================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

__all__ = ["DETECTION_CLASSES", "ATTRIBUTE_NAMES", "PastFrames", "Sample", "Batch", "collate"]

# The 10 nuScenes detection classes in the devkit's order (nuscenes.eval.detection.constants.DETECTION_NAMES).
DETECTION_CLASSES: tuple[str, ...] = (
    "car", "truck", "bus", "trailer", "construction_vehicle",
    "pedestrian", "motorcycle", "bicycle", "traffic_cone", "barrier",
)
# The 8 nuScenes attributes (nuscenes.eval.detection.constants.ATTRIBUTE_NAMES order); -1 = none.
ATTRIBUTE_NAMES: tuple[str, ...] = (
    "pedestrian.moving", "pedestrian.sitting_lying_down", "pedestrian.standing", "cycle.with_rider",
    "cycle.without_rider", "vehicle.moving", "vehicle.parked", "vehicle.stopped",
)


@dataclass
class PastFrames:
    """T adjacent past keyframes (most recent first), for BEVDepth4D fusion and BEVFormer history.

    Sample shapes: images uint8 [T, N, 3, H, W]; K, ida [T, N, 3, 3]; sensor2ego [T, N, 4, 4] (camera -> THAT
    frame's ego); ego2key [T, 4, 4] (that frame's ego -> key ego, before bda); valid bool [T] (False where the
    scene had no earlier frame and the nearest available one was repeated); timestamps int64 [T] (microseconds,
    LIDAR_TOP of that frame; a repeated frame repeats its timestamp), e.g. for ego velocities by finite differences.
    Batch shapes add a leading B. ``timestamps`` may be None (hand-built frames); collate keeps it None then.
    """

    images: torch.Tensor
    K: torch.Tensor
    sensor2ego: torch.Tensor
    ida: torch.Tensor
    ego2key: torch.Tensor
    valid: torch.Tensor
    timestamps: torch.Tensor | None = None


@dataclass
class Sample:
    """One keyframe, as the dataset yields it (see the module docstring for shapes)."""

    token: str
    scene_token: str
    location: str
    timestamp: int  # microseconds, LIDAR_TOP keyframe
    ego2global: torch.Tensor
    bda: torch.Tensor
    cam_names: tuple[str, ...] = ()
    images: torch.Tensor | None = None
    K: torch.Tensor | None = None
    sensor2ego: torch.Tensor | None = None
    ida: torch.Tensor | None = None
    cam_mask: torch.Tensor | None = None
    past: PastFrames | None = None
    radar: torch.Tensor | None = None
    radar_features: tuple[str, ...] = ()  # column names of `radar`
    lidar: torch.Tensor | None = None  # x, y, z, intensity, dt
    gt_boxes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 9))
    gt_labels: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    gt_attrs: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    gt_num_pts: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 2, dtype=torch.int64))  # lidar, radar
    gt_instance_tokens: tuple[str, ...] = ()
    gt_masks: torch.Tensor | None = None
    mask_classes: tuple[str, ...] = ()
    captions: list[str] | None = None


def _pad_stack(items: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad [M_i, F] tensors to [B, max M_i, F] with zeros and a bool validity mask [B, max M_i]."""
    m = max((t.shape[0] for t in items), default=0)
    out = items[0].new_zeros((len(items), max(m, 1), items[0].shape[1]))
    mask = torch.zeros((len(items), max(m, 1)), dtype=torch.bool)
    for i, t in enumerate(items):
        out[i, : t.shape[0]] = t
        mask[i, : t.shape[0]] = True
    return out, mask


def _all_or_none(values: Sequence[Any], name: str) -> bool:
    """True if every sample has ``name``, False if none has it; a mix is an error."""
    present = [v is not None for v in values]
    if any(present) and not all(present):
        raise ValueError(f"collate: '{name}' is present in some samples of the batch and missing in others; "
                         f"drop a sensor for the whole batch, or use the per-camera mask")
    return all(present)


def _stack_optional(values: Sequence[torch.Tensor | None], name: str) -> torch.Tensor | None:
    return torch.stack(list(values)) if _all_or_none(values, name) else None  # type: ignore[arg-type]


def _pad_optional(values: Sequence[torch.Tensor | None], name: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    return _pad_stack(values) if _all_or_none(values, name) else (None, None)  # type: ignore[arg-type]


@dataclass
class Batch:
    """A collated mini-batch (see the module docstring for shapes). Build with :func:`collate`."""

    tokens: list[str]
    scene_tokens: list[str]
    locations: list[str]
    timestamps: torch.Tensor
    ego2global: torch.Tensor
    bda: torch.Tensor
    cam_names: tuple[str, ...] = ()
    images: torch.Tensor | None = None
    K: torch.Tensor | None = None
    sensor2ego: torch.Tensor | None = None
    ida: torch.Tensor | None = None
    cam_mask: torch.Tensor | None = None
    past: PastFrames | None = None
    radar: torch.Tensor | None = None
    radar_mask: torch.Tensor | None = None
    radar_features: tuple[str, ...] = ()
    lidar: torch.Tensor | None = None
    lidar_mask: torch.Tensor | None = None
    gt_boxes: list[torch.Tensor] = field(default_factory=list)
    gt_labels: list[torch.Tensor] = field(default_factory=list)
    gt_attrs: list[torch.Tensor] = field(default_factory=list)
    gt_num_pts: list[torch.Tensor] = field(default_factory=list)
    gt_instance_tokens: list[tuple[str, ...]] = field(default_factory=list)
    gt_masks: torch.Tensor | None = None
    mask_classes: tuple[str, ...] = ()
    captions: list[list[str]] | None = None

    def __len__(self) -> int:
        return len(self.tokens)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor (including those in lists and in ``past``) on ``device``."""
        return _map_tensors(self, lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True)."""
        return _map_tensors(self, lambda t: t.pin_memory())


def _map_tensors(obj: Any, fn) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _map_tensors(getattr(obj, f.name), fn)
                                           for f in dataclasses.fields(obj)})
    if isinstance(obj, list):
        return [_map_tensors(v, fn) for v in obj]
    return obj


def collate(samples: Sequence[Sample]) -> Batch:
    """Collate samples into a :class:`Batch`: images stacked, points padded with masks, boxes kept as lists."""
    if not samples:
        raise ValueError("collate: empty list of samples")
    s0 = samples[0]
    for s in samples[1:]:
        if s.cam_names != s0.cam_names or s.radar_features != s0.radar_features or s.mask_classes != s0.mask_classes:
            raise ValueError("collate: samples disagree on cam_names, radar_features or mask_classes")
    past = None
    if _all_or_none([s.past for s in samples], "past"):
        past = PastFrames(**{f.name: _stack_optional([getattr(s.past, f.name) for s in samples], f"past.{f.name}")
                             for f in dataclasses.fields(PastFrames)})
    radar, radar_mask = _pad_optional([s.radar for s in samples], "radar")
    lidar, lidar_mask = _pad_optional([s.lidar for s in samples], "lidar")
    captions = [list(s.captions) for s in samples] if _all_or_none([s.captions for s in samples], "captions") else None
    return Batch(
        tokens=[s.token for s in samples],
        scene_tokens=[s.scene_token for s in samples],
        locations=[s.location for s in samples],
        timestamps=torch.tensor([s.timestamp for s in samples], dtype=torch.int64),
        ego2global=torch.stack([s.ego2global for s in samples]),
        bda=torch.stack([s.bda for s in samples]),
        cam_names=s0.cam_names,
        images=_stack_optional([s.images for s in samples], "images"),
        K=_stack_optional([s.K for s in samples], "K"),
        sensor2ego=_stack_optional([s.sensor2ego for s in samples], "sensor2ego"),
        ida=_stack_optional([s.ida for s in samples], "ida"),
        cam_mask=_stack_optional([s.cam_mask for s in samples], "cam_mask"),
        past=past,
        radar=radar,
        radar_mask=radar_mask,
        radar_features=s0.radar_features,
        lidar=lidar,
        lidar_mask=lidar_mask,
        gt_boxes=[s.gt_boxes for s in samples],
        gt_labels=[s.gt_labels for s in samples],
        gt_attrs=[s.gt_attrs for s in samples],
        gt_num_pts=[s.gt_num_pts for s in samples],
        gt_instance_tokens=[s.gt_instance_tokens for s in samples],
        gt_masks=_stack_optional([s.gt_masks for s in samples], "gt_masks"),
        mask_classes=s0.mask_classes,
        captions=captions,
    )
