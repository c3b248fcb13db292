"""Adapters for a frozen Llama-layout LM: LLaMA-Adapter-V2 gated prompts (TOD3Cap's) or LoRA (an option).

Zero-initialised gated prompts (LLaMA-Adapter V2, as TOD3Cap uses them; ../shared/notes/anchor-facts.md): each of the
last ``num_layers`` decoder layers l has K learned prompt vectors ``P_l [K, H]`` to which the object's visual query
``q [K, H]`` (the Q-Former's projected outputs, MTA Eq. 2) is added. Inside that layer's self-attention, the token
queries (after RoPE) also attend to the prompts' keys and values (the layer's own frozen ``k_proj``/``v_proj``, no
RoPE on the prompts), through a separate softmax scaled by a per-head gate ``tanh(g_l)`` initialised to zero:

    out = Attn(x) + W_o [ tanh(g_l) * softmax(Q K_p^T / sqrt(d)) V_p ],   K_p = W_k (P_l + q),  V_p = W_v (P_l + q)

(heads grouped as the layer's key/value heads are). With ``g = 0`` the added term is exactly zero, so the LM's logits
are bitwise those of the plain LM at initialisation (tests/test_language_adapter.py), and the visual query enters the
LM only as training opens the gates. ``P`` is initialised N(0, 1) (``nn.Embedding``'s default, as released).

Mechanics: a forward hook on each adapted layer's ``self_attn`` adds the term to its output (W_o is linear and has no
bias in Llama, so adding ``W_o(term)`` after the attention equals adding the term before W_o). The hooks read the
adapter's parameters, which live in the adapter module, outside the LM: the LM stays frozen and out of checkpoints
(bevbridge/models/freeze.py, ``in_checkpoint=False``) while the prompts and gates train and are saved.

LoRA (``kind: lora``): low-rank updates ``W x + (alpha / r) B A x`` on the named projections of every layer, ``B``
zero-initialised (so also bitwise unchanged at initialisation), ``A`` Kaiming-uniform; the visual query then enters
as K prefix tokens before the prompt's embeddings (there are no adapter prompts to add it to).
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import nn

from bevbridge.models.language.lm import LMInfo, decoder_layers

__all__ = ["GatedPromptAdapter", "LoRAAdapter"]


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x [B, heads, T, d]`` (transformers' Llama rotate-half layout; cos/sin [B, T, d])."""
    from transformers.models.llama.modeling_llama import rotate_half

    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


