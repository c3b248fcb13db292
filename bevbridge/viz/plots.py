"""Training and evaluation plots: CTAB gate evolution (Fig. 3) and per-class IoU bars (Fig. 5)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from bevbridge.atomic import atomic_path

__all__ = ["plot_gate_evolution", "plot_per_class_iou", "plot_loss_curves"]


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")
    return Path(path)


def plot_gate_evolution(steps: Sequence[int], gate_seg: Sequence[float], gate_det: Sequence[float],
                        path: str | Path, init: float | None = None) -> Path:
    """Fig. 3: sigma(g_seg) (Det->Seg) and sigma(g_det) (Seg->Det) against training step."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(steps, gate_seg, "o-", color="#7b3294", ms=3, label=r"$\sigma(g_{seg})$ (Det$\to$Seg)")
    ax.plot(steps, gate_det, "o--", color="#2c7bb6", ms=3, label=r"$\sigma(g_{det})$ (Seg$\to$Det)")
    if init is not None:
        ax.axhline(init, color="grey", lw=0.8, ls=":", label=f"init {init:.2f}")
    ax.set_xlabel("training step")
    ax.set_ylabel("gate value")
    ax.set_title("CTAB confidence gate evolution")
    ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_per_class_iou(per_class: Mapping[str, Mapping[str, float]], path: str | Path, title: str = "",
                       mean_key: str | None = None, means: Mapping[str, float] | None = None) -> Path:
    """Fig. 5: grouped bars of per-class IoU for one or more runs (``{run: {class: iou}}``), dotted run means."""
    plt = _figure()
    runs = list(per_class)
    classes = list(next(iter(per_class.values())))
    fig, ax = plt.subplots(figsize=(1.1 * len(classes) + 2, 3.8))
    width = 0.8 / max(len(runs), 1)
    colours = ["#2c7bb6", "#7b3294", "#1a9641", "#d7191c"]
    for r, run in enumerate(runs):
        xs = [i + (r - (len(runs) - 1) / 2) * width for i in range(len(classes))]
        vals = [100 * per_class[run].get(c, 0.0) for c in classes]
        ax.bar(xs, vals, width, label=run, color=colours[r % len(colours)])
        if means is not None and run in means:
            ax.axhline(100 * means[run], color=colours[r % len(colours)], ls=":", lw=1)
    ax.set_xticks(range(len(classes)))
    ax.set_xticklabels([c.replace("_", "\n") for c in classes], fontsize=8)
    ax.set_ylabel("IoU (%)")
    ax.set_title(title or "Per-class BEV segmentation IoU")
    ax.legend(frameon=False)
    ax.grid(axis="y", alpha=0.3)
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_loss_curves(curves: Mapping[str, tuple[Sequence[int], Sequence[float]]], path: str | Path) -> Path:
    """Training curves ``{name: (steps, values)}`` on one log-scale axis."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, (steps, vals) in curves.items():
        ax.plot(steps, vals, label=name, lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    out = _save(fig, path)
    plt.close(fig)
    return out
