"""TOD3Cap-format captions: one JSON keyed by sample_annotation token, each value holding ``final_caption``."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["load_captions"]


def load_captions(dataroot: str | Path, path: str | Path) -> dict[str, str]:
    """``{annotation token: caption}`` from ``path`` (absolute, or relative to ``dataroot``)."""
    p = Path(path)
    if not p.is_absolute():
        p = Path(dataroot) / p
    if not p.is_file():
        raise FileNotFoundError(f"caption file not found: {p} (a TOD3Cap-format JSON keyed by annotation token)")
    data = json.loads(p.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a JSON object keyed by sample_annotation token, got {type(data).__name__}")
    out = {}
    for token, rec in data.items():
        caption = rec.get("final_caption") if isinstance(rec, dict) else rec
        if not isinstance(caption, str):
            raise ValueError(f"{p}: entry {token!r} has no string 'final_caption'")
        out[token] = caption
    return out
