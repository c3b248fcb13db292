"""Tiny language models for tests where the real weights are not the point: a word-level tokenizer over a few
sentences and a randomly initialised Llama of a few layers, optionally saved as a local model folder."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from bevbridge.models.language.conditioned_lm import ALPACA_TEMPLATE, INSTRUCTION

WORDS = ("a an the car truck bus trailer pedestrian barrier traffic cone motorcycle bicycle construction vehicle "
         "red blue orange yellow white black grey is parked moving in front back left right of ego about meters "
         "away on road at side there it standing still walking")


def tiny_tokenizer(extra_text: str = ""):
    """A word-level fast tokenizer (whitespace + punctuation split) over the prompt, WORDS and ``extra_text``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    text = " ".join([ALPACA_TEMPLATE.format(instruction=INSTRUCTION), WORDS, extra_text])
    words = sorted(set(re.findall(r"\w+|[^\w\s]", text)))
    vocab = {"<unk>": 0, "<bos>": 1, "<eos>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<eos>")


def tiny_llama(vocab_size: int, hidden: int = 64, layers: int = 4, heads: int = 4, kv_heads: int = 2, seed: int = 0,
               init_std: float = 0.02):
    """A random Llama; ``init_std`` above transformers' 0.02 gives an output head able to express peaked
    distributions (random 0.02 embeddings cap the logit gaps near 1, so no caption can be fitted)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=512, tie_word_embeddings=True, initializer_range=init_std, bos_token_id=1, eos_token_id=2,
                      pad_token_id=2)
    return LlamaForCausalLM(cfg).eval()


def tiny_lm_folder(root: Path, extra_text: str = "", **kw) -> Path:
    """A local model folder (config.json, model.safetensors, tokenizer) holding a tiny random Llama."""
    tok = tiny_tokenizer(extra_text)
    lm = tiny_llama(len(tok), **kw)
    root.mkdir(parents=True, exist_ok=True)
    lm.save_pretrained(root, safe_serialization=True)
    tok.save_pretrained(root)
    return root
