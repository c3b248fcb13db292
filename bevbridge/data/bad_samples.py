"""Skipping bad training samples: which ones were found bad, shared by a dataset's DataLoader workers.

``NuScenesDataset(..., skip_bad_samples=True)`` (``data.skip_bad_samples`` in a config, training set only) replaces a
sample whose sensor file is missing or corrupt by the next good one (index + 1, + 2, ..., wrapping), loaded with the
augmentation drawn for the index that was asked for, so the replacement is a pure function of the bad set. Each bad
sample is logged once (WARNING, with the file) and counted; past ``max_bad_fraction`` of the split the dataset
raises :class:`~bevbridge.data.integrity.TooManyBadSamples` instead of skipping.

The record is a byte per sample in shared memory (``multiprocessing.Array``), created before the DataLoader starts
its workers, so the workers and the main process see one record: a sample found bad in one worker is logged once
and skipped without being read again by the others and in later epochs. It is per process group: under torchrun
each rank has its own (the engine may sum the counts over ranks).

The engine reads the counts with :func:`skipped_samples` (see its docstring for the hook).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing as mp
from typing import Any, Sequence

import numpy as np

from bevbridge.data.integrity import DataFileError, TooManyBadSamples

__all__ = ["BadSamples", "SkippedSamples", "skipped_samples"]

log = logging.getLogger("bevbridge.data.nuscenes")


@dataclasses.dataclass(frozen=True)
class SkippedSamples:
    """A snapshot: ``count`` bad samples skipped so far of ``total``; up to ``allowed`` are tolerated."""

    count: int
    total: int
    allowed: int
    max_fraction: float
    tokens: tuple[str, ...]

    @property
    def fraction(self) -> float:
        return self.count / self.total if self.total else 0.0


class BadSamples:
    """The bad-sample record of one dataset: the sample ``tokens`` of split ``name`` (str or bytes), in index order."""

    def __init__(self, tokens: Sequence[str] | np.ndarray, max_fraction: float, name: str):
        if not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must lie in [0, 1], got {max_fraction}")
        self.tokens = tokens
        self.n = len(tokens)
        self.max_fraction = max_fraction
        self.allowed = math.floor(max_fraction * self.n + 1e-9)
        self.name = name
        self._flags = mp.Array("B", max(self.n, 1))  # zeroed shared memory, with a lock

    def token(self, i: int) -> str:
        t = self.tokens[i]
        return t.decode() if isinstance(t, bytes) else str(t)

    def _view(self) -> np.ndarray:
        return np.frombuffer(self._flags.get_obj(), np.uint8)[: self.n]

    def is_bad(self, i: int) -> bool:
        return bool(self._view()[i])

    def count(self) -> int:
        return int(self._view().sum())

    def record(self, i: int, error: DataFileError) -> None:
        """Mark sample i bad: log it once (with the file); raise TooManyBadSamples past the allowed count."""
        with self._flags.get_lock():
            flags = self._view()
            first = not flags[i]
            flags[i] = 1
            count = int(flags.sum())
        limit = f"max_bad_fraction={self.max_fraction:g} allows {self.allowed} of {self.n}"
        if count > self.allowed:
            raise TooManyBadSamples(
                f"{count} bad sample(s) in split {self.name!r}, more than {limit}; the latest: {error}. Fix or "
                f"remove the files (`bevbridge check-data CONFIG` lists every bad file), or raise "
                f"data.max_bad_fraction")
        if first:
            log.warning("skipping bad sample %s (split %r, index %d): %s; %d skipped so far (%s)",
                        self.token(i), self.name, i, error, count, limit)

    def snapshot(self) -> SkippedSamples:
        bad = np.nonzero(self._view())[0]
        return SkippedSamples(len(bad), self.n, self.allowed, self.max_fraction,
                              tuple(self.token(int(i)) for i in bad))


def skipped_samples(dataset: Any) -> SkippedSamples | None:
    """The skipped-sample counts of a training set, or None if it does not skip (``data.skip_bad_samples`` off).

    Engine hook: call it in the main process with the training set as built (it unwraps ``.dataset`` wrappers:
    CBGSDataset, the loader's SeededDataset) at each logging step, e.g.
    ``s = skipped_samples(train_set); if s is not None: scalars["data/skipped_samples"] = s.count``. Cheap (one pass
    over a byte per sample). Counts are this process's (and its DataLoader workers'); sum them over ranks for a
    global figure."""
    seen = 0
    while dataset is not None and seen < 8:
        bad = getattr(dataset, "bad_samples", None)
        if isinstance(bad, BadSamples):
            return bad.snapshot()
        dataset = getattr(dataset, "dataset", None)
        seen += 1
    return None
