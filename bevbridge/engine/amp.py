"""Mixed precision: autocast for the forward pass and, for fp16, a GradScaler.

================  ================================================  ===========================================
train.amp         CPU                                               CUDA
================  ================================================  ===========================================
none              float32                                           float32
bf16              autocast bfloat16 if the CPU has native bfloat16  autocast bfloat16 (needs an Ampere+ GPU)
                  (AVX512-BF16 or AMX), else float32 (see below)
fp16              bf16 as in the row above (CPUs have no fp16       autocast float16 + GradScaler
                  autocast worth using)
================  ================================================  ===========================================

A CPU without native bfloat16 (``torch.backends.cpu.get_cpu_capability()`` is "AVX2" or lower, or "AVX512" without
the BF16 extension) emulates it: a bf16-autocast training step of mtl_ctab_synth measured ~20x slower than float32
on an AVX2 AMD EPYC. So on such a CPU a requested bf16/fp16 runs in float32, says so in one log line, and the
decision is recorded (``Precision.mode`` next to ``Precision.requested``; the Trainer writes both into the run's
metrics.json and its log). ``train.amp_allow_emulated: true`` insists on bf16 there anyway. The choice is the only
thing that depends on the CPU: everything else a user sees is the same on every machine.

``Precision.native_modes(device)`` lists the ``train.amp`` values a device runs natively (tests parametrise on it).

Weights, gradients, optimizer state and the EMA stay float32 in every mode. The engine runs the losses in float32
with autocast off (engine/train_step.py). With fp16 the GradScaler skips a step whose gradients overflowed and lowers
its scale; that is normal and does not count as a bad step.
"""

from __future__ import annotations

import contextlib
import logging
from typing import ContextManager

import torch

__all__ = ["Precision", "cpu_has_native_bf16"]

log = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool:
    """True if this CPU computes bfloat16 natively: x86 with AVX512-BF16 or AMX (torch's own capability probes).

    ``torch.backends.cpu.get_cpu_capability()`` says only "DEFAULT", "NO AVX", "AVX2", "AVX512", "VSX", "Z VECTOR"
    or "SVE256"; "AVX512" does not imply the BF16 extension, hence the finer probes. Other architectures (ARM,
    POWER, s390x) count as not native: bf16 there is opt-in (``train.amp_allow_emulated``).
    """
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        return False
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(p()) for p in probes if callable(p))


class Precision:
    """The autocast/GradScaler policy for ``train.amp`` on ``device`` (module docstring).

    ``requested`` is what the config asked for; ``mode`` ("none", "bf16" or "fp16") what runs; ``reason`` says why
    they differ (empty when they do not).
    """

    def __init__(self, amp: str, device: torch.device, allow_emulated: bool = False):
        self.device = device
        self.requested = amp
        self.reason = ""
        if amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"train.amp must be none, bf16 or fp16, got {amp!r}")
        if device.type == "cuda" and amp == "bf16" and not torch.cuda.is_bf16_supported():
            raise RuntimeError("train.amp=bf16: this GPU does not support bfloat16; use train.amp=fp16")
        if device.type != "cuda" and amp in ("bf16", "fp16"):
            if amp == "fp16":
                self.reason = f"fp16 autocast needs CUDA; on {device.type} bf16 is the half precision"
                amp = "bf16"
            if "bf16" not in self.native_modes(device):
                if allow_emulated:
                    self.reason = (f"{self.reason + '; ' if self.reason else ''}bf16 on a {device.type} without "
                                   f"native bfloat16 (train.amp_allow_emulated: true): expect a much slower step")
                else:
                    self.reason = (f"{self.reason + '; ' if self.reason else ''}this {device.type} has no native "
                                   f"bfloat16 (capability {torch.backends.cpu.get_cpu_capability()}), where "
                                   f"bf16 autocast is ~20x slower: float32 instead "
                                   f"(train.amp_allow_emulated: true insists)")
                    amp = "none"
        self.mode = amp
        if self.reason:
            (log.info if self.mode != "none" and not allow_emulated else log.warning)("train.amp=%s: %s",
                                                                                    self.requested, self.reason)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None

    @staticmethod
    def native_modes(device: torch.device | str) -> tuple[str, ...]:
        """The ``train.amp`` values ``device`` runs natively: always "none"; "bf16" on a CUDA GPU that supports it
        or a CPU with native bfloat16 (:func:`cpu_has_native_bf16`); "fp16" on CUDA."""
        device = torch.device(device)
        if device.type == "cuda":
            return ("none", "bf16", "fp16") if torch.cuda.is_bf16_supported() else ("none", "fp16")
        if device.type == "cpu" and cpu_has_native_bf16():
            return ("none", "bf16")
        return ("none",)

    def describe(self) -> str:
        """One line: what runs and, if it is not what was asked, why."""
        if self.mode == self.requested and not self.reason:
            return f"amp {self.mode}"
        return f"amp {self.mode} (train.amp={self.requested}: {self.reason})"

    def record(self) -> dict[str, str]:
        """``{"amp": mode, "amp_requested": requested}`` for a run's metrics.json."""
        return {"amp": self.mode, "amp_requested": self.requested}

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
