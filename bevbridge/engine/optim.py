"""AdamW with parameter groups.

Groups (empty ones are dropped), each with its own ``lr_mult`` on top of the schedule:

=================  ====================================================  ==========  =================
group              parameters                                            lr          weight decay
=================  ====================================================  ==========  =================
backbone           names starting with one of optim.backbone_prefixes     lr x mult   optim.weight_decay
backbone_no_decay  ... and 1-D (biases, norm scales)                      lr x mult   0
decay              every other trainable parameter of 2+ dims            lr          optim.weight_decay
no_decay           every other 1-D / 0-D parameter                        lr          0
=================  ====================================================  ==========  =================

"1-D" means ``p.ndim <= 1``: biases, norm weights and biases, scalar gates (CTAB's bridge gates) and learned
log-variances (HUW's sigmas). Decaying those pulls gates and uncertainty weights towards zero, which is not
regularisation but a change of the model; so by default they get none (``optim.decay_1d_params: true`` restores
mmcv's behaviour of decaying everything, as the anchors' configs do). Frozen parameters (requires_grad False)
are left out.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from bevbridge.experiment import OptimConfig

__all__ = ["param_groups", "build_optimizer", "scaled_lr"]

log = logging.getLogger(__name__)


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """The AdamW parameter groups of ``model`` (see the module docstring)."""
    buckets: dict[str, list[nn.Parameter]] = {"backbone": [], "backbone_no_decay": [], "decay": [], "no_decay": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        backbone = any(name.startswith(prefix) for prefix in cfg.backbone_prefixes)
        no_decay = p.ndim <= 1 and not cfg.decay_1d_params
        key = ("backbone" if backbone else "") + ("_no_decay" if no_decay else "")
        buckets[key.lstrip("_") or "decay"].append(p)
    groups = []
    for name, params in buckets.items():
        if not params:
            continue
        groups.append({
            "params": params,
            "name": name,
            "lr_mult": cfg.backbone_lr_mult if name.startswith("backbone") else 1.0,
            "weight_decay": 0.0 if name.endswith("no_decay") else cfg.weight_decay,
        })
    return groups


def scaled_lr(cfg: OptimConfig, global_batch: int) -> float:
    """The peak lr for ``global_batch``: ``cfg.lr`` as is, or linearly scaled when ``cfg.base_batch`` is set."""
    if cfg.base_batch is None:
        return cfg.lr
    return cfg.lr * global_batch / cfg.base_batch


def build_optimizer(model: nn.Module, cfg: OptimConfig, peak_lr: float) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; each group's ``base_lr`` is ``peak_lr x lr_mult`` (the schedule scales it)."""
    groups = param_groups(model, cfg)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    for g in groups:
        g["base_lr"] = peak_lr * g["lr_mult"]
        g["lr"] = g["base_lr"]
        log.debug("param group %-17s %6d tensors  lr %.3g  wd %.3g", g["name"], len(g["params"]), g["lr"],
                  g["weight_decay"])
    return torch.optim.AdamW(groups, lr=peak_lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
