"""A frozen causal LM conditioned on per-object visual queries: teacher-forced logits and batched generation.

    clm = ConditionedLM(lm, tokenizer, adapter, instruction="Describe the object in detail.")
    targets, mask = clm.encode_targets(captions)            # [N, T] caption tokens + EOS, right-padded
    logits = clm.logits(visual, targets)                     # [N, T, V]: logits[:, t] predicts targets[:, t]
    texts = clm.generate(visual, max_new_tokens=64)          # greedy; temperature/top_p > 0: nucleus sampling

The prompt is Alpaca's no-input template with TOD3Cap's instruction (../shared/notes/anchor-facts.md), the same for
every object, so a batch of objects shares one prompt length and needs no padding in front. A caption is tokenised
on its own (no special tokens) and followed by the tokenizer's EOS; the prompt is tokenised with the tokenizer's
default special tokens (Llama-3 adds ``<|begin_of_text|>``, SmolLM2 adds none).

Generation runs all N objects as one batch with the KV cache: one forward pass over the prompt, then one token per
step for every unfinished object (finished rows are dropped from the batch and the cache). Greedy by default;
with ``temperature > 0`` it samples from the top-p nucleus of softmax(logits / temperature) (TOD3Cap/MTA: 0.1, 0.75).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ALPACA_TEMPLATE", "INSTRUCTION", "ConditionedLM", "sample_top_p"]

ALPACA_TEMPLATE = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                   "the request.\n\n### Instruction:\n{instruction}\n\n### Response:")
INSTRUCTION = "Describe the object in detail."


def sample_top_p(probs: torch.Tensor, top_p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of ``probs [N, V]`` from the smallest set of most likely tokens whose mass reaches
    ``top_p`` (the most likely token is always kept), renormalised. Returns ``[N]`` int64."""
    sorted_p, order = probs.sort(dim=-1, descending=True)
    keep = (sorted_p.cumsum(-1) - sorted_p) < top_p  # mass strictly before the token is below top_p
    sorted_p = sorted_p * keep
    pick = torch.multinomial(sorted_p / sorted_p.sum(-1, keepdim=True), 1, generator=generator)
    return order.gather(-1, pick).squeeze(-1)


class ConditionedLM(nn.Module):
    """A frozen LM + an adapter (bevbridge/models/language/adapter.py) + the prompt (see the module docstring).

    Args:
        lm: the causal LM (frozen by the caller). ``tokenizer``: its tokenizer (None on the meta device: built
            lazily by ``tokenizer_fn`` on first use). ``adapter``: a GatedPromptAdapter or LoRAAdapter, attached here.
        instruction: the Alpaca instruction. ``max_caption_tokens``: captions are cut to this many tokens (+ EOS).
    """

    def __init__(self, lm: nn.Module, adapter: nn.Module, *, tokenizer=None, tokenizer_fn=None,
                 instruction: str = INSTRUCTION, max_caption_tokens: int = 96):
        super().__init__()
        self.lm = lm
        self.adapter = adapter
        adapter.attach(lm)
        self._tokenizer, self._tokenizer_fn = tokenizer, tokenizer_fn
        self.instruction = instruction
        self.max_caption_tokens = max_caption_tokens
        self._prompt: torch.Tensor | None = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            if self._tokenizer_fn is None:
                raise RuntimeError("ConditionedLM has no tokenizer")
            self._tokenizer = self._tokenizer_fn()
        return self._tokenizer

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    def prompt_ids(self, device: torch.device) -> torch.Tensor:
        """The prompt's token ids ``[P]``."""
        if self._prompt is None:
            text = ALPACA_TEMPLATE.format(instruction=self.instruction)
            self._prompt = torch.tensor(self.tokenizer(text)["input_ids"], dtype=torch.long)
        return self._prompt.to(device)

    def encode_targets(self, captions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids [N, T], mask [N, T])``: each caption's tokens (cut to max_caption_tokens) then EOS, right-padded
        with EOS; mask is True on the tokens that count (caption + its EOS)."""
        enc = self.tokenizer(list(captions), add_special_tokens=False)["input_ids"]
        rows = [ids[: self.max_caption_tokens] + [self.eos_id] for ids in enc]
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), self.eos_id, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = True
        return ids.to(device), mask.to(device)

    def _embed(self, visual: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        e = self.lm.get_input_embeddings()(ids)
        if self.adapter.prefix_len:
            e = torch.cat([visual.to(e.dtype), e], 1)
        return e

    def _conditioning(self, visual: torch.Tensor):
        return self.adapter.condition(None if self.adapter.prefix_len else visual)

    def logits(self, visual: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``[N, T, V]`` for ``targets [N, T]`` given ``visual [N, K, H]``: position t
        predicts ``targets[:, t]`` from the prompt and ``targets[:, :t]``."""
        N, T = targets.shape
        ids = torch.cat([self.prompt_ids(targets.device).expand(N, -1), targets[:, :-1]], 1)
        with self._conditioning(visual):
            out = self.lm(inputs_embeds=self._embed(visual, ids), use_cache=False, logits_to_keep=T)
        return out.logits

    @torch.no_grad()
    def generate_ids(self, visual: torch.Tensor, *, max_new_tokens: int, temperature: float = 0.0,
                     top_p: float = 1.0, generator: torch.Generator | None = None) -> list[list[int]]:
        """Token ids of each object's caption (without EOS), batched with the KV cache (module docstring)."""
        N = visual.shape[0]
        if N == 0:
            return []
        dev = visual.device
        ids = self.prompt_ids(dev).expand(N, -1)
        out_ids: list[list[int]] = [[] for _ in range(N)]
        alive = torch.arange(N, device=dev)  # rows of the original batch still generating
        with self._conditioning(visual):
            out = self.lm(inputs_embeds=self._embed(visual, ids), use_cache=True, logits_to_keep=1)
            cache, logits = out.past_key_values, out.logits[:, -1]
            for step in range(max_new_tokens):
                if temperature > 0:
                    nxt = sample_top_p(torch.softmax(logits.float() / temperature, -1), top_p, generator)
                else:
                    nxt = logits.argmax(-1)
                done = nxt == self.eos_id
                for r, t in zip(alive[~done].tolist(), nxt[~done].tolist()):
                    out_ids[r].append(t)
                if done.all() or step == max_new_tokens - 1:
                    break
                if done.any():  # drop finished rows from the batch, the cache and the adapter's prompt keys
                    keep = (~done).nonzero()[:, 0]
                    alive, nxt = alive[keep], nxt[keep]
                    cache.batch_select_indices(keep)
                    self._select_rows(keep)
                out = self.lm(input_ids=nxt[:, None], past_key_values=cache, use_cache=True, logits_to_keep=1)
                cache, logits = out.past_key_values, out.logits[:, -1]
        return out_ids

    def _select_rows(self, keep: torch.Tensor) -> None:
        kv = getattr(self.adapter, "_kv", None)
        if kv:
            for i, (k, v) in list(kv.items()):
                kv[i] = (k[keep], v[keep])
        if getattr(self.adapter, "_visual", None) is not None:
            self.adapter._visual = self.adapter._visual[keep]

    def generate(self, visual: torch.Tensor, *, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 generator: torch.Generator | None = None) -> list[str]:
        """Each object's caption as text (see :meth:`generate_ids`)."""
        ids = self.generate_ids(visual, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                generator=generator)
        return [self.tokenizer.decode(t, skip_special_tokens=True).strip() for t in ids]
