"""A self-contained HTML report (index.html) linking a run's metrics and figures."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Mapping, Sequence

from bevbridge.atomic import atomic_write_text

__all__ = ["write_report"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
figure{display:inline-block;margin:0.5em;vertical-align:top}figcaption{font-size:0.85em;color:#555;max-width:600px}
img{max-width:600px;border:1px solid #ddd}.note{color:#555;font-size:0.9em}
"""


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return html.escape(str(v))


def _table(title: str, rows: Mapping[str, object], columns: Sequence[str] = ("value",)) -> str:
    """Rows ``{name: value}``, or ``{name: (value per column)}`` with ``columns`` naming them."""
    cells = lambda v: "".join(f"<td>{_fmt(x)}</td>" for x in (v if isinstance(v, tuple) else (v,)))  # noqa: E731
    body = "".join(f"<tr><td>{html.escape(str(k))}</td>{cells(v)}</tr>" for k, v in rows.items())
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    return f"<h3>{html.escape(title)}</h3><table><tr><th>metric</th>{head}</tr>{body}</table>"


def write_report(out_dir: str | Path, title: str, sections: Sequence[tuple], figures: Sequence[tuple[str, str]],
                 notes: Sequence[str] = (), metrics_file: str | None = None) -> Path:
    """Write ``out_dir/index.html``: metric tables (``[(title, {name: value})]``, or ``[(title, {name: (values)},
    column names)]``), figures (``[(relative path, caption)]``) and free-text notes. Paths are relative so the folder
    can be moved or served as is."""
    out_dir = Path(out_dir)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    for n in notes:
        parts.append(f"<p class='note'>{html.escape(n)}</p>")
    if metrics_file:
        parts.append(f"<p>Raw metrics: <a href='{html.escape(metrics_file)}'>{html.escape(metrics_file)}</a></p>")
    for section in sections:
        parts.append(_table(*section))
    parts.append("<h2>Figures</h2>")
    for rel, caption in figures:
        if not (out_dir / rel).exists():
            raise FileNotFoundError(f"report figure missing: {out_dir / rel}")
        parts.append(f"<figure><a href='{html.escape(rel)}'><img src='{html.escape(rel)}'></a>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return atomic_write_text(out_dir / "index.html", "\n".join(parts))


def load_metrics(path: str | Path) -> dict:
    """Read a metrics.json written by the engine."""
    return json.loads(Path(path).read_text())
