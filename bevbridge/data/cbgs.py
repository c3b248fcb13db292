"""Class-balanced grouping and sampling (CBGS, Zhu et al. 2019), as mmdet3d's CBGSDataset does it.

Samples containing class c are resampled so that every class contributes about 1/K of the (sample, class)
pairs: for each class the index list of its samples is drawn with replacement ``len * (1/K) / frac_c`` times,
``frac_c`` being the class's share of all (sample, class) pairs. The result is a longer index list; wrapping the
dataset with it keeps DistributedSampler working unchanged.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from torch.utils.data import Dataset

__all__ = ["cbgs_indices", "CBGSDataset"]


def cbgs_indices(labels_per_sample: Sequence[np.ndarray], num_classes: int, seed: int = 0) -> np.ndarray:
    """Indices into the dataset after class-balanced resampling (samples without any label are dropped)."""
    per_class = [[] for _ in range(num_classes)]
    for i, labels in enumerate(labels_per_sample):
        for c in np.unique(labels):
            if 0 <= c < num_classes:
                per_class[int(c)].append(i)
    total = sum(len(ix) for ix in per_class)
    if total == 0:
        return np.arange(len(labels_per_sample))
    rng = np.random.default_rng(seed)
    out = []
    present = [ix for ix in per_class if ix]
    for ix in present:
        frac = len(ix) / total
        n = int(len(ix) * (1.0 / len(present)) / frac)
        out.append(rng.choice(np.asarray(ix), n, replace=True))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


class CBGSDataset(Dataset):
    """A view of ``dataset`` through :func:`cbgs_indices`; ``dataset`` must offer ``labels_per_sample()``."""

    def __init__(self, dataset, num_classes: int, seed: int = 0):
        self.dataset = dataset
        self.indices = cbgs_indices(dataset.labels_per_sample(), num_classes, seed)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[int(self.indices[i])]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
