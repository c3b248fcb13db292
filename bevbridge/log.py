"""One logging setup for the whole package, and progress bars that do not fight with it.

Modules log with ``logging.getLogger(__name__)``; the CLI calls :func:`setup_logging` once. Log lines are written
through ``tqdm.write`` so they never tear a progress bar. Bars are off when ``BEVBRIDGE_NO_PROGRESS=1`` or on
non-zero distributed ranks.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

__all__ = ["setup_logging", "progress"]

T = TypeVar("T")


class _TqdmHandler(logging.StreamHandler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def setup_logging(verbose: bool = False) -> None:
    """INFO (or DEBUG with ``verbose``) for bevbridge, WARNING for third-party libraries, to stderr."""
    handler = _TqdmHandler()
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if verbose else "%(levelname)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("bevbridge").setLevel(logging.DEBUG if verbose else logging.INFO)


def _progress_disabled() -> bool:
    if os.environ.get("BEVBRIDGE_NO_PROGRESS", "") not in ("", "0"):
        return True
    return os.environ.get("RANK", "0") != "0"


def progress(iterable: Iterable[T] | None = None, desc: str = "", total: int | None = None, unit: str = "it",
             **kwargs) -> tqdm:
    """A tqdm bar (with ETA) for long work; refreshed at most once a second when not on a terminal."""
    kwargs.setdefault("mininterval", 0.2 if sys.stderr.isatty() else 5.0)
    return tqdm(iterable, desc=desc, total=total, unit=unit, dynamic_ncols=True, disable=_progress_disabled(),
                **kwargs)
