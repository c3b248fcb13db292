"""The caption branch of TOD3Cap (papers/mta.txt Sec. 3.1, "BEV Captioning Module"): objects -> captions.

    BEV [B, C, H, W] + each object's detection embedding --relation Q-Former (Eq. 1) + projector (Eq. 2)-->
    visual query q [N, K, H] --frozen causal LM with adapters, Alpaca prompt--> Pr(o | p, q) (Eq. 2), captions

Training minimises the language-modelling loss L_LM: cross-entropy of each caption token (and the closing EOS)
given the prompt, the earlier tokens and q, averaged over a sample's tokens, then over the samples that have objects
(TOD3Cap averages per sample, then over the batch). Only the Q-Former, projector, object token and the adapter train;
the LM is frozen and left out of checkpoints (it is rebuilt from its own folder).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bevbridge.models.freeze import freeze
from bevbridge.models.language.adapter import GatedPromptAdapter, LoRAAdapter
from bevbridge.models.language.conditioned_lm import ConditionedLM
from bevbridge.models.language.lm import LMInfo, load_lm, load_tokenizer
from bevbridge.models.meta import on_meta_device
from bevbridge.models.tod3cap.config import CaptionConfig, LMConfig, QFormerConfig
from bevbridge.models.tod3cap.qformer import BEVTokens, ObjectToken, Projector, RelationQFormer

__all__ = ["CaptionHead", "caption_loss"]


def caption_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, sample: torch.Tensor,
                 num_samples: int) -> torch.Tensor:
    """L_LM: token cross-entropy ``[N, T]`` averaged over each sample's caption tokens, then over the samples that
    have objects. ``logits [N, T, V]``, ``targets``/``mask [N, T]``, ``sample [N]`` (batch index of each object)."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)
    m = mask.float()
    per_obj_sum, per_obj_n = (ce * m).sum(1), m.sum(1)
    tot = torch.zeros(num_samples, device=ce.device, dtype=ce.dtype).index_add(0, sample, per_obj_sum)
    cnt = torch.zeros(num_samples, device=ce.device, dtype=ce.dtype).index_add(0, sample, per_obj_n)
    has = cnt > 0
    return (tot[has] / cnt[has]).mean()


class CaptionHead(nn.Module):
    """Q-Former + projector + frozen LM with adapter.

    Args:
        qformer, lm, caption: the ``model.qformer``, ``model.lm`` and ``model.caption`` sections.
        bev_channels: C of the detector's BEV features; ``query_channels``: C of its object queries.
    """

    def __init__(self, qformer: QFormerConfig, lm: LMConfig, caption: CaptionConfig, *, bev_channels: int,
                 query_channels: int):
        super().__init__()
        self.caption_cfg = caption
        q = qformer
        self.bev_tokens = BEVTokens(bev_channels, q.dim, q.bev_stride)
        self.object_token = ObjectToken(q.object_token, query_channels, q.dim)
        self.qformer = RelationQFormer(q.dim, q.depth, q.heads, q.mlp_ratio, q.query_len)
        model = freeze(load_lm(lm.path), in_checkpoint=False)
        info = LMInfo(model.config)
        self.projector = Projector(q.dim, info.hidden_size)
        if lm.adapter == "prompts":
            layers = lm.adapter_layers if lm.adapter_layers is not None else max(1, info.num_layers - 1)
            if layers > info.num_layers:
                raise ValueError(f"model.lm.adapter_layers={layers} but the LM has {info.num_layers} layers")
            adapter: nn.Module = GatedPromptAdapter(info, layers, q.query_len)
        else:
            adapter = LoRAAdapter(info, lm.lora_rank, lm.lora_alpha, lm.lora_targets, q.query_len)
        path = lm.path
        tokenizer = None if on_meta_device() else load_tokenizer(path)
        self.language = ConditionedLM(model, adapter, tokenizer=tokenizer, tokenizer_fn=lambda: load_tokenizer(path),
                                      instruction=caption.instruction, max_caption_tokens=lm.max_caption_tokens)
        self.info = info

    def encode(self, bev: torch.Tensor, box_code: torch.Tensor, query: torch.Tensor, sample: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(visual query [N, K, H], object token after each Q-Former block [L, N, D])`` for N objects:
        ``box_code [N, 10]``, ``query [N, C]``, ``sample [N]`` indexing ``bev [B, C, H, W]``."""
        tokens = self.bev_tokens(bev)
        d0 = self.object_token(box_code.to(tokens.dtype), query.to(tokens.dtype))
        out, hidden = self.qformer(d0, tokens, sample)
        return self.projector(out), hidden

    def teacher_forced(self, visual: torch.Tensor, captions: list[str]) -> dict[str, torch.Tensor]:
        """``{"logits" [N, T, V], "targets" [N, T], "mask" [N, T]}`` of the ground-truth ``captions``."""
        targets, mask = self.language.encode_targets(captions, visual.device)
        return {"logits": self.language.logits(visual, targets), "targets": targets, "mask": mask}

    @torch.no_grad()
    def generate(self, visual: torch.Tensor, *, greedy: bool = False, generator: torch.Generator | None = None
                 ) -> list[str]:
        c = self.caption_cfg
        temperature = 0.0 if greedy else c.temperature
        return self.language.generate(visual, max_new_tokens=c.max_new_tokens, temperature=temperature,
                                      top_p=c.top_p, generator=generator)
