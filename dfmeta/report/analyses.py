"""The analysis runs: Fig. 4 (dissimilarity W against class overlap and architecture, from ``dfmeta group``) and
Fig. 5 (gradient regulariser and cosine over training, IGR against ERM, from ``dfmeta analyse igr``)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from dfmeta.errors import DfmetaError
from dfmeta.report.cells import md_table
from dfmeta.report.collect import Run, run_file
from dfmeta.report.plots import PlotSink, fig4_png, fig5_png


def _stats(w: np.ndarray) -> tuple[int, float, float]:
    """(pairs, mean, sd) of W over some pairs."""
    return int(w.size), float(w.mean()), float(w.std(ddof=1)) if w.size > 1 else 0.0


def dissimilarity_stats(run: Run) -> dict[str, Any]:
    """:func:`pair_stats` of a ``dfmeta group`` run."""
    return pair_stats(run.analysis or {}, str(run_file(run.path, "analysis.json")))


def overlap_rho(w: np.ndarray, overlap: np.ndarray) -> float | None:
    """Spearman's rank correlation of W against class overlap over pairs (None where the overlap is constant): a
    probe whose W tracks the classes teachers share gives a clearly negative rho."""
    if len(np.unique(overlap)) < 2 or len(np.unique(w)) < 2:
        return None
    from scipy.stats import spearmanr
    return float(spearmanr(w, overlap).statistic)


def pair_stats(a: dict[str, Any], where: str) -> dict[str, Any]:
    """W over teacher pairs (i < j): by class overlap ``[(k, pairs, mean, sd)]``, same against different
    architecture / dataset ``{"archs": {"same": (pairs, mean, sd), "different": ...}}`` where the zoo mixes them,
    and ``rho`` (:func:`overlap_rho`)."""
    try:
        W, ov = np.asarray(a["W"], np.float64), np.asarray(a["overlap"], np.int64)
    except (KeyError, ValueError, TypeError) as e:
        raise DfmetaError(f"{where}: 'W' and 'overlap' must be n x n number matrices ({e!r})") from None
    n = W.shape[0] if W.ndim else 0
    if W.shape != (n, n) or ov.shape != (n, n) or n < 2:
        raise DfmetaError(f"{where}: 'W' {W.shape} and 'overlap' {ov.shape} must be the same n x n shape, n >= 2")
    iu = np.triu_indices(n, 1)
    w, o = W[iu], ov[iu]
    out: dict[str, Any] = {"overlap": [(int(k), *_stats(w[o == k])) for k in np.unique(o)], "pairs": {},
                           "rho": overlap_rho(w, o)}
    for key in ("archs", "datasets"):
        labels = np.asarray(a.get(key) or [])
        if len(labels) != n:
            continue
        same = (labels[:, None] == labels[None, :])[iu]
        if same.any() and (~same).any():
            out["pairs"][key] = {"same": _stats(w[same]), "different": _stats(w[~same])}
    return out


def _file_name(run: Run) -> str:
    """The run's report name as one file-name part (two same-named runs get two plots)."""
    return run.shown.replace("/", "__")


def fig4_section(run: Run, sink: PlotSink) -> list[str]:
    """Fig. 4 of one ``dfmeta group`` run: a table of mean W by pair kind, and its plot."""
    s = dissimilarity_stats(run)
    rows = [[f"{k} shared classes", str(p), f"{m:.4f}", f"{sd:.4f}"] for k, p, m, sd in s["overlap"]]
    for key, cats in s["pairs"].items():
        rows += [[f"{c} {key[:-1]}", str(p), f"{m:.4f}", f"{sd:.4f}"] for c, (p, m, sd) in cats.items()]
    a = run.analysis or {}
    mix = "; ".join(f"{name}: " + ", ".join(f"{v} ({c})" for v, c in sorted(Counter(a.get(key) or []).items()))
                    for key, name in (("archs", "architectures"), ("datasets", "datasets")) if a.get(key))
    lines = [f"## Task dissimilarity (Fig. 4): `{run.shown}`", "",
             f"Dissimilarity W of teacher pairs ({len(a['W'])} teachers; {mix}) against the classes they share, and "
             "for pairs of the same or of different architecture / dataset where the zoo mixes them."
             + ("" if s["rho"] is None else f" Spearman's rho of W against the number of shared classes: "
                f"{s['rho']:.3f}."), "",
             *md_table(["pairs", "count", "mean W", "sd"], rows), ""]
    return lines + sink.add(f"fig4_{_file_name(run)}.png", f"Fig. 4, {run.shown}",
                            lambda p: fig4_png(s, p, f"Fig. 4: {run.shown}"))


def _check_igr(run: Run) -> dict[str, Any]:
    a, where = run.analysis or {}, run_file(run.path, "analysis.json")
    epochs, runs = a.get("epochs"), a.get("runs")
    if not isinstance(epochs, list) or not isinstance(runs, dict) or not runs:
        raise DfmetaError(f"{where}: an igr-vs-erm analysis needs 'epochs' (a list) and 'runs' ({{variant: series}})")
    for variant, series in runs.items():
        for key in ("regulariser", "cosine"):
            if not isinstance(series, dict) or len(series.get(key) or []) != len(epochs):
                raise DfmetaError(f"{where}: runs.{variant}.{key} must be a list with one value per epoch "
                                  f"({len(epochs)})")
    return a


def fig5_section(run: Run, sink: PlotSink) -> list[str]:
    """Fig. 5 of one ``dfmeta analyse igr`` run: late-training means of each update rule, and the curves."""
    a = _check_igr(run)
    half = max(1, len(a["epochs"]) // 2)
    rows = []
    for variant, series in a["runs"].items():
        vals = [np.nanmean(np.asarray(series[k], np.float64)[-half:]) if series.get(k) else float("nan")
                for k in ("regulariser", "cosine", "loss")]
        rows.append([variant.upper(), *(f"{v:.4g}" for v in vals)])
    lines = [f"## IGR against ERM (Fig. 5): `{run.shown}`", "",
             f"Both meta-models see the same recovered tasks (m = {a.get('teachers_per_epoch', '?')} teachers "
             f"drawn from {'one group per epoch' if a.get('groups_from') else 'the whole zoo'}, "
             f"beta = {a.get('beta', '?')}, {len(a['epochs'])} epochs); means over the last {half} epochs.", "",
             *md_table(["update", "regulariser", "cosine", "loss"], rows), ""]
    return lines + sink.add(f"fig5_{_file_name(run)}.png", f"Fig. 5, {run.shown}",
                            lambda p: fig5_png(a, p, f"Fig. 5: {run.shown}"))


SECTIONS = {"dissimilarity": fig4_section, "igr-vs-erm": fig5_section}


def analysis_sections(runs: list[Run], sink: PlotSink) -> tuple[list[str], list[Run]]:
    """Markdown (and plots) of each analysis run, in Fig. 4, Fig. 5 order; returns the runs of an unknown kind."""
    lines: list[str] = []
    for kind, section in SECTIONS.items():
        for r in sorted(runs, key=lambda r: r.shown):
            if (r.analysis or {}).get("analysis") == kind:
                lines += section(r, sink)
    unknown = [r for r in runs if (r.analysis or {}).get("analysis") not in SECTIONS]
    return lines, unknown
