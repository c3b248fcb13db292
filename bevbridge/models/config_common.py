"""Schema pieces every method's config shares: the keys of every ``model:`` section, and a BEV grid in metres.

Each method's schema (``bevbridge/models/<method>/config.py``, ``bevbridge/recipes/<recipe>/config.py``) is a
dataclass that subclasses :class:`ModelConfig`, adds ``kind: Literal["<method>"]`` (the loader chooses the schema by
it) and implements ``data_needs()``: what its model reads from a Batch (bevbridge/models/contract.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bevbridge.geometry import BEVGrid

__all__ = ["ModelConfig", "GridConfig"]


@dataclass(kw_only=True)
class ModelConfig:
    """Keys every model section has.

    init_from: pretrained weights to start from (a .safetensors file, a bevbridge checkpoint folder, or a torch
    state dict loadable with weights_only=True); init_prefix_map renames key prefixes of that file first
    (e.g. {"backbone.": "img_backbone.trunk."}); missing and unexpected keys are reported, not fatal.
    freeze: sub-modules to freeze after building and loading (qualified names such as ``image_backbone`` or
    ``detector.decoder``): eval mode, no gradient, not optimised (bevbridge/models/freeze.py); e.g. the
    captioning stage of TOD3Cap's staged schedule freezes the detector.
    """

    init_from: str | None = None
    init_prefix_map: dict[str, str] = field(default_factory=dict)
    freeze: tuple[str, ...] = ()

    def data_needs(self):  # -> DataNeeds
        raise NotImplementedError(f"{type(self).__name__}.data_needs")

    def init_note(self) -> str | None:
        """A warning for training without ``init_from`` when the paper starts this model from pretrained weights
        (logged by engine/build.py when a run starts from scratch); None when training from scratch is as published."""
        return None


@dataclass
class GridConfig:
    """A BEVGrid in metres (see bevbridge.geometry.BEVGrid)."""

    xmin: float = -51.2
    xmax: float = 51.2
    ymin: float = -51.2
    ymax: float = 51.2
    res: float = 0.8

    def __post_init__(self) -> None:
        self.to_grid()  # a grid that is not a whole number of cells fails at load time, naming the section

    def to_grid(self) -> BEVGrid:
        return BEVGrid(self.xmin, self.xmax, self.ymin, self.ymax, self.res)
