"""The training step as one module: ``forward + loss``, so that DDP's forward covers every parameter a loss uses.

    step = TrainStep(model, precision)          # DDP wraps ``step``, not ``model``
    losses = step(batch)                        # {"loss": total, <named terms>...}

Why: DDP prepares its gradient reduction from what its wrapped module's forward touched. When the loss ran outside
(``model.loss`` after ``ddp(batch)``), parameters used only by the loss (CTAB's HUW log-sigmas; a distillation
assistant; alignment projectors) were invisible to it: with ``find_unused_parameters=True`` DDP marked them unused,
then saw their gradients arrive and died with "marked as ready twice" (detectron2's ``run_step`` avoids this the same
way: the loss is computed inside the module DDP wraps).

Precision: the model's forward runs under the engine's autocast; its floating-point outputs are cast to float32 and
the loss runs with autocast disabled, so losses (scatters into targets, focal terms, log-sigmas) are always computed
in float32 (mmdet's ``force_fp32`` for losses).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bevbridge.engine.amp import Precision
from bevbridge.engine.errors import EngineError

__all__ = ["TrainStep", "to_float32", "check_losses"]


def to_float32(obj: Any) -> Any:
    """``obj`` with every half-precision floating tensor (in dicts, lists, tuples) cast to float32."""
    if isinstance(obj, torch.Tensor):
        return obj.float() if obj.is_floating_point() and obj.dtype != torch.float64 else obj
    if isinstance(obj, dict):
        return {k: to_float32(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(to_float32(v) for v in obj)
    return obj


def check_losses(losses: Any) -> torch.Tensor:
    """The total of a loss dictionary (its ``"loss"`` entry), checked to be a scalar tensor."""
    if not isinstance(losses, dict) or "loss" not in losses:
        got = ", ".join(losses) if isinstance(losses, dict) else type(losses).__name__
        raise EngineError(f"model.loss must return a dict with the total under 'loss' (got: {got or 'nothing'})")
    total = losses["loss"]
    if not torch.is_tensor(total) or total.numel() != 1:
        raise EngineError(f"model.loss()['loss'] must be a scalar tensor, got {type(total).__name__} "
                          f"{tuple(total.shape) if torch.is_tensor(total) else total!r}")
    return total.float().reshape(())


class TrainStep(nn.Module):
    """``forward(batch) -> losses``: the model's forward under autocast, then its loss in float32."""

    def __init__(self, model: nn.Module, precision: Precision):
        super().__init__()
        self.model = model
        self.precision = precision

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        with self.precision.autocast():
            outputs = self.model(batch)
        with torch.autocast(device_type=self.precision.device.type, enabled=False):
            losses = self.model.loss(to_float32(outputs), batch)
        check_losses(losses)
        return losses
