"""DataLoaders for training and evaluation: sharded, seeded, and resumable mid-epoch.

Training order: the dataset's own sampler if it offers one (``dataset.make_sampler(num_replicas, rank, seed,
shuffle)``, e.g. the data layer's CBGS sampler), else a ``DistributedSampler`` (also with one process, so one
process and N processes see the same global batches). A sampler must be a pure function of (seed, epoch) after
``set_epoch(epoch)``. :class:`ResumableSampler` starts an epoch part-way by skipping indices (no data is loaded for
them) and tags each index with its epoch, so :class:`SeededDataset` can seed each sample's augmentation from
(seed, epoch, index) (engine/rng.py).

Evaluation order: a ``DistributedSampler`` without shuffling. It pads the last round with repeats so every rank
runs the same number of batches; engine/eval_loop.py drops the repeats by sample token.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, get_worker_info

from bevbridge.data.batch import collate
from bevbridge.engine.distributed import DistInfo
from bevbridge.engine.errors import EngineError
from bevbridge.engine.rng import preserved_cpu_rng, sample_seed, seed_sample, worker_init_fn

__all__ = ["ResumableSampler", "SeededDataset", "train_loader", "eval_loader"]


class ResumableSampler(Sampler):
    """Wraps an index sampler: yields ``(epoch, index)`` pairs and can skip the first ``start`` indices of an epoch."""

    def __init__(self, inner: Sampler, epoch: int = 0, start: int = 0):
        self.inner = inner
        self.epoch = epoch
        self.start = start

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        for i, idx in enumerate(self.inner):
            if i >= self.start:
                yield epoch, int(idx)

    def __len__(self) -> int:
        return max(len(self.inner) - self.start, 0)  # type: ignore[arg-type]


class SeededDataset(Dataset):
    """``dataset[index]`` loaded with python/numpy/torch RNGs seeded from (seed, epoch, index); indexed by pairs."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def _load(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        seed_sample(sample_seed(self.seed, epoch, index))
        return self.dataset[index]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[tuple[int, int]]) -> list[Any]:
        """A whole batch (the DataLoader calls this): the global RNGs are restored once per batch, and only in the
        main process (a worker's RNGs serve nothing else)."""
        guard = preserved_cpu_rng() if get_worker_info() is None else contextlib.nullcontext()
        with guard:
            return [self._load(k) for k in keys]


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _loader_kwargs(num_workers: int, device: torch.device, seed: int, persistent: bool) -> dict[str, Any]:
    # An explicit generator: creating an iterator never draws from (and so never disturbs) the global torch RNG.
    kw: dict[str, Any] = dict(num_workers=num_workers, pin_memory=device.type == "cuda",
                              worker_init_fn=worker_init_fn, generator=_generator(seed))
    if num_workers > 0:
        kw["persistent_workers"] = persistent
    return kw


def train_loader(dataset: Dataset, batch_size: int, num_workers: int, seed: int, dist_info: DistInfo,
                 device: torch.device, collate_fn: Callable[[Sequence[Any]], Any] = collate,
                 ) -> tuple[DataLoader, ResumableSampler]:
    """A shuffling, sharded, drop-last loader; call ``sampler.set_epoch(epoch, start)`` before each epoch."""
    make = getattr(dataset, "make_sampler", None)
    if callable(make):
        inner = make(num_replicas=dist_info.world_size, rank=dist_info.rank, seed=seed, shuffle=True)
    else:
        inner = DistributedSampler(dataset, num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=True,
                                   seed=seed, drop_last=True)
    per_rank = len(inner)  # type: ignore[arg-type]
    if per_rank < batch_size:
        raise EngineError(f"the training set has {len(dataset)} samples: fewer than one batch per process "  # type: ignore[arg-type]
                         f"(data.batch_size {batch_size} x {dist_info.world_size} processes)")
    sampler = ResumableSampler(inner)
    loader = DataLoader(SeededDataset(dataset, seed), batch_size=batch_size, sampler=sampler, drop_last=True,
                        collate_fn=collate_fn, **_loader_kwargs(num_workers, device, seed, True))
    return loader, sampler


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int, dist_info: DistInfo, device: torch.device,
                collate_fn: Callable[[Sequence[Any]], Any] = collate) -> DataLoader:
    """An in-order loader over this rank's shard (padded with repeats to equal length across ranks)."""
    sampler = ResumableSampler(DistributedSampler(dataset, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                                  shuffle=False, drop_last=False))
    # seeded per sample too: any randomness in loading is the same whatever the number of processes
    return DataLoader(SeededDataset(dataset, 0), batch_size=batch_size, sampler=sampler, drop_last=False,
                      collate_fn=collate_fn, **_loader_kwargs(num_workers, device, 0, False))
