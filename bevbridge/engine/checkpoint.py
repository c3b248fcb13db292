"""Checkpoints: weights as safetensors, training state as a tensors-only file, written atomically.

A checkpoint is a folder ``<run>/checkpoints/step_00001000/`` holding (layout and reading: bevbridge/weights.py)

- ``model.safetensors``: the model's state dict, tagged with its ``kind`` (what ``bevbridge eval/infer --ckpt`` and
  ``model.init_from`` read); weights of frozen modules marked ``in_checkpoint=False`` (a language model rebuilt
  from its own file) are left out (bevbridge/models/freeze.py);
- ``ema.safetensors``: the EMA weights, when train.ema is on;
- for a training recipe, ``deployable.safetensors`` (+ ``deployable_ema.safetensors``): the deployable model under
  its own keys and kind, so the deployed model's config evaluates the run directly;
- ``state.pt``: everything else needed to resume: step, epoch and position in it, optimizer, schedule, EMA counter,
  GradScaler, every rank's RNG states, best metric. Only tensors, numbers, strings, lists and dicts, so it loads with
  ``torch.load(weights_only=True)``; nothing is unpickled.

The folder is written under a temporary name and renamed into place once every file is complete and fsynced, so a
kill at any moment leaves the previous checkpoints intact and never a half-written one under a real name; leftover
temporary folders are removed by the next save. Folders and files follow the umask (0755/0644 under umask 022), like
bevbridge/atomic.py. Only the last ``keep_last`` checkpoints and the best one are kept.

Checkpoints are never overwritten nor mixed: saving a step that already has a checkpoint (one of an abandoned
trajectory), or resuming from an older checkpoint (engine/resume.py), moves the old folders (and a ``best.json``
pointing at one of them) into ``checkpoints/retired-<time>/``, which nothing reads; delete it when you are sure.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from bevbridge.atomic import atomic_write_text
from bevbridge.models.freeze import checkpoint_excluded_prefixes, checkpoint_state_dict, missing_checkpoint_keys
from bevbridge.weights import (DEPLOY_EMA_FILE, DEPLOY_FILE, EMA_FILE, MODEL_FILE, STATE_FILE, CorruptWeightsError,
                               checkpoint_dir_of, list_checkpoints, save_weights)

__all__ = ["CheckpointManager", "ModelWeights", "model_weights", "read_state", "checkpoint_dir_of", "step_of",
           "RETIRED_PREFIX"]

log = logging.getLogger(__name__)

RETIRED_PREFIX = "retired-"


@dataclass
class ModelWeights:
    """What a checkpoint writes of a model: its state (without excluded frozen weights), its kind, and for a recipe
    its deployable model's kind and key prefix (the deployable state is ``state`` under that prefix, re-keyed)."""

    state: dict[str, torch.Tensor]
    kind: str | None
    excluded: tuple[str, ...] = ()
    deployable_kind: str | None = None
    deployable_prefix: str | None = None

    def metadata(self) -> dict[str, str]:
        meta = {"format": "bevbridge"}
        if self.kind is not None:
            meta["kind"] = self.kind
        if self.excluded:
            meta["excluded_frozen"] = ",".join(self.excluded)
        return meta

    def deployable(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        p = self.deployable_prefix or ""
        return {k[len(p):]: v for k, v in state.items() if k.startswith(p)}


def model_weights(model: nn.Module, state: Mapping[str, torch.Tensor] | None = None) -> ModelWeights:
    """The :class:`ModelWeights` of ``model`` (``state``: another state of the same model, e.g. its EMA)."""
    excluded = checkpoint_excluded_prefixes(model)
    if state is None:
        state = checkpoint_state_dict(model)
    else:
        state = {k: v for k, v in state.items() if not (excluded and k.startswith(excluded))}
    attr = getattr(model, "deployable_attr", None)
    dep = getattr(model, attr) if attr else None
    return ModelWeights(dict(state), getattr(model, "kind", None), excluded,
                        getattr(dep, "kind", None) if dep is not None else None, f"{attr}." if attr else None)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def step_of(ckpt: Path) -> int:
    """The step of a checkpoint folder ``step_00001000``."""
    return int(ckpt.name.split("_")[-1])


class CheckpointManager:
    """Writes, lists, prunes and retires the checkpoints of one run (``<run>/checkpoints``).

    ``on_write(event, path)``, if set, is called after each file of a checkpoint is written into the temporary
    folder (``"file"``, its path) and after the folder is renamed into place (``"complete"``, the folder): the
    fault-injection tests kill the process there, deterministically.
    """

    def __init__(self, root: str | os.PathLike, keep_last: int = 3):
        self.root = Path(root)
        self.keep_last = keep_last
        self.on_write: Callable[[str, Path], None] | None = None

    def path(self, step: int) -> Path:
        return self.root / f"step_{step:08d}"

    def all(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        return list_checkpoints(self.root)

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

    def retire(self, folders: Iterable[Path], best: bool = False) -> Path | None:
        """Move checkpoint ``folders`` (and ``best.json`` if ``best``) into a new ``retired-<time>/`` folder, which
        nothing reads; returns it (None if there was nothing to move)."""
        folders = [Path(f) for f in folders if Path(f).exists()]
        best_file = self.root / "best.json"
        if not folders and not (best and best_file.is_file()):
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        dest = self.root / f"{RETIRED_PREFIX}{stamp}"
        n = 1
        while dest.exists():
            n += 1
            dest = self.root / f"{RETIRED_PREFIX}{stamp}-{n}"
        dest.mkdir()
        for f in folders:
            os.replace(f, dest / f.name)
        if best and best_file.is_file():
            os.replace(best_file, dest / best_file.name)
        _fsync_dir(self.root)
        return dest

    def save(self, step: int, weights: ModelWeights, state: dict[str, Any],
             ema_state: Mapping[str, torch.Tensor] | None = None) -> Path:
        """Write checkpoint ``step`` atomically and prune old ones; returns its folder."""
        final = self.path(step)
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(".step_*.tmp*"):  # left by a kill during an earlier save
            shutil.rmtree(stale, ignore_errors=True)
        tmp = self.root / f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir(mode=0o777)  # the umask applies (tempfile.mkdtemp would make it 0700)
        try:
            meta = {**weights.metadata(), "step": str(step)}
            files = [(tmp / MODEL_FILE, weights.state, meta)]
            if ema_state is not None:
                ema_state = {k: v for k, v in ema_state.items() if k in weights.state}
                files.append((tmp / EMA_FILE, ema_state, {**meta, "ema": "1"}))
            if weights.deployable_prefix is not None:
                dmeta = {"format": "bevbridge", "kind": str(weights.deployable_kind), "step": str(step),
                         "from_kind": str(weights.kind)}
                files.append((tmp / DEPLOY_FILE, weights.deployable(weights.state), dmeta))
                if ema_state is not None:
                    files.append((tmp / DEPLOY_EMA_FILE, weights.deployable(ema_state), {**dmeta, "ema": "1"}))
            for path, tensors, file_meta in files:
                save_weights(path, tensors, file_meta, atomic=False)
                self._event("file", path)
            torch.save(state, tmp / STATE_FILE)
            self._event("file", tmp / STATE_FILE)
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            if final.exists():  # a checkpoint of an abandoned trajectory (or a folder not written here): set aside
                where = self.retire([final])
                log.warning("%s already existed (not from this trajectory); moved to %s", final, where)
            os.replace(tmp, final)
            _fsync_dir(self.root)
            self._event("complete", final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.prune()
        return final

    def _event(self, event: str, path: Path) -> None:
        if self.on_write is not None:
            self.on_write(event, path)

    def prune(self) -> None:
        best = self.best()
        keep = {best["checkpoint"]} if best else set()
        ckpts = self.all()
        keep |= {d.name for d in ckpts[-self.keep_last:]}
        for d in ckpts:
            if d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)


def read_state(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """The training state of a checkpoint folder, loaded with weights_only=True; CorruptWeightsError (naming the
    file) if it cannot be read."""
    path = Path(ckpt_dir) / STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated zip (RuntimeError), empty file (EOFError), unpickling...
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CorruptWeightsError(path, f"corrupt or truncated training state ({type(e).__name__}"
                                        f"{': ' + first[:120] if first else ''})") from None
    if not isinstance(state, dict):
        raise CorruptWeightsError(path, f"not a training state (a {type(state).__name__}, not a dict)")
    return state


def load_model_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load a checkpoint's weights into ``model`` strictly, except the frozen modules checkpoints leave out.

    Raises ValueError naming ``source`` and the first differing keys when the weights do not fit the model.
    """
    own = model.state_dict()
    missing = missing_checkpoint_keys(model, state)
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in state if k in own and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{name} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
                 for name, keys in (("missing", missing), ("unexpected", unexpected), ("other shapes:", shapes))
                 if keys]
        raise ValueError(f"{source}: the weights do not fit this model: {'; '.join(parts)}")
    model.load_state_dict(dict(state), strict=False)
