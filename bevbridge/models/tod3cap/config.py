"""TOD3Cap's config schema (``model: {kind: tod3cap, detector: {...}, captioner: {...}}``), papers/mta.txt Sec. 3.1.

Defaults are the released TOD3Cap / the paper where they say (../shared/notes/anchor-facts.md): a 768-wide Q-Former
of 8 blocks and 16 heads over 100 BEV tokens, K = 10 visual query tokens, LLaMA-Adapter-V2 prompts in all LM layers
but the first (TOD3Cap: 31 of LLaMA-7B's 32), 8 matched objects per sample in training, the top 64 detections
captioned at inference with temperature 0.1 and top-p 0.75, up to 256 new tokens. The loss weights are MTA's
Eq. 8 (alpha, beta) = (10, 1), which MTA says follow TOD3Cap; TOD3Cap's released joint stage uses detection x0.3 and
caption x2 instead (``det_weight: 0.3, caption_weight: 2.0``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from bevbridge.models.bevformer.config import BEVFormerConfig
from bevbridge.models.config_common import ModelConfig
from bevbridge.models.contract import DataNeeds

__all__ = ["QFormerConfig", "LMConfig", "CaptionConfig", "TOD3CapConfig"]


@dataclass
class QFormerConfig:
    """The relation Q-Former (Eq. 1) and projector (Eq. 2): bevbridge/models/tod3cap/qformer.py."""

    dim: int = 768
    depth: int = 8  # L, transformer blocks
    heads: int = 16
    mlp_ratio: float = 4.0
    query_len: int = 10  # K: visual query tokens handed to the LM (= adapter prompts per layer)
    bev_stride: int = 5  # BEV 50x50 -> 10x10 = 100 tokens
    # The detection embedding d_0 of each object: TOD3Cap's box token (the predicted 10-d box code), the matched
    # decoder query's embedding, or both summed (qformer.py).
    object_token: Literal["box", "query", "box+query"] = "box"

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"model.qformer.dim ({self.dim}) must be a multiple of heads ({self.heads})")
        if self.depth < 1 or self.query_len < 1 or self.bev_stride < 1:
            raise ValueError("model.qformer: depth, query_len and bev_stride must be >= 1")


@dataclass
class LMConfig:
    """The frozen language model and its adapter (bevbridge/models/language/)."""

    # A local Llama-compatible transformers folder (config.json, *.safetensors, tokenizer files), e.g. Llama-3.2-1B
    # as in the paper. null = SmolLM2-135M-Instruct, prepared by `make setup` (language/smollm2.py).
    path: str | None = None
    adapter: Literal["prompts", "lora"] = "prompts"  # LLaMA-Adapter-V2 gated prompts (TOD3Cap), or LoRA
    adapter_layers: int | None = None  # prompts: the last N decoder layers; null = all but the first
    lora_rank: int = 16
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    max_caption_tokens: int = 96  # ground-truth captions are cut to this many tokens (+ EOS) in training

    def __post_init__(self) -> None:
        if self.adapter_layers is not None and self.adapter_layers < 1:
            raise ValueError(f"model.lm.adapter_layers must be >= 1 or null, got {self.adapter_layers}")
        if self.max_caption_tokens < 1:
            raise ValueError("model.lm.max_caption_tokens must be >= 1")


@dataclass
class CaptionConfig:
    """What the caption branch trains on and how it generates."""

    instruction: str = "Describe the object in detail."  # the Alpaca prompt's instruction (TOD3Cap)
    objects_per_sample: int = 8  # matched positive queries captioned per sample in training (random subset)
    topk: int = 64  # detections captioned per sample at inference (top (query, class) scores, as TOD3Cap)
    max_new_tokens: int = 256  # TOD3Cap's max_gen_len
    temperature: float = 0.1  # 0 = greedy decoding
    top_p: float = 0.75
    seed: int = 0  # sampling seed (combined with the batch's sample tokens: evaluation is reproducible)

    def __post_init__(self) -> None:
        if self.objects_per_sample < 1 or self.topk < 1 or self.max_new_tokens < 1:
            raise ValueError("model.caption: objects_per_sample, topk and max_new_tokens must be >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"model.caption: temperature must be >= 0 and top_p in (0, 1], got "
                             f"{self.temperature}, {self.top_p}")


@dataclass(kw_only=True)
class TOD3CapConfig(ModelConfig):
    """TOD3Cap: a BEVFormer detector (``detector``, its own schema, kind bevformer) + the caption branch.

    Loss (MTA Eq. 8 without the alignment terms): ``det_weight * L_det + caption_weight * L_LM``; ``det_weight: 0``
    skips the detection loss (TOD3Cap's captioning stage, with ``freeze: [detector]``).
    """

    kind: Literal["tod3cap"]  # required: it chooses this schema
    detector: BEVFormerConfig
    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    det_weight: float = 10.0  # alpha (MTA Eq. 8, "following TOD3Cap"); TOD3Cap's released joint stage: 0.3
    caption_weight: float = 1.0  # beta; TOD3Cap's released joint stage: 2.0

    def __post_init__(self) -> None:
        if self.det_weight < 0 or self.caption_weight < 0:
            raise ValueError("model.det_weight and model.caption_weight must be >= 0")

    def data_needs(self) -> DataNeeds:
        """The detector's needs plus the ground-truth captions; predicts detection and captioning."""
        return replace(self.detector.data_needs(), captions=True, tasks=("detection", "captioning"))
