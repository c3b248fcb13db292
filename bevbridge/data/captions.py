"""TOD3Cap-format captions: one JSON object keyed by sample_annotation token, each value holding ``final_caption``.

The real file (TOD3Cap's ``final_caption_bbox_token.json``) is about 1.5 GB of JSON for 2.3M descriptions. Reading it
whole (``json.load``) costs several GB of Python objects per process, in every torchrun rank and, through reference
counts touching the pages, slowly in every loader worker. So a dataset never holds the file: it opens a
:class:`CaptionTable`, the captions of exactly the annotations of its split, as flat numpy arrays (sorted token bytes,
offsets, UTF-8 text), which costs about the caption text itself and is shared between forked workers untouched.

The table is built once by streaming the JSON (:func:`iter_caption_file`, a few MB of buffer whatever the file's
size) with a progress bar, and cached beside the info cache (``$BEVBRIDGE_CACHE_DIR``), keyed by the dataroot, the
version, the split, the caption file (path, size, modification time) and the schema below; a changed caption file or
split makes a new table. Building happens under an exclusive lock, so concurrent ranks build it once.
(benchmarks/RESULTS.md, "Caption file": peak memory of both ways on a generated 1.5 GB file.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
import zlib
from pathlib import Path
from typing import Iterator, TextIO

import numpy as np

from bevbridge.atomic import atomic_path, exclusive_lock
from bevbridge.log import progress

__all__ = ["IGNORED_CAPTION", "CAPTION_SCHEMA", "caption_file_path", "iter_caption_file", "load_captions",
           "CaptionTable", "build_caption_table", "open_caption_table"]

log = logging.getLogger(__name__)

IGNORED_CAPTION = "The object is ignored"  # TOD3Cap's caption for an annotation the file does not describe
CAPTION_SCHEMA = 1
_CHUNK = 1 << 22  # characters read at a time while streaming


def caption_file_path(dataroot: str | Path, path: str | Path) -> Path:
    """``path`` (absolute, or relative to ``dataroot``), checked to exist."""
    p = Path(path)
    if not p.is_absolute():
        p = Path(dataroot) / p
    if not p.is_file():
        raise FileNotFoundError(f"caption file not found: {p} (a TOD3Cap-format JSON keyed by annotation token; "
                                f"data.captions)")
    return p


def _caption_of(path: Path, token: str, rec) -> str:
    caption = rec.get("final_caption") if isinstance(rec, dict) else rec
    if not isinstance(caption, str):
        raise ValueError(f"{path}: entry {token!r} has no string 'final_caption'")
    return caption


def iter_caption_file(path: str | Path, bar=None) -> Iterator[tuple[str, str]]:
    """``(annotation token, caption)`` pairs of a TOD3Cap JSON, streamed: the top-level object is read entry by
    entry with ``json.JSONDecoder.raw_decode`` over a sliding buffer, so memory stays at a few MB. ``bar``: a
    progress bar advanced by the characters consumed."""
    path = Path(path)
    dec = json.JSONDecoder()
    with open(path, encoding="utf-8") as f:
        reader = _Buffer(f, bar)
        reader.skip_ws()
        if reader.peek() != "{":
            raise ValueError(f"{path}: expected a JSON object keyed by sample_annotation token (it starts with "
                             f"{reader.peek()!r})")
        reader.pos += 1
        reader.skip_ws()
        if reader.peek() == "}":
            return
        while True:
            token = reader.decode(dec, path)
            if not isinstance(token, str):
                raise ValueError(f"{path}: keys must be annotation tokens (strings)")
            reader.skip_ws()
            reader.expect(":", path)
            reader.skip_ws()
            rec = reader.decode(dec, path)
            yield token, _caption_of(path, token, rec)
            reader.skip_ws()
            c = reader.peek()
            reader.pos += 1
            if c == "}":
                return
            if c != ",":
                raise ValueError(f"{path}: malformed JSON after entry {token!r} (found {c!r}, expected ',' or '}}')")
            reader.skip_ws()


class _Buffer:
    """A window over a text file for :func:`iter_caption_file`."""

    def __init__(self, f: TextIO, bar):
        self.f, self.bar = f, bar
        self.buf, self.pos, self.eof = "", 0, False

    def _more(self, need: int = _CHUNK) -> bool:
        if self.eof:
            return False
        if self.bar is not None and self.pos:
            self.bar.update(self.pos)
        self.buf = self.buf[self.pos:] + (chunk := self.f.read(max(need, _CHUNK)))
        self.pos = 0
        self.eof = not chunk
        return bool(chunk)

    def peek(self) -> str:
        while self.pos >= len(self.buf):
            if not self._more():
                return ""
        return self.buf[self.pos]

    def skip_ws(self) -> None:
        while self.peek() in " \t\r\n" and self.peek():
            self.pos += 1

    def expect(self, c: str, path: Path) -> None:
        if self.peek() != c:
            raise ValueError(f"{path}: malformed JSON (expected {c!r}, found {self.peek()!r})")
        self.pos += 1

    def decode(self, dec: json.JSONDecoder, path: Path):
        """The next JSON value; reads more when the value may continue past the buffer's end."""
        while True:
            try:
                value, end = dec.raw_decode(self.buf, self.pos)
                if end < len(self.buf) or self.eof:  # a value ending at the buffer's edge may be cut (a number)
                    self.pos = end
                    return value
            except json.JSONDecodeError as e:
                if self.eof:
                    raise ValueError(f"{path}: malformed JSON ({e.msg} near character {e.pos})") from None
            self._more(2 * (len(self.buf) - self.pos))