class GatedPromptAdapter(nn.Module):
    """LLaMA-Adapter-V2 prompts in the last ``num_layers`` layers (see the module docstring).

    Args:
        info: the LM's sizes. ``num_layers``: adapted layers, counted from the last (TOD3Cap: 31 of LLaMA-7B's 32).
        prompt_len: K, prompts per layer (TOD3Cap: 10, equal to the visual query length).

    Use: ``adapter.attach(lm)`` once; then ``with adapter.condition(visual):`` around the LM's forward calls
    (``visual [N, K, H]``, one row per sequence of the LM's batch; None: the prompts alone).
    """

    def __init__(self, info: LMInfo, num_layers: int, prompt_len: int):
        super().__init__()
        if not 1 <= num_layers <= info.num_layers:
            raise ValueError(f"adapter layers must lie in [1, {info.num_layers}] (the LM's layers), got {num_layers}")
        self.info, self.num_layers, self.prompt_len = info, num_layers, prompt_len
        self.first_layer = info.num_layers - num_layers
        self.prompts = nn.Parameter(torch.randn(num_layers, prompt_len, info.hidden_size))
        self.gates = nn.Parameter(torch.zeros(num_layers, info.num_heads))
        self._visual: torch.Tensor | None = None
        self._kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles: list = []

    @property
    def prefix_len(self) -> int:
        return 0  # the visual query enters through the prompts, not as input tokens

    def attach(self, lm: nn.Module) -> None:
        """Register the hooks on ``lm``'s adapted layers (once; the LM's module tree and keys are unchanged)."""
        if self._handles:
            raise RuntimeError("GatedPromptAdapter.attach: already attached")
        layers = decoder_layers(lm)
        if len(layers) != self.info.num_layers:
            raise ValueError(f"the LM has {len(layers)} layers, the adapter was built for {self.info.num_layers}")
        for i in range(self.num_layers):
            attn = layers[self.first_layer + i].self_attn
            self._handles.append(attn.register_forward_hook(self._hook(i), with_kwargs=True))

    @contextlib.contextmanager
    def condition(self, visual: torch.Tensor | None) -> Iterator[None]:
        """LM calls inside see ``visual [N, K, H]`` added to the prompts (prompt keys/values computed once)."""
        if visual is not None and tuple(visual.shape[1:]) != (self.prompt_len, self.info.hidden_size):
            raise ValueError(f"visual query of shape {tuple(visual.shape)}; expected [N, {self.prompt_len}, "
                             f"{self.info.hidden_size}]")
        self._visual, self._kv = visual, {}
        try:
            yield
        finally:
            self._visual, self._kv = None, {}

    def _prompt_kv(self, i: int, attn: nn.Module, batch: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of layer i's prompts ``[N, heads, K, d]`` (cached for the current conditioning)."""
        if i not in self._kv:
            p = self.prompts[i].to(dtype)
            p = p[None] + self._visual.to(dtype) if self._visual is not None else p[None].expand(batch, -1, -1)
            n, K, d = p.shape[0], self.prompt_len, self.info.head_dim
            k = attn.k_proj(p).view(n, K, self.info.num_kv_heads, d).transpose(1, 2)
            v = attn.v_proj(p).view(n, K, self.info.num_kv_heads, d).transpose(1, 2)
            groups = self.info.num_heads // self.info.num_kv_heads
            self._kv[i] = (k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1))
        return self._kv[i]

    def _hook(self, i: int):
        def hook(attn: nn.Module, args, kwargs, output):
            h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            cos, sin = kwargs["position_embeddings"]
            B, T, _ = h.shape
            nh, d = self.info.num_heads, self.info.head_dim
            q = _rope(attn.q_proj(h).view(B, T, nh, d).transpose(1, 2), cos, sin)  # [B, nh, T, d]
            k, v = self._prompt_kv(i, attn, B, q.dtype)
            if k.shape[0] != B:
                raise ValueError(f"the LM's batch has {B} sequences but the adapter was conditioned on "
                                 f"{k.shape[0]} visual queries")
            probs = torch.softmax((q @ k.transpose(-1, -2)).float() * d ** -0.5, dim=-1).to(q.dtype)
            gate = torch.tanh(self.gates[i]).to(q.dtype).view(1, nh, 1, 1)
            extra = ((gate * probs) @ v).transpose(1, 2).reshape(B, T, nh * d)
            out, weights = output
            return out + attn.o_proj(extra), weights

        return hook


class LoRAAdapter(nn.Module):
    """LoRA on the projections ``targets`` (e.g. ``("q_proj", "v_proj")``) of every decoder layer.

    Args:
        info: the LM's sizes; ``rank``, ``alpha``: the update is ``(alpha / rank) B A x``; ``prefix_len``: K, the
        visual query's tokens, prepended to the input embeddings.
    """

    def __init__(self, info: LMInfo, rank: int, alpha: float, targets: tuple[str, ...], prefix_len: int):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.info, self.rank, self.scale, self.targets = info, rank, alpha / rank, tuple(targets)
        self._prefix_len = prefix_len
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self._handles: list = []

    @property
    def prefix_len(self) -> int:
        return self._prefix_len

    def attach(self, lm: nn.Module) -> None:
        if self._handles:
            raise RuntimeError("LoRAAdapter.attach: already attached")
        build = len(self.lora_A) == 0
        for li, layer in enumerate(decoder_layers(lm)):
            for name in self.targets:
                lin = getattr(layer.self_attn, name, None) or getattr(layer.mlp, name, None)
                if not isinstance(lin, nn.Linear):
                    raise ValueError(f"LoRA target {name!r} is not a linear layer of the LM's attention or MLP")
                key = f"{li}_{name}"
                if build:
                    a = torch.empty(self.rank, lin.in_features, device=lin.weight.device)
                    nn.init.kaiming_uniform_(a, a=math.sqrt(5))
                    self.lora_A[key] = nn.Parameter(a)
                    self.lora_B[key] = nn.Parameter(torch.zeros(lin.out_features, self.rank, device=a.device))
                self._handles.append(lin.register_forward_hook(self._hook(key)))

    @contextlib.contextmanager
    def condition(self, visual: torch.Tensor | None) -> Iterator[None]:
        yield  # the visual query is a prefix of the inputs (see TOD3CapCaptioner), nothing to set here

    def _hook(self, key: str):
        def hook(lin: nn.Module, args, output):
            x = args[0]
            a, b = self.lora_A[key].to(x.dtype), self.lora_B[key].to(x.dtype)
            return output + (x @ a.t() @ b.t()) * self.scale

        return hook
