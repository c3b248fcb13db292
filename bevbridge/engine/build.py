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
        raise BuildError("the config has no model section with a `kind` (e.g. model: {kind: ctab}); see configs/",
                         code=3)
    seed_everything(cfg.train.seed)
    if kind == "ctab":
        from bevbridge.models.detectors.ctab import CTABDetector

        return CTABDetector(m)
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

    Only the default ``data/synth`` is generated, never a path the user named (a missing one is an error). Data
    already there under ``data.version`` (a world written by ``bevbridge synth`` with other parameters, or real
    nuScenes linked there) is used as it is, never replaced.
    """
    root = Path(data.dataroot)
    if data.dataroot.rstrip("/") == DEFAULT_SYNTH_ROOT:
        synth = _import("bevbridge.data.synth", f"{root} is missing and the synthetic world writer", "issue #3")
        complete = synth.is_complete(root, version=data.version)
        if not complete and (root / data.version / "sample.json").is_file():
            log.info("using the nuScenes-format data already in %s (not the default synthetic world; left as it is)",
                     root)
        elif not complete:
            log.info("generating the synthetic nuScenes-format world in %s (%s): first run only", root, data.version)
            synth.generate(root, version=data.version)
            if not synth.is_complete(root, version=data.version):
                raise BuildError(f"generating the synthetic world in {root} did not complete")
        return root
    if not root.is_dir():
        raise BuildError(f"data.dataroot {str(root)!r} does not exist (only the default {DEFAULT_SYNTH_ROOT!r} is "
                         f"generated automatically)")
    return root


def _dataset_options(cfg: ExperimentConfig, train: bool) -> dict[str, Any]:
    """NuScenesDataset options: the data section, plus what the model decides (frames, radar, targets, range)."""
    from bevbridge.data.transforms import BEVAug, ImageAug
    from bevbridge.geometry import BEVGrid

    d, m = cfg.data, cfg.model
    image_size = tuple(d.image_size or m.image.input_size)
    g = m.grid
    opts: dict[str, Any] = dict(
        cameras=d.cameras, image_size=image_size, train=train, num_past_frames=m.depth.num_past_frames,
        radar_sweeps=d.radar_sweeps if m.radar.enabled else 0, radar_features=m.radar.features,
        radar_max_points=d.radar_max_points, lidar_sweeps=d.lidar_sweeps if m.depth.loss_weight > 0 else 0,
        box_range=(g.xmin, g.ymin, g.xmax, g.ymax), min_points=d.min_points, captions=d.captions,
        drop_cameras=d.drop_cameras, drop_radar=d.drop_radar, drop_lidar=d.drop_lidar,
        seed=None,  # augmentation from the engine's per-(seed, epoch, index) RNG
        skip_bad_samples=train and d.skip_bad_samples, max_bad_fraction=d.max_bad_fraction,
        allow_missing_radars=d.allow_missing_radars,
    )
    if m.seg is not None:
        opts["map_grid"] = BEVGrid(g.xmin, g.xmax, g.ymin, g.ymax, (g.xmax - g.xmin) / m.seg.out_size)
        opts["map_classes"] = m.seg.classes
    if train and d.image_aug is not None:
        a = d.image_aug
        opts["image_aug"] = ImageAug(image_size, a.resize_range, a.rot_range, a.flip, a.crop_h_range)
    if train and d.bev_aug is not None:
        b = d.bev_aug
        opts["bev_aug"] = BEVAug(b.rot_range, b.scale_range, b.flip_x_prob, b.flip_y_prob, b.masks)
    return opts


def build_datasets(cfg: ExperimentConfig, train: bool = True) -> tuple[Dataset | None, Dataset]:
    """(train set or None, validation set) from the data section; the data root is ensured first."""
    root = ensure_dataset(cfg.data)
    if cfg.model is None:
        raise BuildError("the dataset options depend on the model: the config has no model section", code=3)
    from bevbridge.data.batch import DETECTION_CLASSES
    from bevbridge.data.cbgs import CBGSDataset
    from bevbridge.data.nuscenes import NuScenesDataset

    d = cfg.data
    try:
        val_set = NuScenesDataset(root, d.version, d.val_split, **_dataset_options(cfg, train=False))
        train_set = None
        if train:
            train_set = NuScenesDataset(root, d.version, d.train_split, **_dataset_options(cfg, train=True))
            if d.cbgs:
                train_set = CBGSDataset(train_set, len(DETECTION_CLASSES), seed=cfg.train.seed)
    except (FileNotFoundError, ValueError) as e:
        raise BuildError(f"data: {e}") from None
    return train_set, val_set


def build_evaluators(cfg: ExperimentConfig, out_dir: Path | None = None) -> dict[str, Evaluator]:
    """The evaluators listed in ``eval.evaluators``, keyed by name (metrics are logged as ``<name>/<metric>``)."""
    from bevbridge.engine.evaluators import DetectionEvaluator, SegmentationEvaluator

    out: dict[str, Evaluator] = {}
    for name in cfg.eval.evaluators:
        if name == "detection":
            out[name] = DetectionEvaluator(cfg.data.dataroot, cfg.data.version, cfg.data.val_split, out_dir)
        elif name == "segmentation":
            if cfg.model is None or cfg.model.seg is None:
                raise BuildError("eval.evaluators has 'segmentation' but the model has no segmentation branch "
                                 "(model.seg)")
            out[name] = SegmentationEvaluator(tuple(cfg.model.seg.classes))
    return out


def build_exporter(cfg: ExperimentConfig, out: Path) -> Evaluator:
    """An evaluator whose ``compute()`` writes the devkit detection results JSON to ``out``."""
    from bevbridge.engine.evaluators import DetectionExporter

    return DetectionExporter(cfg.data.dataroot, cfg.data.version, cfg.data.val_split, out)