def load_captions(dataroot: str | Path, path: str | Path) -> dict[str, str]:
    """``{annotation token: caption}`` of a whole caption file, streamed (small files, tests and tools; datasets
    use :func:`open_caption_table`)."""
    p = caption_file_path(dataroot, path)
    return dict(iter_caption_file(p))


class CaptionTable:
    """Captions of some annotation tokens as flat arrays: ``tokens`` (sorted bytes), ``offsets [n + 1]``,
    ``text`` (uint8, UTF-8). ``table.get(token)`` -> the caption or None."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, text: np.ndarray, meta: dict):
        self.tokens, self.offsets, self.text, self.meta = tokens, offsets, text, meta

    @classmethod
    def from_pairs(cls, pairs: dict[bytes, bytes], meta: dict) -> CaptionTable:
        keys = sorted(pairs)
        lengths = np.fromiter((len(pairs[k]) for k in keys), np.int64, len(keys))
        offsets = np.zeros(len(keys) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        text = np.frombuffer(b"".join(pairs[k] for k in keys), np.uint8) if keys else np.zeros(0, np.uint8)
        tokens = np.array(keys, dtype=bytes) if keys else np.zeros(0, "S1")
        return cls(tokens, offsets, text, meta)

    def __len__(self) -> int:
        return len(self.tokens)

    def get(self, token: str) -> str | None:
        key = token.encode()
        i = int(np.searchsorted(self.tokens, key))
        if i >= len(self.tokens) or self.tokens[i] != key:
            return None
        return bytes(self.text[self.offsets[i]:self.offsets[i + 1]]).decode("utf-8")

    def nbytes(self) -> int:
        return self.tokens.nbytes + self.offsets.nbytes + self.text.nbytes

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, meta=np.array(json.dumps(self.meta)), tokens=self.tokens, offsets=self.offsets,
                         text=self.text)

    @classmethod
    def load(cls, path: Path) -> CaptionTable:
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["tokens"], z["offsets"], z["text"], json.loads(str(z["meta"])))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise ValueError(f"caption table {path} is unreadable ({type(e).__name__}: {e})") from e


def build_caption_table(path: str | Path, tokens: np.ndarray | list[str], meta: dict | None = None) -> CaptionTable:
    """Stream the caption file once and keep the captions of ``tokens`` (annotation tokens; missing ones are simply
    absent from the table)."""
    path = Path(path)
    want = {t if isinstance(t, bytes) else str(t).encode() for t in tokens}
    kept: dict[bytes, bytes] = {}
    bar = progress(total=path.stat().st_size, desc=f"captions {path.name}", unit="B", unit_scale=True)
    try:
        for token, caption in iter_caption_file(path, bar):
            key = token.encode()
            if key in want:
                kept[key] = caption.encode("utf-8")
    finally:
        bar.close()
    return CaptionTable.from_pairs(kept, meta or {})


def _cache_path(dataroot: Path, version: str, split: str, caption_file: Path, tokens: np.ndarray) -> Path:
    st = caption_file.stat()
    h = hashlib.sha1(f"{caption_file.resolve()}|{st.st_size}|{st.st_mtime_ns}|{CAPTION_SCHEMA}".encode())
    h.update(b"\0".join(np.sort(np.asarray(tokens, dtype=bytes)).tolist()))
    base = Path(os.environ.get("BEVBRIDGE_CACHE_DIR") or Path.home() / ".cache" / "bevbridge")
    root = hashlib.sha1(str(dataroot.resolve()).encode()).hexdigest()[:12]
    safe_split = "".join(c if c.isalnum() or c in "-_" else "_" for c in split)
    return base / f"{version}_{root}_captions_{safe_split}_{h.hexdigest()[:12]}_v{CAPTION_SCHEMA}.npz"


def open_caption_table(dataroot: str | Path, version: str, split: str, caption_path: str | Path,
                       tokens: np.ndarray) -> CaptionTable:
    """The captions of ``tokens`` (the split's annotation tokens) from ``caption_path``: loaded from the cache, or
    built once (streamed, progress bar, under a lock) when missing or unreadable (see the module docstring)."""
    dataroot = Path(dataroot)
    src = caption_file_path(dataroot, caption_path)
    cache = _cache_path(dataroot, version, split, src, tokens)

    def attempt() -> CaptionTable | None:
        if not cache.is_file():
            return None
        try:
            return CaptionTable.load(cache)
        except ValueError as e:
            log.warning("%s: rebuilding it", e)
            return None

    table = attempt()
    if table is not None:
        return table
    cache.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(cache.with_name(cache.name + ".lock"), f"waiting for another process to build {cache}"):
        table = attempt()
        if table is None:
            log.info("caption table for %s/%s missing: streaming %s once (%.2f GB) -> %s", version, split, src,
                     src.stat().st_size / 1e9, cache)
            table = build_caption_table(src, tokens, {"schema": CAPTION_SCHEMA, "version": version, "split": split,
                                                      "source": str(src)})
            table.save(cache)
            log.info("caption table: %d of %d annotations of %s described (%.1f MB)", len(table), len(tokens),
                     split, table.nbytes() / 1e6)
    return table
