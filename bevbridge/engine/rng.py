"""Seeding and random-number-generator state: what makes a run repeatable and a resume bit-identical.

Three kinds of randomness, three rules:
- model-side (dropout, sampling in heads): the global torch RNG of each process, seeded by :func:`seed_everything`
  and saved/restored with every checkpoint (:func:`get_rng_state` / :func:`set_rng_state`);
- data order: the samplers' own generators, a pure function of (seed, epoch) (engine/loader.py);
- data augmentation: each sample is loaded with the python/numpy/torch RNGs seeded from (seed, epoch, index)
  (:func:`sample_seed`, :class:`sample_rng`), so a sample's augmentation does not depend on the number of
  workers, on which worker loads it, on the number of processes, or on where a resumed run starts.

All states are plain tensors, so a checkpoint holding them loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any, Iterator

import numpy as np
import torch

__all__ = ["seed_everything", "get_rng_state", "set_rng_state", "sample_seed", "seed_sample", "sample_rng",
           "preserved_rng", "preserved_cpu_rng", "worker_init_fn"]

_MASK64 = (1 << 64) - 1


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for (seed, epoch, index) (SplitMix64 finaliser over the three)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB + 1) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) >> 1


def get_rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch CPU and CUDA RNG states, as tensors and ints only."""
    py = random.getstate()  # (version, tuple of 625 ints, gauss_next)
    np_state = np.random.get_state()  # ('MT19937', uint32[624], pos, has_gauss, cached_gaussian)
    state: dict[str, Any] = {
        "python": torch.tensor(py[1], dtype=torch.int64),
        "python_version": int(py[0]),
        "python_gauss": py[2],
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a state from :func:`get_rng_state`."""
    random.setstate((state["python_version"], tuple(int(v) for v in state["python"].tolist()), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block (e.g. an evaluation) without disturbing any global RNG of this process."""
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def seed_sample(seed: int) -> None:
    """Seed python, numpy and torch's CPU RNG for loading one sample (CUDA RNGs are left alone)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.random.default_generator.manual_seed(seed)


@contextlib.contextmanager
def preserved_cpu_rng() -> Iterator[None]:
    """Put python's, numpy's and torch's CPU RNG states back after the block (about 0.1 ms, mostly numpy's copy)."""
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


@contextlib.contextmanager
def sample_rng(seed: int) -> Iterator[None]:
    """Seed python, numpy and torch's CPU RNG with ``seed`` for one block, then put the previous states back."""
    with preserved_cpu_rng():
        seed_sample(seed)
        yield


def worker_init_fn(worker_id: int) -> None:
    """DataLoader workers: seed python and numpy from the per-worker torch seed (torch alone seeds only itself)."""
    s = torch.initial_seed() % (1 << 32)
    random.seed(s)
    np.random.seed(s)
