"""The builder: the one place that turns an experiment config into the objects the commands need.

    model = build_model(cfg)                                  # the model of cfg.model.kind (+ init_from, freeze)
    train_set, val_set = build_datasets(cfg.data, model.data_needs(), seed=cfg.train.seed)
    evaluators = build_evaluators(cfg, model.data_needs())

Plain if/else on ``model.kind``, no registries: to see which class runs for a config, read :func:`build_model`.
The datasets are built from ``data.*`` and the model's :class:`~bevbridge.models.contract.DataNeeds` only; no
model key is read here. Each builder raises :class:`BuildError` (one line, printed by the CLI without a traceback)
when the config asks for something that does not exist or cannot be found.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from bevbridge.config.schema import DataConfig, ExperimentConfig
from bevbridge.engine.errors import BuildError
from bevbridge.engine.eval_loop import Evaluator
from bevbridge.engine.rng import seed_everything
from bevbridge.models.contract import DataNeeds

__all__ = ["BuildError", "build_model", "build_datasets", "build_evaluators", "build_exporter", "ensure_dataset",
           "load_init_weights", "dataset_options", "DEFAULT_SYNTH_ROOT"]

log = logging.getLogger(__name__)

DEFAULT_SYNTH_ROOT = "data/synth"  # the embedded default dataroot: generated on first use


def _import(module: str, what: str, issue: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is not None and module.startswith(e.name):
            raise BuildError(f"{what} is not built yet ({module}, {issue})", code=3) from None
        raise


def build_model(cfg: ExperimentConfig, *, init: bool = True) -> nn.Module:
    """The model of ``cfg.model`` (seeded with train.seed); with ``init``, ``model.init_from`` weights are loaded and
    ``model.freeze`` applied. Building under ``torch.device("meta")`` gives a weightless model (``bevbridge summary``).
    """
    m = cfg.model
    if m is None:
        raise BuildError("the config has no model section with a `kind` (e.g. model: {kind: ctab}); see configs/",
                         code=3)
    seed_everything(cfg.train.seed)
    if m.kind == "ctab":
        from bevbridge.models.ctab.model import CTABModel

        model: nn.Module = CTABModel(m)
    elif m.kind == "bevformer":
        from bevbridge.models.bevformer.model import BEVFormerModel

        model = BEVFormerModel(m)
    elif m.kind == "bevfusion":
        from bevbridge.models.bevfusion.model import BEVFusionSeg

        model = BEVFusionSeg(m)
    elif m.kind == "bridgeta":
        from bevbridge.recipes.bridgeta.recipe import BridgeTA

        model = BridgeTA(m)
    elif m.kind == "tod3cap":
        from bevbridge.models.tod3cap.model import TOD3CapModel

        model = TOD3CapModel(m)
    elif m.kind == "mta":
        from bevbridge.recipes.mta.recipe import MTA

        model = MTA(m)
    else:  # pragma: no cover - the schema union admits only the kinds above
        raise BuildError(f"model.kind {m.kind!r} is not known to bevbridge/engine/build.py")
    if init:
        load_init_weights(model, cfg)
        apply_freeze(model, m.freeze)
    return model


def load_init_weights(model: nn.Module, cfg: ExperimentConfig) -> None:
    """Apply ``model.init_from`` (with ``model.init_prefix_map``) to a freshly built model, then the ``init_from`` of
    every nested model section (a recipe's ``model.teacher``, ``model.student``) to the sub-module of the same name.

    The model's own ``init_from`` is pretrained initialisation (missing and unexpected keys are reported, not fatal).
    A nested section's weights must fit its sub-module exactly (a teacher loaded partly would distil noise): the
    first differing keys are an error. Finally a model may derive weights from the loaded ones in
    ``after_init_weights()`` (BridgeTA's assistant starts as a copy of the teacher's fuser, decoder and head).
    """
    m = cfg.model
    if m is None:
        return
    from bevbridge.engine.checkpoint import load_model_state
    from bevbridge.models.config_common import ModelConfig
    from bevbridge.weights import CorruptWeightsError, load_pretrained, read_weights, rename_prefixes

    if m.init_from is None:
        note = m.init_note()
        if note:
            log.warning("model.init_from is not set: %s", note)
    else:
        try:
            load_pretrained(model, m.init_from, m.init_prefix_map)
        except CorruptWeightsError as e:
            raise BuildError(f"model.init_from: {e}; copy or convert the file again, or point model.init_from at "
                             f"another one", code=1) from None
        except (FileNotFoundError, ValueError) as e:
            raise BuildError(f"model.init_from: {e}") from None
    for f in dataclasses.fields(m):
        sub_cfg = getattr(m, f.name)
        if not isinstance(sub_cfg, ModelConfig) or sub_cfg.init_from is None:
            continue
        key = f"model.{f.name}.init_from"
        sub = getattr(model, f.name, None)
        if not isinstance(sub, nn.Module):
            raise BuildError(f"{key}: the model has no sub-module {f.name!r} to load it into")
        try:
            state, source = read_weights(sub_cfg.init_from, kind=getattr(sub, "kind", None))
            state = rename_prefixes(state, sub_cfg.init_prefix_map)
            load_model_state(sub, state, source)
        except CorruptWeightsError as e:
            raise BuildError(f"{key}: {e}; copy the file again, or point {key} at another one", code=1) from None
        except (FileNotFoundError, ValueError) as e:
            raise BuildError(f"{key}: {e}") from None
        log.info("%s: loaded %s", key, source)
    hook = getattr(model, "after_init_weights", None)
    if callable(hook):
        hook()


def apply_freeze(model: nn.Module, names: tuple[str, ...]) -> None:
    """Freeze the sub-modules named in ``model.freeze`` (bevbridge/models/freeze.py)."""
    from bevbridge.models.freeze import freeze

    for name in names:
        try:
            sub = model.get_submodule(name.rstrip("."))
        except AttributeError:
            top = ", ".join(n for n, _ in model.named_children())
            raise BuildError(f"model.freeze: {name!r} is not a sub-module of the model (top level: {top})") from None
        freeze(sub)
        log.info("model.freeze: %s frozen (%d parameters)", name, sum(p.numel() for p in sub.parameters()))


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


def _check_sensor(name: str, use: str, sweeps: int, dropped: bool, key: str) -> bool:
    """Whether to load a sensor: the model's use of it against the data section's settings."""
    if use == "no":
        if sweeps and not dropped:
            log.debug("data.%s=%d: not loaded, the model does not use %s", key, sweeps, name)
        return False
    off = sweeps == 0 or dropped
    if off and use == "required":
        why = f"data.{key} is 0" if sweeps == 0 else f"data.drop_{name.lower()} is set"
        raise BuildError(f"the model requires {name} but {why}: set data.{key} >= 1 and leave the sensor on")
    if off:
        log.warning("the model uses %s when present, but %s: training and evaluating without it", name,
                    f"data.{key} is 0" if sweeps == 0 else f"data.drop_{name.lower()} is set")
    return True


def dataset_options(data: DataConfig, needs: DataNeeds, train: bool) -> dict[str, Any]:
    """NuScenesDataset options from the data section and the model's needs (nothing else)."""
    from bevbridge.data.transforms import BEVAug, ImageAug

    d = data
    image_size = tuple(d.image_size) if d.image_size is not None else needs.image_size
    radar = _check_sensor("radar", needs.radar, d.radar_sweeps, d.drop_radar, "radar_sweeps")
    lidar = _check_sensor("LiDAR", needs.lidar, d.lidar_sweeps, d.drop_lidar, "lidar_sweeps")
    cameras = d.cameras if needs.images else ()
    if needs.images and not cameras:
        raise BuildError("the model needs camera images but data.cameras is empty")
    opts: dict[str, Any] = dict(
        cameras=cameras, image_size=image_size, train=train, num_past_frames=needs.num_past_frames,
        radar_sweeps=d.radar_sweeps if radar else 0, radar_max_points=d.radar_max_points, lidar_sweeps=d.lidar_sweeps if lidar else 0,
        box_range=needs.box_range, min_points=d.min_points, captions=d.captions if needs.captions else None,
        drop_cameras=d.drop_cameras, drop_radar=d.drop_radar, drop_lidar=d.drop_lidar,
        seed=None,  # augmentation from the engine's per-(seed, epoch, index) RNG
        skip_bad_samples=train and d.skip_bad_samples, max_bad_fraction=d.max_bad_fraction,
        allow_missing_radars=d.allow_missing_radars,
    )
    if radar:
        opts["radar_features"] = needs.radar_features
    if needs.captions and d.captions is None:
        raise BuildError("the model needs captions but data.captions is not set (e.g. "
                         "data.captions=v1.0-mini/final_caption_bbox_token.json)")
    if needs.map_grid is not None:
        opts["map_grid"] = needs.map_grid
        opts["map_classes"] = needs.map_classes
    if train and d.image_aug is not None and needs.images:
        a = d.image_aug
        opts["image_aug"] = ImageAug(image_size, a.resize_range, a.rot_range, a.flip, a.crop_h_range)
    if train and d.bev_aug is not None:
        b = d.bev_aug
        opts["bev_aug"] = BEVAug(b.rot_range, b.scale_range, b.flip_x_prob, b.flip_y_prob, b.masks)
    return opts


def build_datasets(data: DataConfig, needs: DataNeeds, *, seed: int = 0, train: bool = True,
                   ) -> tuple[Dataset | None, Dataset]:
    """(train set or None, validation set) from the data section and the model's needs; the dataroot is ensured
    first. ``seed`` orders CBGS's resampling."""
    root = ensure_dataset(data)
    from bevbridge.data.batch import DETECTION_CLASSES
    from bevbridge.data.cbgs import CBGSDataset
    from bevbridge.data.nuscenes import NuScenesDataset

    d = data
    log.info("dataset %s (%s): %s", root, d.version, needs.describe())
    try:
        val_set = NuScenesDataset(root, d.version, d.val_split, **dataset_options(d, needs, train=False))
        train_set = None
        if train:
            train_set = NuScenesDataset(root, d.version, d.train_split, **dataset_options(d, needs, train=True))
            if d.cbgs:
                train_set = CBGSDataset(train_set, len(DETECTION_CLASSES), seed=seed)
    except (FileNotFoundError, ValueError) as e:
        raise BuildError(f"data: {e}") from None
    return train_set, val_set


def build_evaluators(cfg: ExperimentConfig, needs: DataNeeds, out_dir: Path | None = None) -> dict[str, Evaluator]:
    """The evaluators listed in ``eval.evaluators``, keyed by name (metrics are logged as ``<name>/<metric>``).

    Each must be a task the model predicts (``needs.tasks``)."""
    from bevbridge.eval.evaluators import CaptioningEvaluator, DetectionEvaluator, SegmentationEvaluator

    out: dict[str, Evaluator] = {}
    for name in cfg.eval.evaluators:
        if name not in needs.tasks:
            raise BuildError(f"eval.evaluators has {name!r} but this model predicts only "
                             f"{', '.join(needs.tasks) or 'nothing'}")
        if name == "detection":
            out[name] = DetectionEvaluator(cfg.data.dataroot, cfg.data.version, cfg.data.val_split, out_dir)
        elif name == "segmentation":
            out[name] = SegmentationEvaluator(tuple(needs.map_classes), needs.map_grid, cfg.eval.seg_protocol)
        elif name == "captioning":
            out[name] = CaptioningEvaluator()
    return out


def build_exporter(cfg: ExperimentConfig, out: Path, needs: DataNeeds | None = None) -> Evaluator:
    """An evaluator whose ``compute()`` writes the devkit detection results JSON to ``out`` (and, for a model that
    predicts captions, the captioned boxes with their captions to ``<out stem>_captions.json``)."""
    from bevbridge.eval.evaluators import CaptionedDetectionExporter, DetectionExporter

    cls = CaptionedDetectionExporter if needs is not None and "captioning" in needs.tasks else DetectionExporter
    return cls(cfg.data.dataroot, cfg.data.version, cfg.data.val_split, out)
