"""Exponential moving average of the weights, with the MEGVII (BEVDepth/BEVDet/RCBEVDet) decay ramp.

After every optimizer step the update counter u grows by one and every floating-point entry of the model's state
dict (parameters and buffers such as BatchNorm running statistics) moves towards the model's:

    d(u) = decay * (1 - exp(-u / ramp))          (decay 0.999, ramp 2000 in MEGVIIEMAHook)
    ema  = d * ema + (1 - d) * model

so early in training the average follows the model closely. RCBEVDet starts the counter at init_updates = 10560,
where the ramp is already flat. Integer buffers (BatchNorm's num_batches_tracked) are copied, not averaged (the
anchor leaves them at their initial values). The average is kept in float32 on the model's device.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import nn

from bevbridge.models.freeze import frozen_modules

__all__ = ["ModelEMA"]


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float = 0.999, ramp: float = 2000.0, updates: int = 0):
        self.decay = decay
        self.ramp = ramp
        self.updates = updates
        # frozen sub-modules (a teacher, a language model) never change: no shadow copy of them
        frozen = tuple(f"{name}." for name in frozen_modules(model) if name)
        self.shadow: dict[str, torch.Tensor] = {
            k: (v.detach().clone().float() if v.is_floating_point() else v.detach().clone())
            for k, v in model.state_dict().items() if not (frozen and k.startswith(frozen))
        }

    def current_decay(self) -> float:
        return self.decay * (1.0 - math.exp(-self.updates / self.ramp))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        float_ema, float_model = [], []
        for k, v in model.state_dict().items():
            e = self.shadow.get(k)
            if e is None:  # a frozen module's
                continue
            if e.is_floating_point():
                float_ema.append(e)
                float_model.append(v.detach().float())
            else:
                e.copy_(v)
        if float_ema:
            torch._foreach_lerp_(float_ema, float_model, 1.0 - d)  # e + (1 - d) (m - e) = d e + (1 - d) m

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights, keyed like the model's state dict."""
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} keys of the model, e.g. {sorted(missing)[:3]}")
        for k, v in self.shadow.items():
            v.copy_(state[k])
        self.updates = updates

    @contextlib.contextmanager
    def applied_to(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load the averaged weights into ``model`` (e.g. to evaluate them), then restore its own."""
        backup = {k: v.detach().clone() for k, v in model.state_dict().items() if k in self.shadow}
        model.load_state_dict(self.shadow, strict=False)
        try:
            yield model
        finally:
            model.load_state_dict(backup, strict=False)
