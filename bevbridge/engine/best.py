"""The best checkpoint: ``eval.best_metric`` checked against the evaluators before training, compared after each
evaluation.

Metrics are named ``<slot>/<metric>`` (``detection/NDS``, ``segmentation/mIoU-7@max``). Evaluators that declare
``metric_names()`` (all of bevbridge/eval/evaluators.py) let a misspelt name fail before the first step, with the
valid names; for one that does not declare them, only the slot can be checked, and a name it never produces is
reported (as a warning) at each evaluation.
"""

from __future__ import annotations

import difflib
import logging
import math
from typing import Any, Mapping

from bevbridge.engine.errors import BuildError

__all__ = ["check_best_metric", "is_improvement"]

log = logging.getLogger(__name__)


def _compact(names: list[str]) -> list[str]:
    """Per-class names folded: ``AP/car, AP/truck, AP/bus`` -> ``AP/<class>`` (3 or more with the same prefix)."""
    groups: dict[str, int] = {}
    for n in names:
        if "/" in n:
            groups[n.rpartition("/")[0]] = groups.get(n.rpartition("/")[0], 0) + 1
    out: list[str] = []
    for n in names:
        prefix = n.rpartition("/")[0]
        shown = f"{prefix}/<class>" if "/" in n and groups[prefix] >= 3 else n
        if shown not in out:
            out.append(shown)
    return out


def check_best_metric(key: str | None, evaluators: Mapping[str, Any]) -> None:
    """Raise BuildError (a config error: one line with the valid names, exit status 2) if ``key`` cannot be
    produced by ``evaluators``."""
    if key is None:
        return
    slot, _, metric = key.partition("/")
    if not evaluators:
        raise BuildError(f"eval.best_metric is {key!r} but there is nothing to evaluate (eval.evaluators is empty); "
                         f"set eval.evaluators or eval.best_metric=null")
    declared: dict[str, list[str]] = {}
    for name, ev in evaluators.items():
        names = getattr(ev, "metric_names", None)
        if callable(names):
            declared[name] = list(names())
    if slot in evaluators and (slot not in declared or metric in declared[slot]):
        return
    full = [f"{name}/{m}" for name, ms in declared.items() for m in ms]
    same_but_case = [n for n in full if n.lower() == key.lower()]
    close = same_but_case or difflib.get_close_matches(key, full, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    undeclared = [f"{name}/..." for name in evaluators if name not in declared]
    valid = ", ".join([f"{name}/{m}" for name, ms in declared.items() for m in _compact(ms)] + undeclared)
    why = "is not a metric of" if slot in evaluators else "names no evaluator slot of"
    raise BuildError(f"eval.best_metric {key!r} {why} eval.evaluators ({', '.join(evaluators)}){hint}; "
                     f"valid: {valid}")


def is_improvement(key: str | None, mode: str, metrics: Mapping[str, Any], best: Mapping[str, Any]) -> bool:
    """Whether ``metrics[key]`` beats ``best["value"]`` (``mode`` "max" or "min"); a NaN never does."""
    if key is None or not metrics:
        return False
    if key not in metrics:
        log.warning("eval.best_metric %r is not among the metrics of this evaluation (%s)", key, ", ".join(metrics))
        return False
    value = float(metrics[key])
    if not math.isfinite(value):
        return False
    if not best:
        return True
    return value > best["value"] if mode == "max" else value < best["value"]
