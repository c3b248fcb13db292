"""The one place that turns a config into the objects the CLI needs: model, datasets, evaluators, exporter.

Plain if/else on the config's kinds, no registries: to see which class runs for a config, read this file. Each
builder raises :class:`BuildError` (one line, printed by the CLI without a traceback) when the config asks for
something that does not exist yet or cannot be found.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from bevbridge.engine.errors import BuildError
from bevbridge.engine.evaluation import Evaluator
from bevbridge.engine.rng import seed_everything
from bevbridge.experiment import DataConfig, ExperimentConfig

__all__ = ["BuildError", "build_model", "build_datasets", "build_evaluators", "build_exporter", "ensure_dataset",
           "DEFAULT_SYNTH_ROOT"]

log = logging.getLogger(__name__)

DEFAULT_SYNTH_ROOT = "data/synth"  # the embedded default dataroot: generated on first use


def _import(module: str, what: str, issue: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is not None and module.startswith(e.name):
            raise BuildError(f"{what} is not built yet ({module}, {issue})", code=3) from None
        raise


def build_model(cfg: ExperimentConfig) -> nn.Module:
    """The model of ``cfg.model`` (seeded with train.seed), with ``model.init_from`` weights loaded if set."""
    m = cfg.model
    kind = getattr(m, "kind", None)
    if m is None or kind is None:
        raise BuildError("the config has no model section with a `kind`; no model kinds are built yet "
                         "(CTAB lands with issue #7)", code=3)
    seed_everything(cfg.train.seed)
    # One branch per model kind, e.g.:  if kind == "ctab": model = CTAB(m)
    raise BuildError(f"model.kind {kind!r} is not known to bevbridge/engine/build.py")  # pragma: no cover


def load_init_weights(model: nn.Module, cfg: ExperimentConfig) -> None:
    """Apply ``model.init_from`` (with ``model.init_prefix_map``) to a freshly built model."""
    if cfg.model is None or cfg.model.init_from is None:
        return
    from bevbridge.engine.checkpoint import load_pretrained

    try:
        load_pretrained(model, cfg.model.init_from, cfg.model.init_prefix_map)
    except (FileNotFoundError, ValueError) as e:
        raise BuildError(f"model.init_from: {e}") from None


def ensure_dataset(data: DataConfig) -> Path:
    """The dataroot, generating the synthetic world there first if it is the default one and missing.

    Only the default ``data/synth`` is generated, never a path the user named (a missing one is an error).
    """
    root = Path(data.dataroot)
    if data.dataroot.rstrip("/") == DEFAULT_SYNTH_ROOT:
        synth = _import("bevbridge.data.synth", f"{root} is missing and the synthetic world writer", "issue #3")
        if not synth.is_complete(root, version=data.version):
            log.info("generating the synthetic nuScenes-format world in %s (%s): first run only", root, data.version)
            synth.generate(root, version=data.version)
            if not synth.is_complete(root, version=data.version):
                raise BuildError(f"generating the synthetic world in {root} did not complete")
        return root
    if not root.is_dir():
        raise BuildError(f"data.dataroot {str(root)!r} does not exist (only the default {DEFAULT_SYNTH_ROOT!r} is "
                         f"generated automatically)")
    return root


def build_datasets(cfg: ExperimentConfig, train: bool = True) -> tuple[Dataset | None, Dataset]:
    """(train set or None, validation set) from the data section; the data root is ensured first."""
    ensure_dataset(cfg.data)
    _import("bevbridge.data.nuscenes", "the nuScenes dataset layer", "issue #4")
    raise BuildError("the dataset glue (data section -> NuScenesDataset options) is not written yet (issue #7)",
                     code=3)


def build_evaluators(cfg: ExperimentConfig) -> dict[str, Evaluator]:
    """The evaluators listed in ``eval.evaluators``, keyed by name (metrics are logged as ``<name>/<metric>``)."""
    out: dict[str, Evaluator] = {}
    for name in cfg.eval.evaluators:
        if name == "detection":
            _import("bevbridge.eval.detection", "the detection evaluator", "issue #5")
        elif name == "segmentation":
            _import("bevbridge.eval.segmentation", "the segmentation evaluator", "issue #5")
        raise BuildError(f"eval.evaluators: the engine adapter for {name!r} is not written yet (issue #7)", code=3)
    return out


def build_exporter(cfg: ExperimentConfig, out: Path) -> Evaluator:
    """An evaluator whose ``compute()`` writes the devkit detection results JSON to ``out``."""
    _import("bevbridge.eval.detection", "the devkit detection exporter", "issue #5")
    raise BuildError("the engine adapter for the detection exporter is not written yet (issue #7)", code=3)
