"""PNG plots with matplotlib (an optional extra, ``pip install 'dfmeta[plot]'``), imported only when drawing.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global backend state).
"""

from __future__ import annotations

import os
import textwrap
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


def _save(fig: Any, path: Path) -> None:
    """Write ``fig`` as a PNG atomically (a kill never leaves half a plot) and close it."""
    import io

    import matplotlib.pyplot as plt

    from dfmeta.runs import atomic_write
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def _figure(panels: int, legend: tuple[float, float] = (0.0, 0.0)) -> tuple[Any, list[Any]]:
    """A figure of ``panels`` side by side, widened (and heightened) for a ``legend`` of that size beside them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(4.2 * panels + legend[0], max(3.4, legend[1] + 0.8)), layout="constrained")
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
    _save(fig, path)


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
    _save(fig, path)


# Legend entries that fit inside one panel; more go in columns to the right of it, in a wider figure.
LEGEND_INSIDE = 8
LEGEND_ROWS = 20
LEGEND_WRAP = 48
"""Characters per line of a legend entry (longer labels wrap)."""


def _wrapped(labels: list[str]) -> list[str]:
    return [textwrap.fill(str(label), LEGEND_WRAP) for label in labels]


def _legend(ax: Any, fontsize: int) -> None:
    """The panel's legend: inside for a few lines, else beside the panel in columns of LEGEND_ROWS entries."""
    handles, labels = ax.get_legend_handles_labels()
    labels = _wrapped(labels)
    if len(labels) <= LEGEND_INSIDE:
        ax.legend(handles, labels, fontsize=fontsize)
    else:
        ax.legend(handles, labels, fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  borderaxespad=0.0, ncols=-(-len(labels) // LEGEND_ROWS))


def _style(i: int) -> dict[str, Any]:
    """The i-th line's style: matplotlib's ten colours, then the same colours dashed, dotted, dash-dotted."""
    return {"color": f"C{i % 10}", "linestyle": ("-", "--", ":", "-.")[i // 10 % 4]}


def _legend_size(labels: list[str], fontsize: int) -> tuple[float, float]:
    """Inches (width, height) a legend beside its panel needs (see :func:`_legend`); none for one inside it."""
    if len(labels) <= LEGEND_INSIDE:
        return 0.0, 0.0
    lines = [ln for label in _wrapped(labels) for ln in label.splitlines()]
    cols = -(-len(labels) // LEGEND_ROWS)
    char = 0.6 * fontsize / 72  # an average glyph's width, inches
    rows = -(-len(lines) // cols)
    return cols * (0.5 + char * max(map(len, lines))), rows * 1.4 * fontsize / 72


def fig6_png(series: dict[Hashable, list[tuple[float, float, float]]], path: Path) -> None:
    """Accuracy (± 95% CI) against the number of teachers, one line per setting."""
    fig, (ax,) = _figure(1, _legend_size([str(k) for k in series], 7))
    for i, (label, pts) in enumerate(series.items()):
        pts = sorted(pts)
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                    label=str(label), **_style(i))
    ax.set(xlabel="number of teachers", ylabel="5-way accuracy (%)")
    _legend(ax, 7)
    _save(fig, path)


def val_curves_png(series: dict[str, list[tuple[int, float]]], selected: dict[str, int], path: Path) -> None:
    """Meta-val accuracy against epoch, one line per run; a ring marks each finished run's selected epoch."""
    fig, (ax,) = _figure(1, _legend_size(list(series), 6))
    for i, (label, pts) in enumerate(series.items()):
        line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1, marker="." if len(pts) < 30 else None,
                        label=label, **_style(i))
        if label in selected and selected[label] in dict(pts):
            ax.plot([selected[label]], [dict(pts)[selected[label]]], "o", mfc="none", ms=8, color=line.get_color())
    ax.set(xlabel="epoch", ylabel="meta-val accuracy (%)")
    _legend(ax, 6)
    _save(fig, path)
