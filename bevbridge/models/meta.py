"""Building a model without weights: under ``with torch.device("meta")`` (``bevbridge summary`` of a paper-scale
config) parameters have shapes but no storage, so constructors must not read weight files then."""

from __future__ import annotations

import torch

__all__ = ["on_meta_device"]


def on_meta_device() -> bool:
    """True while a ``torch.device("meta")`` context makes new tensors weightless."""
    return torch.empty(0).device.type == "meta"
