"""Weight files: reading and writing state dicts, the checkpoint folder's layout, and pretrained initialisation.

Used by the engine (checkpoints, ``--ckpt``, ``model.init_from``) and by the models' converters of published
checkpoints (bevbridge/models/ctab/rcbevdet_weights.py), so it imports nothing of either.

A checkpoint folder ``<run>/checkpoints/step_00001000/`` holds (engine/checkpoint.py writes it):

=============================  ==============================================================================
``model.safetensors``          the trained model's state dict (metadata ``kind``: its ``model.kind``)
``ema.safetensors``            its EMA weights, when train.ema is on
``deployable.safetensors``     for a training recipe (BridgeTA, MTA): the deployable model alone, under its own
                               keys (metadata ``kind``: the deployable model's kind), so that ``bevbridge eval``
                               with the deployed model's config loads a recipe's run directly
``deployable_ema.safetensors`` the same from the EMA weights
``state.pt``                   the training state (engine/checkpoint.py)
=============================  ==============================================================================

Weights are safetensors; a torch file is read only with ``weights_only=True``: nothing is unpickled. A weights file
that cannot be read (truncated by a full disk or a copy cut short, or not a weights file at all) raises
:class:`CorruptWeightsError`, one line naming the file; the caller adds what to do about it.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from bevbridge.atomic import atomic_path
from bevbridge.models.freeze import missing_checkpoint_keys

__all__ = ["MODEL_FILE", "EMA_FILE", "DEPLOY_FILE", "DEPLOY_EMA_FILE", "STATE_FILE", "CorruptWeightsError",
           "to_cpu_contiguous", "save_weights", "load_safetensors", "weights_kind", "is_complete_checkpoint",
           "list_checkpoints", "checkpoint_dir_of", "read_weights", "LoadReport", "load_pretrained", "rename_prefixes"]

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
DEPLOY_FILE = "deployable.safetensors"
DEPLOY_EMA_FILE = "deployable_ema.safetensors"
STATE_FILE = "state.pt"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


class CorruptWeightsError(ValueError):
    """A weights (or training-state) file exists but cannot be read: ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def to_cpu_contiguous(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of ``state`` that ``safetensors.torch.save_file`` accepts: CPU, contiguous, no shared storage."""
    # clone: safetensors refuses tensors that share storage (tied weights); the copy is on the CPU anyway
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def _save_file(state: Mapping[str, torch.Tensor], path: Path, meta: dict[str, str]) -> None:
    """``safetensors.torch.save_file`` with the file mode ``open()`` would give (the umask's, e.g. 0644): it writes
    a temp file of its own, created 0600, and renames it over ``path``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)  # the umask applies (or an existing file keeps its mode)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
    save_file(to_cpu_contiguous(state), str(path), metadata=meta)
    os.chmod(path, mode)


def save_weights(path: str | os.PathLike, state: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None,
                 atomic: bool = True) -> Path:
    """Write ``state`` as safetensors (atomically unless the caller's folder is already a temp one), with the file
    mode the umask gives."""
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    if not atomic:
        _save_file(state, Path(path), meta)
        return Path(path)
    with atomic_path(path) as tmp:
        _save_file(state, tmp, meta)
    return Path(path)


def load_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file``, raising :class:`CorruptWeightsError` (naming ``path``) when it cannot."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise CorruptWeightsError(path, f"corrupt or truncated weights file ({_reason(e)})") from None


def weights_kind(path: str | os.PathLike) -> str | None:
    """The ``kind`` a safetensors file was saved for (its metadata), or None if it does not say."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("kind")
    except (SafetensorError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise CorruptWeightsError(path, f"corrupt or truncated weights file ({_reason(e)})") from None


def is_complete_checkpoint(d: Path) -> bool:
    return (d / MODEL_FILE).is_file() and (d / STATE_FILE).is_file()


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders ``step_*`` under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), d) for d in root.iterdir() if (m := _STEP_DIR.match(d.name)) and d.is_dir()]
    return [d for _, d in sorted(found) if is_complete_checkpoint(d)]


def checkpoint_dir_of(path: str | os.PathLike) -> Path:
    """The checkpoint folder named by ``path``: a checkpoint folder, a run folder (its latest) or a file in one."""
    p = Path(path)
    if p.is_file() and p.parent.name.startswith("step_"):
        p = p.parent
    if p.is_dir() and not is_complete_checkpoint(p):
        ckpts = list_checkpoints(p / "checkpoints" if (p / "checkpoints").is_dir() else p)
        if not ckpts:
            raise FileNotFoundError(f"{p}: no complete checkpoint here (expected {MODEL_FILE} and {STATE_FILE}, "
                                    f"or checkpoints/step_*/)")
        p = ckpts[-1]
    if not p.is_dir():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    return p


def _pick_in_folder(d: Path, prefer_ema: bool, kind: str | None, strict_kind: bool) -> Path:
    """The weights file of checkpoint folder ``d`` for a model of ``kind`` (None: the trained model's)."""
    main, deploy = d / MODEL_FILE, d / DEPLOY_FILE
    use_deploy = False
    if kind is not None:
        main_kind = weights_kind(main)
        deploy_kind = weights_kind(deploy) if deploy.is_file() else None
        if main_kind is not None and main_kind != kind:
            if deploy_kind != kind and not strict_kind:
                log.info("%s holds a '%s' model, not a '%s': reading its weights as they are", d, main_kind, kind)
            elif deploy_kind != kind:
                extra = f" (its deployable model is a '{deploy_kind}')" if deploy_kind else ""
                raise ValueError(f"{d} holds a '{main_kind}' model{extra}, but the config builds a '{kind}' model")
            else:
                use_deploy = True
    ema, plain = (DEPLOY_EMA_FILE, DEPLOY_FILE) if use_deploy else (EMA_FILE, MODEL_FILE)
    return d / ema if prefer_ema and (d / ema).is_file() else d / plain


def read_weights(path: str | os.PathLike, prefer_ema: bool = False, kind: str | None = None,
                 strict_kind: bool = True) -> tuple[dict[str, torch.Tensor], str]:
    """A state dict and where it came from: ``(state, "path/of/file")``.

    ``path``: a checkpoint folder or run folder (its latest checkpoint; the EMA weights if ``prefer_ema`` and
    present; for ``kind`` the file saved for a model of that kind: a recipe's run gives its deployable model, and a
    folder holding neither is an error unless ``strict_kind`` is False), a
    .safetensors file, or a torch file loadable with weights_only=True (its ``state_dict`` or ``model`` entry if it
    has one).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"weights not found: {p}")
    if p.is_dir():
        f = _pick_in_folder(checkpoint_dir_of(p), prefer_ema, kind, strict_kind)
        return load_safetensors(f), str(f)
    if p.suffix == ".safetensors":
        return load_safetensors(p), str(p)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise CorruptWeightsError(p, f"not a safetensors file nor a torch state dict loadable with weights_only=True "
                                     f"({_reason(e)})") from None
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

    def summary(self) -> str:
        return (f"loaded {len(self.loaded)} tensors; {len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                f"{len(self.mismatched)} with a different shape")


def _rename(key: str, prefix_map: Mapping[str, str]) -> str:
    for old in sorted(prefix_map, key=len, reverse=True):
        if key.startswith(old):
            return prefix_map[old] + key[len(old):]
    return key


def rename_prefixes(state: Mapping[str, torch.Tensor], prefix_map: Mapping[str, str] | None
                    ) -> dict[str, torch.Tensor]:
    """``state`` with key prefixes renamed (the longest matching prefix of ``prefix_map`` wins)."""
    return {_rename(k, prefix_map or {}): v for k, v in state.items()}


def load_pretrained(model: nn.Module, path: str | os.PathLike, prefix_map: Mapping[str, str] | None = None,
                    ) -> LoadReport:
    """Load pretrained weights into ``model`` non-strictly, renaming key prefixes first; log what did not match.

    The weights of frozen modules that checkpoints leave out (``freeze(..., in_checkpoint=False)``: a language model
    rebuilt from its own files) are not expected in the file, so they are not reported as missing (a file that does
    carry them still loads them).
    """
    state, source = read_weights(path, kind=getattr(model, "kind", None), strict_kind=False)
    state = rename_prefixes(state, prefix_map)
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
    rep.missing = missing_checkpoint_keys(model, state)
    model.load_state_dict(usable, strict=False)
    rep.loaded = sorted(usable)
    log.info("init_from %s: %s", source, rep.summary())
    for name, keys in (("missing", rep.missing), ("unexpected", rep.unexpected), ("shape-mismatched", rep.mismatched)):
        if keys:
            more = f" ... (+{len(keys) - 10} more)" if len(keys) > 10 else ""
            log.warning("init_from: %s keys: %s%s", name, ", ".join(keys[:10]), more)
    return rep
