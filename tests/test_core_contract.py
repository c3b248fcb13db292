"""The core every method stands on: DataNeeds -> dataset options, frozen sub-models, recipes' deployable
checkpoints, the summary, and the layering of imports."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from bevbridge.config import ConfigError, load_config
from bevbridge.config.schema import DataConfig, OptimConfig
from bevbridge.engine import build
from bevbridge.engine.checkpoint import CheckpointManager, load_model_state, model_weights
from bevbridge.engine.ema import ModelEMA
from bevbridge.engine.optim import param_groups
from bevbridge.geometry import BEVGrid
from bevbridge.models.contract import DataNeeds, Prediction
from bevbridge.models.freeze import checkpoint_state_dict, freeze, frozen_modules, is_frozen
from bevbridge.weights import DEPLOY_FILE, read_weights
from tests.engine_tiny import TinyModel

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------- DataNeeds
def _needs(**kw) -> DataNeeds:
    base = dict(images=True, image_size=(32, 64), box_range=(-50.0, -50.0, 50.0, 50.0), tasks=("detection",))
    return DataNeeds(**{**base, **kw})


def test_dataset_options_come_from_needs_and_data_only():
    """Would catch: a model setting overriding a data key (lidar_sweeps zeroed by a model key), or a sensor the
    model does not use being loaded anyway."""
    data = DataConfig(lidar_sweeps=3, radar_sweeps=5)
    opts = build.dataset_options(data, _needs(lidar="optional"), train=False)
    assert opts["lidar_sweeps"] == 3 and opts["radar_sweeps"] == 0 and "radar_features" not in opts
    opts = build.dataset_options(data, _needs(radar="optional", radar_features=("x", "y", "rcs")), train=False)
    assert opts["radar_sweeps"] == 5 and opts["radar_features"] == ("x", "y", "rcs") and opts["lidar_sweeps"] == 0
    assert opts["image_size"] == (32, 64) and "map_grid" not in opts
    opts = build.dataset_options(DataConfig(image_size=(16, 32)), _needs(), train=False)
    assert opts["image_size"] == (16, 32)  # set explicitly in data: it wins


def test_a_required_sensor_the_data_disables_is_an_error_at_build_time(caplog):
    """Would catch: a teacher that needs LiDAR crashing deep inside its forward hours into a run."""
    with pytest.raises(build.BuildError, match="the model requires LiDAR but data.lidar_sweeps is 0"):
        build.dataset_options(DataConfig(lidar_sweeps=0), _needs(lidar="required"), train=True)
    with pytest.raises(build.BuildError, match="requires LiDAR but data.drop_lidar is set"):
        build.dataset_options(DataConfig(drop_lidar=True), _needs(lidar="required"), train=True)
    with caplog.at_level(logging.WARNING, logger="bevbridge"):
        opts = build.dataset_options(DataConfig(lidar_sweeps=0), _needs(lidar="optional"), train=True)
    assert opts["lidar_sweeps"] == 0 and "training and evaluating without it" in caplog.text


def test_map_targets_on_a_grid_other_than_the_features():
    """Would catch: the target grid derived from the feature grid by hand (BridgeTA: features on +-51.2 m, targets
    on +-50 m at 0.5 m)."""
    target = BEVGrid.square(50.0, 0.5)
    opts = build.dataset_options(DataConfig(), _needs(map_grid=target, map_classes=("drivable_area",)), train=False)
    assert opts["map_grid"] == target and opts["map_grid"].shape == (200, 200)
    ctab = load_config(REPO / "configs" / "ctab" / "mtl_ctab.yaml").model.data_needs()
    assert ctab.map_grid == BEVGrid.square(51.2, 0.512) and ctab.map_grid.shape == (200, 200)


def test_data_needs_union_takes_the_stronger_use_and_refuses_conflicts():
    student = _needs(lidar="no", map_grid=BEVGrid.square(50, 0.5), map_classes=("a",), tasks=("segmentation",))
    teacher = _needs(lidar="required", map_grid=BEVGrid.square(50, 0.5), map_classes=("a",), tasks=())
    u = student.union(teacher)
    assert u.lidar == "required" and u.tasks == ("segmentation",) and u.map_classes == ("a",)
    with pytest.raises(ValueError, match="image_size differs"):
        student.union(_needs(image_size=(64, 64)))


def test_bad_data_needs_fail_on_construction():
    with pytest.raises(ValueError, match="map_grid and map_classes go together"):
        _needs(map_grid=BEVGrid.square(50, 0.5))
    with pytest.raises(ValueError, match="radar_features"):
        _needs(radar="optional")
    with pytest.raises(ValueError, match="unknown task"):
        _needs(tasks=("tracking",))


def test_grid_with_shape_is_the_one_derived_grid_helper():
    g = BEVGrid.square(51.2, 0.8).with_shape(200, 200)
    assert g.shape == (200, 200) and g.res == pytest.approx(0.512) and (g.xmin, g.xmax) == (-51.2, 51.2)
    with pytest.raises(ValueError, match="non-square cells"):
        BEVGrid(-50, 50, -25, 25, 0.5).with_shape(100, 100)


# ------------------------------------------------------------------------------------------------- model kinds
def test_an_unknown_kind_or_a_key_of_another_schema_is_a_one_line_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: {kind: ctab}\n")
    with pytest.raises(ConfigError, match=r"config key 'model.kind' .*invalid choice 'nope'"):
        load_config(p, ["model.kind=nope"])
    with pytest.raises(ConfigError, match=r"config key 'model.lm' .*unknown key"):
        load_config(p, ["model.lm.path=x"])
    p.write_text("model: {grid: {res: 0.8}}\n")
    with pytest.raises(ConfigError, match=r"'model.kind'"):
        load_config(p)


# ----------------------------------------------------------------------------------------------------- freezing
class _Recipe(nn.Module):
    """A minimal recipe: a trained student (deployable), a frozen BatchNorm teacher, a trained assistant."""

    kind = "tiny_recipe"
    deployable_attr = "student"

    def __init__(self, lm_in_checkpoint: bool = True):
        super().__init__()
        self.student = TinyModel(dropout=0.0)
        self.teacher = freeze(nn.Sequential(nn.Linear(8, 9), nn.BatchNorm1d(9), nn.Dropout(0.5)))
        self.lm = freeze(nn.Linear(9, 9), in_checkpoint=lm_in_checkpoint)
        self.assistant = nn.Linear(9, 9)

    def forward(self, batch):
        x = batch.radar[:, 0]
        return {"student": self.student(batch), "teacher": self.lm(self.teacher(x))}

    def loss(self, outputs, batch):
        s = outputs["student"]["boxes"]
        kd = ((self.assistant(s) - outputs["teacher"]) ** 2).mean()
        return {"loss": kd + self.student.loss(outputs["student"], batch)["loss"], "kd": kd.detach()}

    def predict(self, outputs, batch):
        return self.student.predict(outputs["student"], batch)

    def scalars(self):
        return {}

    def data_needs(self):
        return self.student.data_needs()


def _tiny_batch(n=4):
    from bevbridge.data.batch import collate
    from tests.engine_tiny import TinyDataset

    ds = TinyDataset(n)
    return collate([ds[i] for i in range(n)])


def test_a_frozen_module_stays_in_eval_mode_and_out_of_the_optimizer():
    """Would catch: a teacher's BatchNorm statistics updated (or its dropout active) when the trainer calls
    .train(), its parameters optimised, or gradients not flowing through it to the student (LLD)."""
    r = _Recipe()
    r.train()
    assert r.student.training and r.assistant.training
    assert not r.teacher.training and not any(m.training for m in r.teacher.modules())
    assert is_frozen(r.teacher) and isinstance(r.teacher, nn.Sequential) and type(r.teacher).__name__ == "FrozenSequential"
    assert set(frozen_modules(r)) == {"teacher", "lm"}
    before = {k: v.clone() for k, v in r.teacher.state_dict().items()}
    opt_params = {id(p) for g in param_groups(r, OptimConfig()) for p in g["params"]}
    assert not any(id(p) in opt_params for p in r.teacher.parameters())
    batch = _tiny_batch()
    x = batch.radar[:, 0].clone().requires_grad_(True)
    r.lm(r.teacher(x)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # gradients flow through the frozen modules
    assert all(p.grad is None for p in r.teacher.parameters())
    r(batch)
    assert all(torch.equal(before[k], v) for k, v in r.teacher.state_dict().items())  # BN stats untouched


def test_frozen_modules_marked_out_of_checkpoint_are_left_out_and_accepted_as_missing(tmp_path):
    """Would catch: a large frozen LM written into every checkpoint, or a checkpoint without it refused on load."""
    r = _Recipe(lm_in_checkpoint=False)
    state = checkpoint_state_dict(r)
    assert not any(k.startswith("lm.") for k in state) and any(k.startswith("teacher.") for k in state)
    other = _Recipe(lm_in_checkpoint=False)
    load_model_state(other, state, "ckpt")  # lm.* missing: accepted
    assert all(torch.equal(other.state_dict()[k], v) for k, v in state.items())
    del state["teacher.0.weight"]
    with pytest.raises(ValueError, match=r"ckpt: the weights do not fit this model: missing teacher.0.weight"):
        load_model_state(other, state, "ckpt")


def test_ema_skips_frozen_modules():
    r = _Recipe()
    ema = ModelEMA(r)
    assert not any(k.startswith(("teacher.", "lm.")) for k in ema.state_dict())
    ema.update(r)
    with ema.applied_to(r):
        pass


def test_a_recipe_checkpoint_holds_the_deployable_model_under_its_own_keys(tmp_path):
    """Would catch: the deployable file keyed with the recipe's prefix (eval of the student would load nothing),
    the wrong kind recorded, or eval silently loading a recipe's weights into the wrong model."""
    r = _Recipe()
    mgr = CheckpointManager(tmp_path / "checkpoints")
    shadow = {k: v + 1 if v.is_floating_point() else v for k, v in checkpoint_state_dict(r).items()}
    d = mgr.save(1, model_weights(r), {"step": 1}, ema_state=shadow)
    assert (d / DEPLOY_FILE).is_file() and (d / "deployable_ema.safetensors").is_file()
    student = TinyModel()
    state, source = read_weights(d, kind="tiny")
    assert source.endswith(DEPLOY_FILE)
    student.load_state_dict(state)  # strict: exactly the student's keys
    assert all(torch.equal(student.state_dict()[k], v) for k, v in r.student.state_dict().items())
    ema_state, ema_source = read_weights(d, prefer_ema=True, kind="tiny")
    assert ema_source.endswith("deployable_ema.safetensors")
    assert torch.equal(ema_state["head.weight"], r.student.head.weight + 1)
    full, src = read_weights(d, kind="tiny_recipe")
    assert src.endswith("model.safetensors") and "assistant.weight" in full
    with pytest.raises(ValueError, match="holds a 'tiny_recipe' model \\(its deployable model is a 'tiny'\\), but "
                                         "the config builds a 'ctab' model"):
        read_weights(d, kind="ctab")


