"""The contract between models and the engine: what a model takes, returns and publishes.

Every whole model (``bevbridge/models/detectors/*.py``) is an ``nn.Module`` with these methods::

    outputs = model(batch)                     # Batch -> dict[str, Tensor]: raw head outputs
    losses  = model.loss(outputs, batch)       # -> dict[str, Tensor]; the engine optimises the sum of the
                                               #    entries whose name starts with "loss" (others are logged)
    preds   = model.predict(outputs, batch)    # -> list[Prediction], one per sample, in the batch's order
    model.scalars()                            # -> dict[str, float]: values to log (HUW sigmas, CTAB gates, ...)

Training-time wrappers that add losses around a model (BridgeTA distillation, MTA alignment) live in
``bevbridge/recipes`` and follow the same contract. Models import nothing from ``bevbridge.data`` but the Batch type.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["Prediction"]


@dataclass
class Prediction:
    """One sample's predictions, in the augmented ego frame of the batch (the engine undoes ``bda`` at export).

    boxes [n, 9] (x, y, z, l, w, h, yaw, vx, vy); scores [n]; labels [n] int64 (DETECTION_CLASSES index);
    seg_probs [C, Hm, Wm] sigmoid probabilities on the segmentation target's grid; captions: one per box.
    """

    token: str
    boxes: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    seg_probs: torch.Tensor | None = None
    captions: list[str] | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
