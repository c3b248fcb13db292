"""A tiny model, dataset and evaluator that follow the engine's contracts (for the engine tests only).

The dataset's samples carry an 8-d input in ``radar`` (with per-sample augmentation noise drawn from the global
torch RNG, so the engine's per-sample seeding is exercised) and a 9-d target in ``gt_boxes``. The model has an
``image_backbone`` (for the lr multiplier), a LayerNorm, dropout (model-side randomness) and a scalar gate.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from bevbridge.config import from_dict
from bevbridge.data.batch import Batch, Sample
from bevbridge.config.schema import ExperimentConfig
from bevbridge.models.contract import DataNeeds, Prediction

IN, OUT = 8, 9


class TinyDataset(Dataset):
    def __init__(self, n: int, start: int = 0, noise: float = 0.05, nan_tokens: tuple[str, ...] = ()):
        """Samples ``start .. start + n - 1`` of one fixed linear problem (a validation set: another ``start``)."""
        g = torch.Generator().manual_seed(0)
        w = torch.randn(OUT, IN, generator=g)
        x = torch.randn(start + n, IN, generator=g)
        self.x = x[start:]
        self.y = self.x @ w.T + 0.1 * torch.randn(start + n, OUT, generator=g)[start:]
        self.start = start
        self.noise = noise
        self.nan_tokens = set(nan_tokens)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> Sample:
        token = f"tok{self.start + i:04d}"
        x = self.x[i] + self.noise * torch.randn(IN)  # "augmentation": global RNG, seeded per sample by the engine
        if token in self.nan_tokens:
            x = torch.full_like(x, float("nan"))
        return Sample(token=token, scene_token="scene", location="singapore-onenorth", timestamp=i,
                      ego2global=torch.eye(4, dtype=torch.float64), bda=torch.eye(4), radar=x[None],
                      radar_features=tuple(f"f{k}" for k in range(IN)), gt_boxes=self.y[i][None],
                      gt_labels=torch.zeros(1, dtype=torch.int64))


class TinyModel(nn.Module):
    kind = "tiny"

    def __init__(self, hidden: int = 16, dropout: float = 0.1):
        super().__init__()
        self.image_backbone = nn.Linear(IN, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, OUT)
        self.gate = nn.Parameter(torch.tensor(0.5))

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        x = batch.radar[:, 0]  # [B, IN]
        h = self.drop(torch.relu(self.norm(self.image_backbone(x))))
        return {"boxes": self.head(h) * (1 + self.gate)}

    def loss(self, outputs: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        target = torch.stack([b[0] for b in batch.gt_boxes]).to(outputs["boxes"])
        err = outputs["boxes"].float() - target
        reg, gate = (err ** 2).mean(), 0.01 * self.gate ** 2
        return {"loss": reg + gate, "loss_reg": reg.detach(), "loss_gate": gate.detach(), "mae": err.abs().mean()}

    def data_needs(self) -> DataNeeds:
        return DataNeeds(images=False, tasks=("detection",))

    def predict(self, outputs: dict[str, torch.Tensor], batch: Batch) -> list[Prediction]:
        boxes = outputs["boxes"].detach()
        return [Prediction(token=t, boxes=boxes[i:i + 1], scores=torch.ones(1), labels=torch.zeros(1, dtype=torch.long))
                for i, t in enumerate(batch.tokens)]

    def scalars(self) -> dict[str, float]:
        return {"gate": float(self.gate.detach())}


class MSEEvaluator:
    """Mean squared error of the predicted boxes; records every token it is given."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sq, self.n, self.tokens = 0.0, 0, []

    def update(self, preds: list[Prediction], batch: Batch) -> None:
        assert [p.token for p in preds] == list(batch.tokens)
        assert batch.radar is None  # evaluators get the light batch
        for p, gt in zip(preds, batch.gt_boxes):
            self.sq += float(((p.boxes - gt) ** 2).mean())
            self.n += 1
        self.tokens += list(batch.tokens)

    def compute(self) -> dict[str, float]:
        return {"mse": self.sq / max(self.n, 1), "count": float(self.n)}

    @staticmethod
    def metric_names() -> list[str]:
        return ["mse", "count"]


def tiny_config(**sections) -> ExperimentConfig:
    """An ExperimentConfig for the tiny model: small, fast, CPU, no warmup unless asked."""
    tree = {
        "name": "tiny",
        "data": {"batch_size": 2, "num_workers": 0},
        "optim": {"lr": 1e-2, "grad_clip": 10.0},
        "schedule": {"kind": "cosine", "warmup_steps": 2},
        "train": {"max_steps": 8, "seed": 3, "device": "cpu", "log_every": 2, "ckpt_every": 4},
    }
    for name, values in sections.items():
        tree.setdefault(name, {}).update(values)
    return from_dict(ExperimentConfig, tree)


def build_tiny(seed: int = 3, dropout: float = 0.1) -> TinyModel:
    torch.manual_seed(seed)
    return TinyModel(dropout=dropout)
