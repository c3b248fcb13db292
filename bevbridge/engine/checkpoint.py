"""Checkpoints: weights as safetensors, training state as a tensors-only file, written atomically.

A checkpoint is a folder ``<run>/checkpoints/step_00001000/`` holding

- ``model.safetensors``: the model's state dict (what ``bevbridge eval/infer --ckpt`` and ``model.init_from`` read);
- ``ema.safetensors``: the EMA weights, when train.ema is on;
- ``state.pt``: everything else needed to resume: step, epoch and position in it, optimizer, schedule, EMA counter,
  GradScaler, every rank's RNG states, best metric. Only tensors, numbers, strings, lists and dicts, so it loads with
  ``torch.load(weights_only=True)``; nothing is unpickled.

The folder is written under a temporary name and renamed into place once every file is complete and fsynced, so a
kill at any moment leaves the previous checkpoints intact and never a half-written one under a real name; leftover
temporary folders are removed by the next save. Only the last ``keep_last`` checkpoints and the best one are kept.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from bevbridge.atomic import atomic_write_text

__all__ = ["CheckpointManager", "read_weights", "read_state", "load_pretrained", "LoadReport", "checkpoint_dir_of",
           "to_cpu_contiguous"]

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "state.pt"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def to_cpu_contiguous(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of ``state`` that ``safetensors.torch.save_file`` accepts: CPU, contiguous, no shared storage."""
    # clone: safetensors refuses tensors that share storage (tied weights); the copy is on the CPU anyway
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_complete(d: Path) -> bool:
    return (d / MODEL_FILE).is_file() and (d / STATE_FILE).is_file()


class CheckpointManager:
    """Writes, lists and prunes the checkpoints of one run (``<run>/checkpoints``)."""

    def __init__(self, root: str | os.PathLike, keep_last: int = 3):
        self.root = Path(root)
        self.keep_last = keep_last

    def path(self, step: int) -> Path:
        return self.root / f"step_{step:08d}"

    def all(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), d) for d in self.root.iterdir() if (m := _STEP_DIR.match(d.name)) and d.is_dir()]
        return [d for _, d in sorted(found) if _is_complete(d)]

    def latest(self) -> Path | None:
        ckpts = self.all()
        return ckpts[-1] if ckpts else None

    def best(self) -> dict | None:
        p = self.root / "best.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def set_best(self, step: int, metric: str, value: float) -> None:
        atomic_write_text(self.root / "best.json",
                          json.dumps({"step": step, "checkpoint": self.path(step).name, "metric": metric,
                                      "value": value}, indent=1) + "\n")

    def save(self, step: int, model_state: Mapping[str, torch.Tensor], state: dict[str, Any],
             ema_state: Mapping[str, torch.Tensor] | None = None) -> Path:
        """Write checkpoint ``step`` atomically and prune old ones; returns its folder."""
        final = self.path(step)
        if _is_complete(final):
            log.debug("checkpoint %s already exists; not rewritten", final)
            return final
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(".step_*.tmp*"):  # left by a kill during an earlier save
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp", dir=self.root))
        try:
            meta = {"step": str(step), "format": "bevbridge"}
            save_file(to_cpu_contiguous(model_state), tmp / MODEL_FILE, metadata=meta)
            if ema_state is not None:
                save_file(to_cpu_contiguous(ema_state), tmp / EMA_FILE, metadata={**meta, "ema": "1"})
            torch.save(state, tmp / STATE_FILE)
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            if final.exists():  # an incomplete folder under the real name (not written by this code): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.prune()
        return final

    def prune(self) -> None:
        best = self.best()
        keep = {best["checkpoint"]} if best else set()
        ckpts = self.all()
        keep |= {d.name for d in ckpts[-self.keep_last:]}
        for d in ckpts:
            if d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)


def checkpoint_dir_of(path: str | os.PathLike) -> Path:
    """The checkpoint folder named by ``path``: a checkpoint folder, a run folder (its latest) or a file in one."""
    p = Path(path)
    if p.is_file() and p.parent.name.startswith("step_"):
        p = p.parent
    if p.is_dir() and not _is_complete(p):
        latest = CheckpointManager(p / "checkpoints" if (p / "checkpoints").is_dir() else p).latest()
        if latest is None:
            raise FileNotFoundError(f"{p}: no complete checkpoint here (expected {MODEL_FILE} and {STATE_FILE}, "
                                    f"or checkpoints/step_*/)")
        p = latest
    if not p.is_dir():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    return p


def read_state(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """The training state of a checkpoint folder, loaded with weights_only=True."""
    return torch.load(Path(ckpt_dir) / STATE_FILE, map_location="cpu", weights_only=True)


def read_weights(path: str | os.PathLike, prefer_ema: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    """A state dict from a checkpoint folder (its EMA weights if asked and present), a .safetensors file, or a torch
    file loadable with weights_only=True (its ``state_dict`` or ``model`` entry if it has one). Returns (state, what).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"weights not found: {p}")
    if p.is_dir():
        d = checkpoint_dir_of(p)
        f = d / EMA_FILE if prefer_ema and (d / EMA_FILE).is_file() else d / MODEL_FILE
        return load_file(f), str(f)
    if p.suffix == ".safetensors":
        return load_file(p), str(p)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"{p}: not a safetensors file nor a torch state dict loadable with weights_only=True "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{p}: expected a mapping of parameter names to tensors")
    return obj, str(p)


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file (after renaming), not in the model
    mismatched: list[str] = field(default_factory=list)  # in both, different shapes: left at the model's init


def _rename(key: str, prefix_map: Mapping[str, str]) -> str:
    for old in sorted(prefix_map, key=len, reverse=True):
        if key.startswith(old):
            return prefix_map[old] + key[len(old):]
    return key


def load_pretrained(model: nn.Module, path: str | os.PathLike, prefix_map: Mapping[str, str] | None = None,
                    ) -> LoadReport:
    """Load pretrained weights into ``model`` non-strictly, renaming key prefixes first; log what did not match."""
    state, source = read_weights(path)
    state = {_rename(k, prefix_map or {}): v for k, v in state.items()}
    own = model.state_dict()
    rep = LoadReport()
    usable = {}
    for k, v in state.items():
        if k not in own:
            rep.unexpected.append(k)
        elif own[k].shape != v.shape:
            rep.mismatched.append(f"{k} (file {tuple(v.shape)}, model {tuple(own[k].shape)})")
        else:
            usable[k] = v
    rep.missing = [k for k in own if k not in state]
    model.load_state_dict(usable, strict=False)
    rep.loaded = sorted(usable)
    log.info("init_from %s: loaded %d of %d model tensors; %d missing, %d unexpected, %d shape-mismatched",
             source, len(rep.loaded), len(own), len(rep.missing), len(rep.unexpected), len(rep.mismatched))
    for name, keys in (("missing", rep.missing), ("unexpected", rep.unexpected), ("shape-mismatched", rep.mismatched)):
        if keys:
            more = f" ... (+{len(keys) - 10} more)" if len(keys) > 10 else ""
            log.warning("init_from: %s keys: %s%s", name, ", ".join(keys[:10]), more)
    return rep
