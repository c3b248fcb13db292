"""Value checks the schemas' ``__post_init__`` share: each raises ValueError with one line naming the key, which the
loader prefixes with the section and where the value came from (config/loader.py). Finiteness of every float is
checked by the loader itself."""

from __future__ import annotations

from typing import Sequence

__all__ = ["check_range", "check_box_range", "check_size", "check_probability", "check_run_name"]


def check_range(key: str, pair: Sequence[float], *, strict: bool = False, low: float | None = None) -> None:
    """``pair`` is ``(low, high)`` with low <= high (< if ``strict``), and low >= ``low`` if given."""
    lo, hi = pair[0], pair[1]
    if lo > hi or (strict and lo == hi):
        raise ValueError(f"{key} must be (low, high) with low {'<' if strict else '<='} high, got {tuple(pair)}")
    if low is not None and lo < low:
        raise ValueError(f"{key} must lie at or above {low}, got {tuple(pair)}")


def check_box_range(key: str, box: Sequence[float]) -> None:
    """``box`` is ``(min_1, ..., min_n, max_1, ..., max_n)`` with every min < max."""
    n = len(box) // 2
    if len(box) % 2 or any(box[i] >= box[i + n] for i in range(n)):
        raise ValueError(f"{key} must be ({', '.join(['min'] * n)}, {', '.join(['max'] * n)}) with each min < max, "
                         f"got {tuple(box)}")


def check_size(key: str, size: Sequence[int] | None) -> None:
    """Every entry of an image/grid size is >= 1 (``None`` = not set)."""
    if size is not None and any(v < 1 for v in size):
        raise ValueError(f"{key} must be positive, got {tuple(size)}")


def check_probability(key: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{key} must lie in [0, 1], got {p}")


def check_run_name(name: str) -> None:
    """A run name becomes a folder under train.out_dir: one plain path component."""
    if not name or name.strip() != name or "/" in name or "\\" in name or ".." in name or name.startswith(".") \
            or "\0" in name:
        raise ValueError(f"name must be one plain folder name (no '/', '\\\\', '..', leading '.' or surrounding "
                         f"spaces; runs go to <train.out_dir>/<name>/), got {name!r}")
