"""The TOD3Cap caption file: streamed once into a per-split table of flat arrays (bevbridge/data/captions.py)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

import bevbridge.data.captions as captions_module
from bevbridge.data.captions import (IGNORED_CAPTION, CaptionTable, build_caption_table, iter_caption_file,
                                     open_caption_table)
from bevbridge.data.nuscenes import NuScenesDataset


def _write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_streaming_reader_equals_json_load_across_buffer_boundaries(tmp_path, monkeypatch):
    """Would catch: entries cut at a buffer boundary (a caption or token split in two), escapes and non-ASCII text
    mangled, other fields mistaken for the caption, or the last entry lost."""
    monkeypatch.setattr(captions_module, "_CHUNK", 7)  # every value crosses a boundary
    data = {f"{i:032x}": {"attribute_caption": "x" * i, "final_caption": f"A \"red\" car\\n {i} – café {'é' * i}",
                          "num": 12345.5 + i, "nested": {"a": [1, 2, {"b": "}"}]}} for i in range(40)}
    path = _write(tmp_path / "caps.json", json.dumps(data, indent=1, ensure_ascii=False))
    got = dict(iter_caption_file(path))
    assert got == {k: v["final_caption"] for k, v in data.items()}
    compact = _write(tmp_path / "compact.json", json.dumps({"t": "plain string caption", "u": {"final_caption": ""}}))
    assert dict(iter_caption_file(compact)) == {"t": "plain string caption", "u": ""}
    assert dict(iter_caption_file(_write(tmp_path / "empty.json", " { } "))) == {}


@pytest.mark.parametrize("text, match", [("[1, 2]", "expected a JSON object"),
                                         ('{"a": {"final_caption": "x"} "b": 1}', "malformed JSON"),
                                         ('{"a": {"other": "x"}}', "entry 'a' has no string 'final_caption'"),
                                         ('{"a": {"final_caption": "x"', "malformed JSON")])
def test_a_bad_caption_file_is_one_line_naming_it(tmp_path, text, match):
    """Would catch: a truncated or malformed file read as fewer captions without a word."""
    path = _write(tmp_path / "bad.json", text)
    with pytest.raises(ValueError, match=match) as e:
        list(iter_caption_file(path))
    assert "bad.json" in str(e.value) and "\n" not in str(e.value)


def test_table_keeps_only_the_tokens_asked_for(tmp_path):
    """Would catch: the whole file kept (the memory problem this solves), or lookups off by one in the sorted
    token array."""
    data = {f"tok{i:03d}": {"final_caption": f"caption {i}"} for i in range(100)}
    path = _write(tmp_path / "caps.json", json.dumps(data))
    want = [f"tok{i:03d}" for i in range(0, 100, 7)] + ["absent"]
    table = build_caption_table(path, np.array([w.encode() for w in want]))
    assert len(table) == 15 and table.get("tok007") == "caption 7" and table.get("tok098") == "caption 98"
    assert table.get("tok001") is None and table.get("absent") is None and table.get("zzz") is None
    table.save(tmp_path / "t.npz")
    again = CaptionTable.load(tmp_path / "t.npz")
    assert [again.get(w) for w in want] == [table.get(w) for w in want]


def test_dataset_captions_come_from_the_split_table_built_once(synth_world, caplog):
    """Would catch: captions paired with the wrong boxes, annotations outside the split kept, missing captions not
    replaced by TOD3Cap's placeholder, or the file streamed again on every open."""
    rel = f"{synth_world.version}/final_caption_bbox_token.json"
    full = json.loads((synth_world.dataroot / rel).read_text())
    with caplog.at_level(logging.INFO, logger="bevbridge"):
        ds = NuScenesDataset(synth_world.dataroot, synth_world.version, synth_world.val_split, image_size=(36, 64),
                             radar_sweeps=0, lidar_sweeps=1, captions=rel)
    assert "streaming" in caplog.text
    s = ds[0]
    info = ds.samples[0]
    kept = [t for t, lab, n in zip(info["anns"]["tokens"], info["anns"]["label"], info["anns"]["num_pts"])
            if lab >= 0 and n.sum() >= 1]
    assert s.captions == [full[t]["final_caption"] if t in full else IGNORED_CAPTION for t in kept]
    split_tokens = {t for v in ds.samples for t in v["anns"]["tokens"]}
    assert len(ds._captions) == len(split_tokens & set(full)) < len(full)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bevbridge"):
        NuScenesDataset(synth_world.dataroot, synth_world.version, synth_world.val_split, image_size=(36, 64),
                        radar_sweeps=0, lidar_sweeps=1, captions=rel)
    assert "streaming" not in caplog.text
    table = open_caption_table(synth_world.dataroot, synth_world.version, synth_world.val_split, rel,
                               np.array(sorted(t.encode() for t in split_tokens)))
    assert len(table) == len(ds._captions)
