"""What a run records: TensorBoard scalars, metrics.json per evaluation, a log file. Only rank 0 writes.

TensorBoard tags: ``train/loss`` (the optimised sum), ``train/<entry>`` for every entry of the model's loss dict
(loss per task, and logged-only values), ``train/lr`` and ``train/lr_<group>``, ``train/grad_norm``,
``train/samples_per_s`` (global; time inside training steps, data loading included, evaluation and checkpoints
excluded), ``train/skipped_steps``, ``model/<name>`` for model.scalars() (HUW sigmas, CTAB gates),
``eval/<evaluator>/<metric>`` for evaluation results. Losses are rank 0's, averaged over the logging window.
The same scalars are appended to ``<run>/scalars.jsonl`` (one ``{"step": s, "<tag>": value, ...}`` per line), for
plots and scripts that should not need TensorBoard.

A resumed run (:meth:`RunLog.resumed`) continues from its checkpoint's step k: TensorBoard hides the events after k
that the abandoned trajectory wrote (``purge_step``), and ``scalars.jsonl`` gets a ``{"step": k, "resumed": true}``
row, after which :func:`read_scalars` drops the earlier rows of steps after k.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping

from bevbridge.atomic import atomic_write_text

__all__ = ["RunLog", "write_metrics", "add_file_log", "read_scalars"]

log = logging.getLogger(__name__)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        try:
            return _json_safe(value.item())
        except (ValueError, RuntimeError):
            pass
    return value


def write_metrics(path: str | os.PathLike, metrics: Mapping[str, Any], **info: Any) -> Path:
    """Write ``{**info, "metrics": metrics}`` as JSON, atomically."""
    return atomic_write_text(path, json.dumps(_json_safe({**info, "metrics": dict(metrics)}), indent=1) + "\n")


def add_file_log(path: str | os.PathLike) -> logging.Handler:
    """Also write bevbridge's log lines to ``path`` (appending, so a resumed run keeps its history)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    logging.getLogger("bevbridge").addHandler(handler)
    return handler


def read_scalars(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of ``<run>/scalars.jsonl`` (empty if the run logged nothing).

    A line that is not JSON (the partial last line of a killed run, or such a line with the resumed run's rows
    after it) is skipped with a warning naming the file and the line numbers."""
    path = Path(run_dir) / "scalars.jsonl"
    if not path.is_file():
        return []
    rows, bad = [], []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad.append(n)
            continue
        if isinstance(row, dict) and row.get("resumed"):  # a resume from step k: the rows after k were abandoned
            rows = [r for r in rows if not (isinstance(r.get("step"), (int, float)) and r["step"] > row["step"])]
        else:
            rows.append(row)
    if bad:
        log.warning("%s: skipped %d unreadable line(s) (%s; a run killed while writing leaves a partial last line)",
                    path, len(bad), ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else ""))
    return rows


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


class RunLog:
    """TensorBoard scalars under ``<run>/tb``; a no-op on ranks other than 0."""

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._writer = None
        self._line_start_checked = False
        self._purge_step: int | None = None

    def _tb(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # slow import: only when something is logged

            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=self._purge_step)
        return self._writer

    def resumed(self, step: int) -> None:
        """The run continues from ``step`` (a checkpoint): later rows of an abandoned trajectory are hidden."""
        if not self.enabled:
            return
        self._purge_step = step + 1
        if (self.run_dir / "scalars.jsonl").is_file():
            self._append({"step": step, "resumed": True})

    def scalars(self, step: int, values: Mapping[str, float], prefix: str = "") -> None:
        if not self.enabled:
            return
        tb = self._tb()
        row: dict[str, Any] = {"step": step}
        for k, v in values.items():
            try:
                v = float(v)
            except (TypeError, ValueError):
                continue
            tb.add_scalar(f"{prefix}{k}", v, global_step=step)
            row[f"{prefix}{k}"] = v
        self._append(row)

    def _append(self, row: Mapping[str, Any]) -> None:
        with open(self.run_dir / "scalars.jsonl", "a") as f:
            if not self._line_start_checked:  # after a kill mid-line, start a new line rather than extend it
                self._line_start_checked = True
                if f.tell() > 0 and not _ends_with_newline(self.run_dir / "scalars.jsonl"):
                    f.write("\n")
            f.write(json.dumps(_json_safe(row)) + "\n")

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
