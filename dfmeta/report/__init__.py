"""``dfmeta report``: run directories -> markdown tables in the TGR paper's layout, PNG plots of the analyses.

Modules: :mod:`~dfmeta.report.collect` (find and parse runs), :mod:`~dfmeta.report.cells` (mean ± CI per setting,
footnotes naming the runs), :mod:`~dfmeta.report.tables` (Table 1, scenarios, ablations, Fig. 6),
:mod:`~dfmeta.report.analyses` (Fig. 4, Fig. 5), :mod:`~dfmeta.report.curves` (meta-val against epoch),
:mod:`~dfmeta.report.diagnostics` (per-epoch training logs),
:mod:`~dfmeta.report.groups` (the task groups), :mod:`~dfmeta.report.machines` (where the runs ran),
:mod:`~dfmeta.report.plots` (matplotlib, optional),
:mod:`~dfmeta.report.paper` (the paper's numbers, shown in rows of their own).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from dfmeta.report.analyses import analysis_sections
from dfmeta.report.cells import LEGEND
from dfmeta.report.collect import Collection, collect
from dfmeta.report.curves import curves_section
from dfmeta.report.diagnostics import diagnostics_section
from dfmeta.report.groups import groups_section
from dfmeta.report.machines import machines_section
from dfmeta.report.plots import MISSING, PlotSink, fig6_png
from dfmeta.report.tables import Tables, dataset_name, other_table, render_tables, unfinished_table
from dfmeta.runs import atomic_write


def default_plot_dir(out: str) -> Path | None:
    """``report.md`` -> ``report_plots/`` beside it; none when printing to stdout."""
    return Path(out).with_name(Path(out).stem + "_plots") if out else None


def _count(n: int, noun: str) -> str:
    """``n`` and ``noun`` in the plural where n is not 1 ("1 finished run", "2 finished runs")."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def build_report(paths: Sequence[str], out: str = "", plots: str = "") -> str:
    """The markdown report of the runs under ``paths``; writes it to ``out`` (if given) and the plots to ``plots``
    (default: beside ``out``). Returns the markdown."""
    found = collect(paths)
    folder = Path(plots) if plots else default_plot_dir(out)
    sink = PlotSink(folder, Path(out).resolve().parent if out else Path.cwd())
    counts = (f"{_count(len(found.runs), 'finished run')}, {_count(len(found.analyses), 'analysis run')}, "
              f"{len(found.unfinished)} unfinished")
    lines = ["# dfmeta report", "", f"From {', '.join(f'`{p}`' for p in paths)}: {counts}.", "", LEGEND, ""]
    if folder is not None and not sink.enabled:
        print(MISSING, file=sys.stderr)
        lines += [f"> {MISSING}.", ""]
    tables = render_tables(found.runs)
    lines += tables.lines + fig6_lines(tables, sink)
    analysis_lines, unknown = analysis_sections(found.analyses, sink)
    lines += analysis_lines + other_table(tables.other) + unfinished_table(found.unfinished)
    trained = [*found.runs, *found.unfinished]
    lines += curves_section(trained, sink) + diagnostics_section(trained) + groups_section(found.runs)
    lines += machines_section(found.runs + found.analyses + found.unfinished)
    lines += left_out(found, [(r.path, f"unknown analysis {(r.analysis or {}).get('analysis')!r}") for r in unknown])
    text = "\n".join(lines).rstrip() + "\n"
    if out:
        atomic_write(out, text)
    return text


def fig6_lines(tables: Tables, sink: PlotSink) -> list[str]:
    """Fig. 6's plot from its table's cells (columns with a known number of teachers)."""
    series: dict[str, list[tuple[float, float, float]]] = {}
    for ((method, dataset, k), variant, n), cell in tables.teachers.items():
        if n != "all":
            label = f"{method} {dataset_name(dataset)} {k}-shot" + (f" [{variant}]" if variant else "")
            series.setdefault(label, []).append((n, cell.mean, cell.ci95))
    if not series:
        return []
    return sink.add("fig6_teachers.png", "Fig. 6: accuracy against the number of teachers",
                    lambda p: fig6_png(series, p))


def left_out(found: Collection, more: list[tuple[Path, str]]) -> list[str]:
    """Directories not reported and why; runs whose zoo was not found (assumed single-architecture)."""
    lines = []
    skipped = found.skipped + more
    if skipped:
        lines += ["## Left out", "", *(f"- `{p}`: {why}" for p, why in skipped), ""]
    noted = [(r.shown, n) for r in [*found.runs, *found.analyses, *found.unfinished] for n in r.notes]
    if noted:
        lines += ["## Read with a note", "", *(f"- `{shown}`: {n}" for shown, n in noted), ""]
    unknown = [r for r in found.runs if r.zoo_note]
    if unknown:
        lines += ["## Zoo architectures unknown", "", "These runs' zoo manifests are not readable from here, so "
                  "they count as single-architecture:", "",
                  *(f"- `{r.shown}`: {r.zoo_note}" for r in unknown), ""]
    return lines


__all__ = ["build_report"]
