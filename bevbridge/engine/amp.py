"""Mixed precision: autocast for the forward pass and, for fp16, a GradScaler.

================  ======================================  ===========================================
train.amp         CPU                                     CUDA
================  ======================================  ===========================================
none              float32                                 float32
bf16              autocast bfloat16                       autocast bfloat16 (needs an Ampere+ GPU)
fp16              falls back to bf16, with a warning      autocast float16 + GradScaler
================  ======================================  ===========================================

Weights, gradients, optimizer state and the EMA stay float32 in every mode. With fp16 the GradScaler skips a step
whose gradients overflowed and lowers its scale; that is normal and does not count as a bad step.
"""

from __future__ import annotations

import contextlib
import logging
from typing import ContextManager

import torch

__all__ = ["Precision"]

log = logging.getLogger(__name__)


class Precision:
    def __init__(self, amp: str, device: torch.device):
        self.device = device
        if amp == "fp16" and device.type != "cuda":
            log.warning("train.amp=fp16 needs CUDA; on %s using bf16 autocast instead", device.type)
            amp = "bf16"
        if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise RuntimeError("train.amp=bf16: this GPU does not support bfloat16; use train.amp=fp16")
        self.mode = amp
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None

    def autocast(self) -> ContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients back to their true scale (before clipping or measuring them)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Take the optimizer step; False if the GradScaler skipped it (overflow)."""
        if self.scaler is None:
            optimizer.step()
            return True
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= before

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
