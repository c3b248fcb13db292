"""The builder's nested ``init_from`` (a recipe's ``model.teacher.init_from``) and the ``after_init_weights`` hook."""

from __future__ import annotations

import dataclasses
import types
from typing import Literal

import pytest
import torch
from torch import nn

from bevbridge.engine import build
from bevbridge.models.config_common import ModelConfig
from bevbridge.weights import save_weights


@dataclasses.dataclass(kw_only=True)
class _Inner(ModelConfig):
    kind: Literal["inner"] = "inner"


@dataclasses.dataclass(kw_only=True)
class _Outer(ModelConfig):
    kind: Literal["outer"] = "outer"
    teacher: _Inner = dataclasses.field(default_factory=_Inner)


class _Net(nn.Module):
    kind = "inner"

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)


class _Recipe(nn.Module):
    kind = "outer"

    def __init__(self):
        super().__init__()
        self.teacher, self.assistant = _Net(), _Net()
        self.hook_saw = None

    def after_init_weights(self):
        self.hook_saw = self.teacher.lin.weight.detach().clone()
        self.assistant.load_state_dict(self.teacher.state_dict())


def _cfg(path, prefix_map=None):
    return types.SimpleNamespace(model=_Outer(teacher=_Inner(init_from=str(path), init_prefix_map=prefix_map or {})))


def test_nested_init_from_loads_the_sub_module_then_calls_the_hook(tmp_path):
    """model.teacher.init_from goes into the sub-module named teacher (with its prefix map, BatchNorm buffers
    included), and after_init_weights runs after the load (it sees the loaded weights). Catches the nested section
    ignored, loaded into the whole model, or the hook called before the load."""
    src = _Net()
    with torch.no_grad():
        src.lin.weight.fill_(3.0)
        src.bn.running_mean.fill_(0.5)
    path = tmp_path / "t.safetensors"
    save_weights(path, {f"net.{k}": v for k, v in src.state_dict().items()}, {"kind": "inner"})
    model = _Recipe()
    build.load_init_weights(model, _cfg(path, {"net.": ""}))
    assert torch.equal(model.teacher.lin.weight, src.lin.weight)
    assert torch.equal(model.teacher.bn.running_mean, src.bn.running_mean)
    assert torch.equal(model.hook_saw, src.lin.weight)
    assert torch.equal(model.assistant.lin.weight, src.lin.weight)


def test_nested_init_from_must_fit_exactly(tmp_path):
    """A nested model's weights that miss keys are an error naming the config key (not a warning: a partly loaded
    teacher would be distilled)."""
    path = tmp_path / "t.safetensors"
    save_weights(path, {"lin.weight": torch.zeros(2, 3)}, {"kind": "inner"})
    with pytest.raises(build.BuildError, match=r"model\.teacher\.init_from: .*missing lin\.bias"):
        build.load_init_weights(_Recipe(), _cfg(path))
    with pytest.raises(build.BuildError, match=r"model\.teacher\.init_from: weights not found"):
        build.load_init_weights(_Recipe(), _cfg(tmp_path / "absent.safetensors"))
