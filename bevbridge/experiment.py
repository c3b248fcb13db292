"""The experiment config schema: what one YAML file under configs/ may contain.

Loaded by :func:`bevbridge.config.load_config`; every key below is documented where it is declared. Sections grow
with the systems that use them; an unknown key is an error, never silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["DataConfig", "OptimConfig", "ScheduleConfig", "TrainConfig", "ExperimentConfig"]


@dataclass
class DataConfig:
    """Where the nuScenes-format data lies and how it is batched."""

    dataroot: str = "data/synth"  # the default synthetic world; `bevbridge synth` writes it
    version: str = "v1.0-mini"  # the table folder under dataroot: v1.0-mini, v1.0-trainval, ...
    train_split: str = "mini_train"  # a devkit split name, or a key of <dataroot>/<version>/splits.json
    val_split: str = "mini_val"
    batch_size: int = 1  # per process
    num_workers: int = 2

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")


@dataclass
class OptimConfig:
    """AdamW and its parameter groups."""

    lr: float = 2e-4  # peak learning rate for the global batch this config was written for
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    backbone_lr_mult: float = 1.0  # lr multiplier for image-backbone parameters (BEVFormer: 0.1)
    grad_clip: float | None = 35.0  # max global grad norm; null disables clipping

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule."""

    kind: Literal["cosine", "cyclic", "constant"] = "cosine"
    warmup_steps: int = 500  # linear warmup from warmup_ratio * lr
    warmup_ratio: float = 1.0 / 3.0
    min_lr_ratio: float = 1e-3  # cosine floor as a fraction of the peak


@dataclass
class TrainConfig:
    """The training loop."""

    max_steps: int = 1000
    seed: int = 0
    amp: Literal["none", "bf16", "fp16"] = "none"
    log_every: int = 10
    ckpt_every: int = 500
    out_dir: str = "runs"  # runs go to <out_dir>/<name>/


@dataclass
class ExperimentConfig:
    """One experiment: a name and its sections."""

    name: str = "experiment"
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
