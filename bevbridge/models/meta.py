"""Building a model without weights: under ``with torch.device("meta")`` (``bevbridge summary`` of a paper-scale
config) parameters have shapes but no storage, so constructors must not read weight files then.

:func:`hf_loading` guards every ``transformers`` ``from_pretrained`` call of the project. transformers (5.x) builds a
model under ``torch.device("meta")`` with ``torch.linspace`` temporarily replaced by a CPU-defaulting wrapper
(``transformers.initialization.meta_device_safe_creation_ops``). torch decides which functions a
``torch.device(...)`` context redirects from a set it computes ONCE per process (``torch.utils._device.
_device_constructors``, an ``lru_cache``): if that first computation happens inside transformers' loading, the set
holds the wrapper instead of the real ``torch.linspace``, and for the rest of the process ``torch.linspace`` without
a ``device=`` ignores every ``with torch.device(...)`` (e.g. BEVFormer's pillar heights came out on the CPU under
the meta device once a language model had been loaded). :func:`hf_loading` drops that cached set afterwards, so the
next ``torch.device`` context recomputes it from the real functions; ``bevbridge summary`` also resets it before
building on the meta device (:func:`reset_device_constructors`), for loads made outside this project.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["on_meta_device", "hf_loading", "reset_device_constructors"]


def on_meta_device() -> bool:
    """True while a ``torch.device("meta")`` context makes new tensors weightless."""
    return torch.empty(0).device.type == "meta"


def reset_device_constructors() -> None:
    """Forget torch's cached set of device-redirected constructors (recomputed on the next lookup): undoes a
    poisoning by a transformers load this project did not guard (e.g. sentence-transformers, user code)."""
    from torch.utils import _device

    cached = getattr(_device, "_device_constructors", None)
    if hasattr(cached, "cache_clear"):
        cached.cache_clear()


@contextmanager
def hf_loading() -> Iterator[None]:
    """Wrap a transformers ``from_pretrained`` call: afterwards ``torch.device(...)`` contexts redirect
    ``torch.linspace`` again (see the module docstring)."""
    try:
        yield
    finally:
        reset_device_constructors()
