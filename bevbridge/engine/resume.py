"""Resuming a run: which checkpoint, read completely before anything changes, and the abandoned trajectory set aside.

    ckpt = read_resume_checkpoint(resume, ckpts, want_ema=True)   # rank 0 chooses, every rank reads the same one
    ...                                                           # the Trainer loads ckpt.model / ckpt.state
    retire_abandoned(ckpts, run_dir, ckpt.path, best)             # rank 0, after every rank has read

Which checkpoint (``--resume`` as the CLI passes it):

- ``True`` (``--resume`` alone), a run folder or a ``checkpoints/`` folder: the newest checkpoint that loads. A
  corrupt or truncated one (``model.safetensors``, ``state.pt``, the EMA file) is skipped with a warning naming the
  file; if none loads, one line says so.
- a checkpoint folder (``.../step_00000500``) or a file in one: exactly that checkpoint; if it does not load, one
  line names the file and the checkpoints to try instead.

Resuming from step k starts a new trajectory from k. This run's checkpoints after k (and those that did not load),
a ``best.json`` pointing at one of them, and the evaluations after k are moved into ``checkpoints/retired-<time>/``
and ``eval/retired-<time>/`` (never deleted), so ``--resume``, ``best.json`` and ``eval --ckpt RUN`` can only reach
the new trajectory. Resuming a checkpoint of another run into this run folder retires all of this run's checkpoints.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from bevbridge.engine import distributed
from bevbridge.engine.checkpoint import RETIRED_PREFIX, CheckpointManager, read_state, step_of
from bevbridge.engine.errors import EngineError
from bevbridge.weights import (EMA_FILE, MODEL_FILE, STATE_FILE, CorruptWeightsError, is_complete_checkpoint,
                               list_checkpoints, load_safetensors)

__all__ = ["LoadedCheckpoint", "read_checkpoint", "read_resume_checkpoint", "retire_abandoned",
           "warn_config_changes", "corrupt_hint"]

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_\d{8}$")


@dataclass
class LoadedCheckpoint:
    path: Path
    model: dict[str, torch.Tensor]
    state: dict[str, Any]
    ema: dict[str, torch.Tensor] | None


def read_checkpoint(ckpt: Path, want_ema: bool) -> LoadedCheckpoint:
    """Every file of ``ckpt`` that resuming reads; CorruptWeightsError names the first that cannot be read."""
    model = load_safetensors(ckpt / MODEL_FILE)
    state = read_state(ckpt)
    if "step" in state and int(state["step"]) != step_of(ckpt):
        raise CorruptWeightsError(ckpt / STATE_FILE, f"holds step {int(state['step'])}, but its folder is "
                                                     f"{ckpt.name}")
    ema = load_safetensors(ckpt / EMA_FILE) if want_ema and (ckpt / EMA_FILE).is_file() else None
    return LoadedCheckpoint(ckpt, model, state, ema)


def corrupt_hint(bad: Path, flag: str) -> str:
    """What to pass to ``flag`` instead of the unreadable ``bad`` (a checkpoint folder or a file): for a checkpoint,
    its run's newest earlier one."""
    ckpt = bad if bad.is_dir() else bad.parent
    if not _STEP_DIR.match(ckpt.name):
        return f"pass another file to {flag}"
    others = [d for d in list_checkpoints(ckpt.parent) if d.name != ckpt.name]
    if not others:
        return f"{ckpt.parent} holds no other checkpoint: pass another run's to {flag}"
    older = [d for d in others if step_of(d) < step_of(ckpt)]
    return f"pass another checkpoint, e.g. {flag} {(older or others)[-1]}"


def _candidates(resume: Any, ckpts: CheckpointManager) -> tuple[list[Path], bool, Path]:
    """(checkpoints to try, newest first; whether to fall back past a corrupt one; the folder they are in)."""
    if resume is True:
        if not ckpts.all():
            raise EngineError(f"--resume: no complete checkpoint to resume from in {ckpts.root}")
        return list(reversed(ckpts.all())), True, ckpts.root
    p = Path(resume)
    if p.is_file() and p.parent.name.startswith("step_"):
        p = p.parent
    if not p.exists():
        raise EngineError(f"--resume: checkpoint not found: {p}")
    if is_complete_checkpoint(p):
        return [p], False, p.parent
    root = p / "checkpoints" if (p / "checkpoints").is_dir() else p
    found = list_checkpoints(root)
    if not found:
        raise EngineError(f"--resume: {p}: no complete checkpoint here (expected {MODEL_FILE} and {STATE_FILE}, or "
                          f"checkpoints/step_*/)")
    return list(reversed(found)), True, root