# ------------------------------------------------------------------------------------------------------ summary
def test_summary_of_mtl_ctab_reports_the_ctab_module_counts():
    """CTAB Table II / Sec. III: SegDecoder 1.33M, BEV upsampling 0.30M, CTAB 0.58M (on meta: no memory)."""
    from bevbridge.engine.summary import summarize

    rep = summarize(load_config(REPO / "configs" / "ctab" / "mtl_ctab.yaml"), device="meta", flops=False)
    p = rep["parameters"]
    assert round(p["seg_decoder"]["trainable"] / 1e6, 2) == 1.33
    assert round(p["bev_upsample"]["trainable"] / 1e6, 2) == 0.30
    assert round(p["ctab"]["trainable"] / 1e6, 2) == 0.58
    assert p["(total)"]["trainable"] == sum(v["trainable"] for k, v in p.items() if k != "(total)")


def test_summary_cli_counts_flops_of_a_synth_config(capsys):
    """FLOPs of one forward pass on the CPU; the per-module figures add up to at most the total."""
    from bevbridge import cli

    assert cli.main(["summary", str(REPO / "configs" / "ctab" / "mtl_ctab_synth.yaml"), "--json",
                     "data.dataroot=/nonexistent"]) == 0
    import json

    rep = json.loads(capsys.readouterr().out)
    f = rep["flops"]
    assert f["gflops"] > 1.0 and "random batch" in f["input"]
    assert 0 < sum(f["by_module"].values()) <= f["gflops"] * 1.0001
    assert f["by_module"]["image_backbone"] > 0


# ----------------------------------------------------------------------------------------------------- layering
def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


@pytest.mark.parametrize("package, forbidden", [
    ("models", ("bevbridge.engine", "bevbridge.recipes", "bevbridge.eval", "bevbridge.cli")),
    ("ops", ("bevbridge.engine", "bevbridge.models", "bevbridge.data", "bevbridge.eval", "bevbridge.recipes")),
    ("eval", ("bevbridge.engine", "bevbridge.recipes", "bevbridge.models.ctab")),
    ("data", ("bevbridge.engine", "bevbridge.models", "bevbridge.eval", "bevbridge.recipes")),
    ("recipes", ("bevbridge.engine", "bevbridge.cli")),
])
def test_imports_flow_one_way(package, forbidden):
    """DESIGN.md: cli -> engine -> recipes -> models -> ops -> geometry/config; data -> geometry; eval -> geometry.
    Would catch: a model importing an engine helper (the RCBEVDet converter did), eval importing a model."""
    bad = []
    for f in sorted((REPO / "bevbridge" / package).rglob("*.py")):
        for mod in _imports(f):
            if mod.startswith(forbidden):
                bad.append(f"{f.relative_to(REPO)} imports {mod}")
    assert not bad, bad
