"""Frozen sub-models: a teacher, a language model, a text encoder, a detector frozen for a training stage.

    self.teacher = freeze(teacher)                       # eval mode for good, no gradients, not optimised
    self.lm = freeze(lm, in_checkpoint=False)            # ... and its weights are not written into checkpoints

A frozen module stays in eval mode whatever ``.train()`` is called on it or on its parents (BatchNorm statistics and
dropout are those of the trained model), its parameters have ``requires_grad=False`` (so the optimizer, which takes
only trainable parameters, never sees them and they have no optimizer state), and gradients still flow *through* it
to its inputs (BridgeTA's logit-level distillation passes the student's features through the frozen teacher head).

``in_checkpoint=False`` is for large pretrained modules that are rebuilt from their own local file when the model is
built (MTA's language model): checkpoints then leave their weights out (engine/checkpoint.py), and loading a
checkpoint accepts their keys as missing. Everything else, frozen or not, is saved, so a checkpoint reproduces the
model by itself.

Freezing swaps the module's class for a subclass (``Frozen<Name>``) whose ``train()`` always sets eval mode; the
state-dict keys, ``isinstance`` checks and the module's own code are unchanged.
"""

from __future__ import annotations

from torch import nn

__all__ = ["freeze", "is_frozen", "frozen_modules", "checkpoint_excluded_prefixes", "checkpoint_state_dict",
           "missing_checkpoint_keys"]

_FROZEN_CLASSES: dict[type, type] = {}


class _FrozenMixin:
    """``train(mode)`` keeps the module (and everything under it) in eval mode."""

    _bevbridge_frozen = True

    def train(self, mode: bool = True):  # noqa: ARG002 - the mode is ignored on purpose
        return super().train(False)  # type: ignore[misc]


def _frozen_class(cls: type) -> type:
    if cls not in _FROZEN_CLASSES:
        _FROZEN_CLASSES[cls] = type(f"Frozen{cls.__name__}", (_FrozenMixin, cls), {"__module__": cls.__module__})
    return _FROZEN_CLASSES[cls]


def freeze(module: nn.Module, *, in_checkpoint: bool = True) -> nn.Module:
    """Freeze ``module`` in place (see the module docstring) and return it."""
    if not is_frozen(module):
        module.__class__ = _frozen_class(type(module))
    module.requires_grad_(False)
    module.eval()
    module._bevbridge_in_checkpoint = in_checkpoint  # type: ignore[attr-defined]
    return module


def is_frozen(module: nn.Module) -> bool:
    return bool(getattr(type(module), "_bevbridge_frozen", False))


def frozen_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The outermost frozen modules of ``model`` by qualified name ("" if ``model`` itself is frozen)."""
    out: dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        if is_frozen(m) and not any(name == p or name.startswith(p + ".") for p in out if p) and "" not in out:
            out[name] = m
    return out


def checkpoint_excluded_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict key prefixes (``"lm."``) of the frozen modules whose weights checkpoints leave out."""
    return tuple(f"{name}." if name else "" for name, m in frozen_modules(model).items()
                 if not getattr(m, "_bevbridge_in_checkpoint", True))


def checkpoint_state_dict(model: nn.Module) -> dict:
    """``model.state_dict()`` without the keys of frozen modules frozen with ``in_checkpoint=False``."""
    excluded = checkpoint_excluded_prefixes(model)
    return {k: v for k, v in model.state_dict().items() if not (excluded and k.startswith(excluded))}


def missing_checkpoint_keys(model: nn.Module, state) -> list[str]:
    """The keys a checkpoint of ``model`` carries (:func:`checkpoint_state_dict`) that ``state`` lacks: the weights
    of frozen modules rebuilt from their own files are never expected."""
    return [k for k in checkpoint_state_dict(model) if k not in state]
