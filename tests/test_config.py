"""Typed config: YAML -> dataclasses, `_base_` inheritance, dotted overrides, one-line errors, round trips."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from bevbridge.config import ConfigError, dump_config, from_dict, load_config, save_config
from bevbridge.config.schema import ExperimentConfig


def write(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def cfgdir(tmp_path):
    write(tmp_path / "base.yaml", "name: base\noptim:\n  lr: 1.0e-3\n  betas: [0.9, 0.95]\ndata:\n  batch_size: 4\n")
    write(tmp_path / "child.yaml", "_base_: base.yaml\nname: child\noptim:\n  weight_decay: 0.05\n")
    return tmp_path


def test_defaults_load_from_empty_file(tmp_path):
    cfg = load_config(write(tmp_path / "e.yaml", ""))
    assert cfg == ExperimentConfig()


def test_base_inheritance_merges_sections(cfgdir):
    cfg = load_config(cfgdir / "child.yaml")
    assert cfg.name == "child"
    assert cfg.optim.lr == 1e-3 and cfg.optim.weight_decay == 0.05  # merged key by key
    assert cfg.optim.betas == (0.9, 0.95) and isinstance(cfg.optim.betas, tuple)
    assert cfg.data.batch_size == 4


def test_delete_key_replaces_the_parents_mapping_instead_of_merging(cfgdir):
    """``_delete_: true`` (mmcv's convention): the child's mapping replaces the parent's. Catches the flag being
    ignored (the parent's prefix would survive the merge), the flag itself leaking into the schema (an unknown-key
    error), and a merge without the flag being turned into a replacement."""
    write(cfgdir / "base.yaml", "optim:\n  lr: 1.0e-3\n  lr_mult: {a.: 0.1, b.: 2.0}\n")
    write(cfgdir / "merge.yaml", "_base_: base.yaml\noptim:\n  lr_mult: {c.: 3.0}\n")
    write(cfgdir / "replace.yaml", "_base_: base.yaml\noptim:\n  lr_mult: {_delete_: true, c.: 3.0}\n")
    write(cfgdir / "bad.yaml", "_base_: base.yaml\noptim:\n  lr_mult: {_delete_: yes please}\n")
    assert load_config(cfgdir / "merge.yaml").optim.lr_mult == {"a.": 0.1, "b.": 2.0, "c.": 3.0}
    replaced = load_config(cfgdir / "replace.yaml").optim
    assert replaced.lr_mult == {"c.": 3.0} and replaced.lr == 1e-3  # only that mapping is replaced
    with pytest.raises(ConfigError, match=r"optim\.lr_mult\._delete_' must be true"):
        load_config(cfgdir / "bad.yaml")


def test_base_chain_and_cycle(tmp_path):
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_dotted_overrides_apply_last_and_parse_by_type(cfgdir):
    cfg = load_config(cfgdir / "child.yaml", ["optim.lr=2e-4", "data.batch_size=2", "train.amp=bf16",
                                             "optim.grad_clip=null", "optim.betas=[0.8, 0.9]"])
    assert cfg.optim.lr == pytest.approx(2e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.data.batch_size == 2
    assert cfg.train.amp == "bf16"
    assert cfg.optim.grad_clip is None
    assert cfg.optim.betas == (0.8, 0.9)


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    # PyYAML reads 2e-4 as a string; a float field must still accept it.
    cfg = load_config(write(tmp_path / "x.yaml", "optim:\n  lr: 2e-4\n"))
    assert cfg.optim.lr == pytest.approx(2e-4)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("optim.lrr=1", r"config key 'optim.lrr' \(from override 'optim.lrr=1'\): unknown key \(did you mean 'lr'\?\); "
                        r"valid keys under 'optim': lr, weight_decay, betas, lr_mult, wd_mult, grad_clip"),
        ("data.batch_size=two", r"config key 'data.batch_size' .*expected int, got 'two'"),
        ("train.amp=fp8", r"config key 'train.amp' .*invalid choice 'fp8'; choices: 'none', 'bf16', 'fp16'"),
        ("optim.lr.x=1", r"'optim.lr' is a value"),
        ("nonsense", r"expected dotted.key=value"),
        ("optim.betas=[1, 2, 3]", r"config key 'optim.betas' .*expected 2 values"),
        ("data.batch_size=0", r"config key 'data.batch_size' \(from override 'data.batch_size=0'\): must be >= 1"),
    ],
)
def test_bad_overrides_fail_with_one_line_naming_the_key(cfgdir, override, expected):
    with pytest.raises(ConfigError, match=expected) as e:
        load_config(cfgdir / "child.yaml", [override])
    assert "\n" not in str(e.value)


def test_bad_yaml_value_names_the_file(cfgdir):
    write(cfgdir / "bad.yaml", "_base_: base.yaml\ndata:\n  batch_size: 1.5\n")
    with pytest.raises(ConfigError, match=r"config key 'data.batch_size' \(from .*bad.yaml\): expected int, got 1.5"):
        load_config(cfgdir / "bad.yaml")


def test_error_points_at_the_file_that_set_the_key(cfgdir):
    write(cfgdir / "base2.yaml", "optim:\n  lr: fast\n")
    write(cfgdir / "kid.yaml", "_base_: base2.yaml\nname: kid\n")
    with pytest.raises(ConfigError, match=r"'optim.lr' \(from .*base2.yaml\)"):
        load_config(cfgdir / "kid.yaml")


def test_missing_file_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+ is not valid YAML"):
        load_config(write(tmp_path / "bad.yaml", "a: [1, 2\n"))
    with pytest.raises(ConfigError, match="parent file"):
        load_config(write(tmp_path / "b.yaml", "_base_: [x.yaml]\n"))


def test_saved_config_round_trips(cfgdir, tmp_path):
    cfg = load_config(cfgdir / "child.yaml", ["optim.lr=3e-4", "train.seed=7"])
    out = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(out) == cfg
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


# --- generic schema features used by later sections (unions of dataclasses, dicts, optional nesting)
@dataclass
class _Lss:
    kind: Literal["lss"] = "lss"
    depth_bins: int = 118


@dataclass
class _Former:
    kind: Literal["bevformer"] = "bevformer"
    layers: int = 6


@dataclass
class _Root:
    lift: _Lss | _Former = field(default_factory=_Lss)
    weights: dict[str, float] = field(default_factory=dict)
    sizes: tuple[int, ...] = (1, 2)
    required: int | None = None


def test_union_of_sections_is_chosen_by_its_literal_discriminator():
    r = from_dict(_Root, {"lift": {"kind": "bevformer", "layers": 3}, "weights": {"det": 1, "seg": 0.5}})
    assert r.lift == _Former(layers=3)
    assert r.weights == {"det": 1.0, "seg": 0.5}
    with pytest.raises(ConfigError, match=r"'lift.kind'.*invalid choice 'x'; choices: 'lss', 'bevformer'"):
        from_dict(_Root, {"lift": {"kind": "x"}})
    with pytest.raises(ConfigError, match=r"'lift.depth_bins'.*unknown key.*valid keys under 'lift': kind, layers"):
        from_dict(_Root, {"lift": {"kind": "bevformer", "depth_bins": 3}})
    with pytest.raises(ConfigError, match=r"'sizes\[1\]'.*expected int"):
        from_dict(_Root, {"sizes": [1, "a"]})


def test_dump_is_yaml_of_every_key():
    text = dump_config(ExperimentConfig())
    for key in ("data:", "dataroot:", "optim:", "lr:", "schedule:", "train:"):
        assert key in text
