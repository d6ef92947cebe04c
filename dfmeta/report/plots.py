"""PNG plots with matplotlib (an optional extra, ``pip install 'dfmeta[plot]'``), imported only when drawing.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global backend state).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Hashable

import numpy as np

MISSING = "matplotlib is not installed (pip install 'dfmeta[plot]'): no plots written, the tables are complete"


def available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


class PlotSink:
    """Writes PNGs into ``folder`` and returns the markdown that shows them (nothing without a folder or matplotlib)."""

    def __init__(self, folder: Path | None, markdown_dir: Path) -> None:
        self.folder, self.markdown_dir = folder, markdown_dir
        self.enabled = folder is not None and available()
        self.written: list[Path] = []

    def add(self, name: str, caption: str, draw: Callable[[Path], None]) -> list[str]:
        if not self.enabled:
            return []
        assert self.folder is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / name
        draw(path)
        self.written.append(path)
        return [f"![{caption}]({Path(os.path.relpath(path, self.markdown_dir)).as_posix()})", ""]


def _figure(panels: int) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(4.2 * panels, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, panels, i + 1) for i in range(panels)]


def fig4_png(stats: dict[str, Any], path: Path, title: str) -> None:
    """Mean W (± sd) against class overlap, and for same- against different-architecture / dataset pairs."""
    groups = [k for k in ("archs", "datasets") if k in stats["pairs"]]
    fig, axes = _figure(1 + len(groups))
    ov = stats["overlap"]
    axes[0].errorbar([r[0] for r in ov], [r[2] for r in ov], yerr=[r[3] for r in ov], fmt="o", capsize=4)
    axes[0].set(xlabel="classes shared by the pair", ylabel="dissimilarity W (mean ± sd)", xticks=[r[0] for r in ov])
    for ax, key in zip(axes[1:], groups):
        cats = stats["pairs"][key]
        names = list(cats)
        ax.errorbar(range(len(names)), [cats[n][1] for n in names], yerr=[cats[n][2] for n in names], fmt="o",
                    capsize=4)
        ax.set(xticks=range(len(names)), xticklabels=[f"{n} {key[:-1]}\n({cats[n][0]} pairs)" for n in names],
               xlim=(-0.5, len(names) - 0.5), ylabel="dissimilarity W (mean ± sd)")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=120)


def fig5_png(analysis: dict[str, Any], path: Path, title: str) -> None:
    """The gradient regulariser and the gradient cosine against epoch, IGR against ERM."""
    fig, axes = _figure(2)
    epochs = analysis["epochs"]
    for variant, series in analysis["runs"].items():
        for ax, key in zip(axes, ("regulariser", "cosine")):
            ax.plot(epochs, np.asarray(series[key], float), label=variant.upper(), lw=1)
    positive = all(v > 0 for s in analysis["runs"].values() for v in s["regulariser"])
    axes[0].set(xlabel="epoch", ylabel="regulariser (1/2m) Σ‖∇L_i − ∇L̄‖²", yscale="log" if positive else "linear")
    axes[1].set(xlabel="epoch", ylabel="mean pairwise cosine of ∇L_i")
    for ax in axes:
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=120)


def fig6_png(series: dict[Hashable, list[tuple[float, float, float]]], path: Path) -> None:
    """Accuracy (± 95% CI) against the number of teachers, one line per setting."""
    fig, (ax,) = _figure(1)
    for label, pts in series.items():
        pts = sorted(pts)
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                    label=str(label))
    ax.set(xlabel="number of teachers", ylabel="5-way accuracy (%)")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)


def val_curves_png(series: dict[str, list[tuple[int, float]]], selected: dict[str, int], path: Path) -> None:
    """Meta-val accuracy against epoch, one line per run; a ring marks each finished run's selected epoch."""
    fig, (ax,) = _figure(1)
    for label, pts in series.items():
        line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1, marker="." if len(pts) < 30 else None,
                        label=label)
        if label in selected and selected[label] in dict(pts):
            ax.plot([selected[label]], [dict(pts)[selected[label]]], "o", mfc="none", ms=8, color=line.get_color())
    ax.set(xlabel="epoch", ylabel="meta-val accuracy (%)")
    ax.legend(fontsize=6)
    fig.savefig(path, dpi=120)