def _choose(resume: Any, ckpts: CheckpointManager, want_ema: bool) -> tuple[LoadedCheckpoint, list[Path]]:
    candidates, fallback, root = _candidates(resume, ckpts)
    skipped: list[Path] = []
    for ckpt in candidates:
        try:
            loaded = read_checkpoint(ckpt, want_ema)
        except CorruptWeightsError as e:
            if not fallback:
                raise EngineError(f"--resume: {e}; {corrupt_hint(ckpt, '--resume')} (--resume alone takes the "
                                  f"newest that loads)") from None
            log.warning("--resume: skipping %s: %s", ckpt.name, e)
            skipped.append(ckpt)
            continue
        if skipped:
            log.warning("--resume: resuming from %s, the newest checkpoint that loads (skipped %d that do not: %s)",
                        ckpt, len(skipped), ", ".join(d.name for d in skipped))
        return loaded, skipped
    raise EngineError(f"--resume: none of the {len(candidates)} checkpoint(s) in {root} loads (the newest: "
                      f"{candidates[0].name}); start again without --resume (--out elsewhere), or restore the files")


def read_resume_checkpoint(resume: Any, ckpts: CheckpointManager, want_ema: bool) -> LoadedCheckpoint:
    """The checkpoint to resume from, read completely (module docstring). Under torchrun rank 0 chooses and every
    rank reads that same checkpoint."""
    d = distributed.info()
    chosen: str | None = None
    error: str | None = None
    loaded = None
    if d.is_main:
        try:
            loaded, _ = _choose(resume, ckpts, want_ema)
            chosen = str(loaded.path)
        except EngineError as e:
            error = str(e)
    chosen, error = distributed.broadcast_object((chosen, error))
    if error is not None:
        raise EngineError(error)
    if loaded is None:
        try:
            loaded = read_checkpoint(Path(chosen), want_ema)
        except CorruptWeightsError as e:
            raise EngineError(f"--resume (rank {d.rank}): {e}") from None
    return loaded


def _later_step_dirs(folder: Path, after: int | None) -> list[Path]:
    if not folder.is_dir():
        return []
    dirs = [p for p in folder.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(p for p in dirs if after is None or step_of(p) > after)


def retire_abandoned(ckpts: CheckpointManager, run_dir: Path, resumed: Path, best: Mapping[str, Any]) -> Path | None:
    """Move this run's checkpoints and evaluations that are not on the trajectory resumed from ``resumed`` aside.

    ``best``: the resumed state's best metric (``{"metric", "value", "step"}`` or empty); ``best.json`` is rewritten
    from it when its checkpoint is still here. Returns the folder the checkpoints went to (None if none moved)."""
    same_run = resumed.parent.resolve() == ckpts.root.resolve()
    k = step_of(resumed) if same_run else None
    later = _later_step_dirs(ckpts.root, k)
    old_best = ckpts.best()
    best_abandoned = old_best is not None and (not same_run or old_best.get("checkpoint") in {d.name for d in later}
                                                or not (ckpts.root / str(old_best.get("checkpoint"))).is_dir())
    dest = ckpts.retire(later, best=best_abandoned)
    evals = _later_step_dirs(run_dir / "eval", k)  # also those after the last checkpoint of a killed run
    if evals:
        eval_dest = run_dir / "eval" / (dest.name if dest else f"{RETIRED_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}")
        eval_dest.mkdir(parents=True, exist_ok=True)
        for e in evals:
            os.replace(e, eval_dest / e.name)
        log.info("--resume: moved %d evaluation(s) after step %s (%s, ...) to %s", len(evals), k, evals[0].name,
                 eval_dest)
    if dest is None:
        return None
    what = f"step {k}" if same_run else f"{resumed} (another run)"
    log.warning("--resume from %s: moved %d checkpoint(s) of the abandoned trajectory (%s)%s to %s; nothing reads "
                "them any more (delete that folder when sure)", what, len(later),
                ", ".join(d.name for d in later[:4]) + (", ..." if len(later) > 4 else ""),
                " and best.json" if best_abandoned else "", dest)
    if best_abandoned and best and same_run and ckpts.path(int(best["step"])).is_dir():
        ckpts.set_best(int(best["step"]), str(best["metric"]), float(best["value"]))
        log.info("best.json now points at %s (the best of the resumed trajectory)", ckpts.path(int(best["step"])).name)
    return dest


def warn_config_changes(run_dir: Path, cfg_tree: Mapping[str, Any]) -> None:
    """Warn (one line) about every key where ``cfg_tree`` differs from the run's saved ``config.yaml``."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    import yaml

    old, new = _flatten(yaml.safe_load(saved.read_text()) or {}), _flatten(cfg_tree)
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if changed:
        log.warning("--resume: config differs from %s in: %s", saved, ", ".join(changed))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}
