"""AdamW with parameter groups chosen by name prefix.

``optim.lr_mult`` and ``optim.wd_mult`` map parameter-name prefixes to multipliers of the learning rate and of the
weight decay, e.g. ``lr_mult: {image_backbone.: 0.1}`` (BEVFormer's backbone at a tenth of the lr). For each
trainable parameter the LONGEST matching prefix of each map applies (so ``{a.: 0.1, a.b.: 1.0}`` exempts ``a.b``);
no match means 1. A prefix that matches no trainable parameter is an error that names it (a typo would otherwise
silently train everything at the full rate).

Parameters with the same (lr multiplier, weight decay) share a group, named after the prefixes that put it there
(``image_backbone.`` / ``default``) plus ``/no_decay`` for the 1-D ones:

"1-D" means ``p.ndim <= 1``: biases, norm weights and biases, scalar gates (CTAB's bridge gates) and learned
log-variances (HUW's sigmas). Decaying those pulls gates and uncertainty weights towards zero, which is not
regularisation but a change of the model; so by default they get none (``optim.decay_1d_params: true`` restores
mmcv's behaviour of decaying everything, as the anchors' configs do). Frozen parameters (requires_grad False, e.g.
a teacher or a language model, bevbridge/models/freeze.py) are left out: they have no optimizer state.

The log prints every group's size and learning rate when the optimizer is built.
"""

from __future__ import annotations

import logging
from typing import Mapping

import torch
from torch import nn

from bevbridge.config.schema import OptimConfig

__all__ = ["param_groups", "build_optimizer", "scaled_lr", "describe_groups"]

log = logging.getLogger(__name__)


def _longest_match(name: str, prefixes: Mapping[str, float]) -> str | None:
    best = None
    for p in prefixes:
        if name.startswith(p) and (best is None or len(p) > len(best)):
            best = p
    return best


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """The AdamW parameter groups of ``model`` (see the module docstring), in first-parameter order."""
    groups: dict[tuple, dict] = {}
    used: set[str] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lr_p, wd_p = _longest_match(name, cfg.lr_mult), _longest_match(name, cfg.wd_mult)
        used.update(x for x in (lr_p, wd_p) if x is not None)
        lr_mult = cfg.lr_mult[lr_p] if lr_p is not None else 1.0
        no_decay = p.ndim <= 1 and not cfg.decay_1d_params
        wd = 0.0 if no_decay else cfg.weight_decay * (cfg.wd_mult[wd_p] if wd_p is not None else 1.0)
        key = (lr_mult, wd, no_decay)
        if key not in groups:
            label = " ".join(dict.fromkeys(x for x in (lr_p, wd_p) if x is not None)) or "default"
            groups[key] = {"params": [], "name": label + ("/no_decay" if no_decay else ""), "lr_mult": lr_mult,
                           "weight_decay": wd}
        groups[key]["params"].append(p)
    for what, prefixes in (("lr_mult", cfg.lr_mult), ("wd_mult", cfg.wd_mult)):
        unused = [p for p in prefixes if p not in used]
        if unused:
            raise ValueError(f"optim.{what}: prefix {unused[0]!r} matches no trainable parameter (top-level "
                             f"modules: {', '.join(sorted({n.split('.')[0] + '.' for n, _ in model.named_parameters()}))})")
    names: dict[str, int] = {}
    for g in groups.values():  # distinct names (two groups can share prefixes with different multipliers)
        n = names[g["name"]] = names.get(g["name"], 0) + 1
        if n > 1:
            g["name"] += f"#{n}"
    return list(groups.values())


def scaled_lr(cfg: OptimConfig, global_batch: int) -> float:
    """The peak lr for ``global_batch``: ``cfg.lr`` as is, or linearly scaled when ``cfg.base_batch`` is set."""
    if cfg.base_batch is None:
        return cfg.lr
    return cfg.lr * global_batch / cfg.base_batch


def describe_groups(groups: list[dict]) -> str:
    """One line per group: name, tensors, parameters, peak lr, weight decay."""
    return "\n".join(f"  {g['name']:<32} {len(g['params']):>5} tensors {sum(p.numel() for p in g['params']):>12,} "
                     f"params  lr {g['base_lr']:.3g}  wd {g['weight_decay']:.3g}" for g in groups)


def build_optimizer(model: nn.Module, cfg: OptimConfig, peak_lr: float) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; each group's ``base_lr`` is ``peak_lr x lr_mult`` (the schedule scales it)."""
    groups = param_groups(model, cfg)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    for g in groups:
        g["base_lr"] = peak_lr * g["lr_mult"]
        g["lr"] = g["base_lr"]
    log.info("optimizer AdamW, %d parameter groups (peak lr):\n%s", len(groups), describe_groups(groups))
    return torch.optim.AdamW(groups, lr=peak_lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
