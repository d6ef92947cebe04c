"""The report's tables in the paper's layout: Table 1 (main), the scenarios, Tables 4-6 and 8, Fig. 6 as a table.

Each finished run lands in exactly one place, by its scenario and the ablation switches it sets away from the
paper's defaults (:data:`dfmeta.report.collect.ABLATION_DEFAULTS`, and a baseline's own switches,
:data:`~dfmeta.report.collect.METHOD_SWITCHES`); ablation tables repeat the default TGR runs of
the same datasets as their reference row. Runs of one setting whose other config fields differ (say ``rec_nf``)
are not averaged together: they get rows of their own, labelled with the differing fields.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable

from dfmeta.report import paper
from dfmeta.report.cells import Cell, Entry, Sources, md_table, short
from dfmeta.report.collect import COORDINATES, IGNORED, NOT_APPLIED, SPEED, Run

DATASET_NAMES = {"cifar-fs": "CIFAR-FS", "miniimagenet": "miniImageNet", "cub": "CUB", "fc100": "FC100",
                 "omniglot": "Omniglot"}
METHOD_NAMES = {"finetune": "Finetune", "best-model": "Best-Model", "average": "Average", "ota": "OTA", "dro": "DRO",
                "purer": "PURER", "bidf-mkd": "BiDf-MKD", "tgr": "TGR",
                "maml-real": "MAML on real data (not data-free)"}
PAPER = f"*paper* ({paper.CITATION})"

ABLATION_ROWS = {("off", "off"): "vanilla", ("dissimilarity", "off"): "+ grouping", ("off", "first"): "+ IGR",
                 ("off", "second"): "+ IGR (second-order)", ("dissimilarity", "first"): "TGR",
                 ("dissimilarity", "second"): "TGR (second-order IGR)"}
LOSS_ROWS = {(True, False): "KD only", (False, True): "CE only", (True, True): "KD + CE (TGR)"}
GROUPING_ROWS = {("similarity",): "similarity grouping", ("dissimilarity",): "dissimilarity grouping (TGR)"}


def dataset_name(d: str) -> str:
    """The paper's spelling of a dataset (or of several joined by '+')."""
    return "+".join(DATASET_NAMES.get(p, p) for p in d.split("+"))


def domain_name(split: str) -> str:
    """A domain of a multi-domain result, named by its test split (``cifar-fs/test``, or ``cifar-fs/test (first 20/
    class)`` for a cut one): the dataset's name, and the cut if any."""
    dataset, _, rest = split.partition("/")
    return dataset_name(dataset) + (f" {rest.split(' ', 1)[1]}" if " " in rest else "")


def method_name(m: str) -> str:
    """The paper's spelling of a method."""
    return METHOD_NAMES.get(m, m)


def _dataset_sort(d: str) -> tuple:
    known = list(DATASET_NAMES)
    return (known.index(d) if d in known else len(known), d)


def _shot_col(col: tuple[str, int]) -> str:
    return f"{dataset_name(col[0])} {col[1]}-shot"


def _in_order(order: Iterable[str]) -> Callable[[str], tuple]:
    order = list(order)
    return lambda label: (order.index(label) if label in order else len(order), label)


def variant_labels(runs: list[Run]) -> dict[Path, str]:
    """For each run, the config fields (beyond coordinates, ignored ones and fast paths) that differ between runs of
    one dataset (a value that did not apply, :data:`~dfmeta.report.collect.NOT_APPLIED`, differs from none and is
    not shown)."""
    by_ds: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        by_ds[r.dataset].append(r)
    differ: set[str] = set()
    for group in by_ds.values():
        keys = set().union(*(r.config for r in group)) - IGNORED - COORDINATES - SPEED
        differ |= {f for f in keys if len({json.dumps(r.config.get(f), sort_keys=True) for r in group
                                           if r.config.get(f) != NOT_APPLIED}) > 1}
    return {r.path: ", ".join(f"{f}={short(r.config.get(f))}" for f in sorted(differ)
                              if r.config.get(f) != NOT_APPLIED) for r in runs}


Point = tuple[Hashable, Hashable, Entry]
"""(row, column, one run's number)."""


def grid(points: list[Point]) -> dict[tuple[Hashable, str, Hashable], Cell]:
    """Cells keyed by (row, variant, column): a row's runs that differ in other config fields get separate variants."""
    runs: dict[Hashable, dict[Path, Run]] = defaultdict(dict)
    for row, _, e in points:
        runs[row][e.run.path] = e.run
    labels = {row: variant_labels(list(rs.values())) for row, rs in runs.items()}
    entries: dict[tuple[Hashable, str, Hashable], list[Entry]] = defaultdict(list)
    for row, col, e in points:
        entries[(row, labels[row][e.run.path], col)].append(e)
    return {key: Cell.pick(es) for key, es in entries.items()}


@dataclass
class GridTable:
    """A table of rows (a setting) by columns, ours and the paper's rows, with the runs behind each cell."""

    title: str
    caption: str
    row_header: list[str]
    row_cells: Callable[[Any], list[str]]
    row_sort: Callable[[Any], Any]
    col_header: Callable[[Any], str]
    col_sort: Callable[[Any], Any] = lambda c: c
    paper: dict[Hashable, dict[Hashable, float]] = field(default_factory=dict)
    paper_label: str = PAPER

    def render(self, points: list[Point]) -> list[str]:
        cells = grid(points)
        cols = sorted({c for _, _, c in cells}, key=self.col_sort)
        variants: dict[Hashable, set[str]] = defaultdict(set)
        for row, var, _ in cells:
            variants[row].add(var)
        theirs = {row for row, vals in self.paper.items() if any(c in vals for c in cols)}
        sources, rows = Sources(), []
        for row in sorted(set(variants) | theirs, key=self.row_sort):
            for var in sorted(variants.get(row, ())):
                label = self.row_cells(row)
                if var:
                    label = [f"{label[0]} [{var}]", *label[1:]]
                texts = [cells[(row, var, c)].text(sources) if (row, var, c) in cells else "—" for c in cols]
                rows.append([*label, "ours", *texts])
            if row in theirs:
                vals = self.paper[row]
                rows.append([*self.row_cells(row), self.paper_label,
                             *(f"{vals[c]:.2f}" if c in vals else "—" for c in cols)])
        header = [*self.row_header, "source", *map(self.col_header, cols)]
        return [f"## {self.title}", "", self.caption, "", *md_table(header, rows), "", *sources.lines(), ""]


def shot_points(runs: Iterable[Run], row_of: Callable[[Run], Hashable]) -> list[Point]:
    """(row, (dataset, K), entry) for every K each run was tested at."""
    return [(row_of(r), (r.dataset, k), e) for r in runs for k in r.shots() if (e := Entry.of(r, k)) is not None]


def _dataset_shot_sort(col: tuple[str, int]) -> tuple:
    return (_dataset_sort(col[0]), col[1])


def _by_method(title: str, caption: str, paper_rows: dict[str, dict[Hashable, float]] | None = None,
               paper_label: str = PAPER) -> GridTable:
    return GridTable(title, caption, ["method"], lambda m: [m], _in_order(paper.METHOD_ORDER), _shot_col,
                     _dataset_shot_sort, paper_rows or {}, paper_label)


@dataclass(frozen=True)
class SwitchTable:
    """An ablation table: one row per combination of some TGR switches, columns (dataset, K)."""

    title: str
    caption: str
    header: str
    fields: tuple[str, ...]
    labels: dict[tuple, str]
    paper: dict[Hashable, dict[Hashable, float]] = field(default_factory=dict)

    def label(self, run: Run) -> str:
        values = tuple(run.config.get(f) for f in self.fields)
        return self.labels.get(values) or ", ".join(f"{f}={short(v)}" for f, v in zip(self.fields, values))

    def points(self, runs: list[Run]) -> list[Point]:
        return shot_points(runs, self.label)

    def table(self) -> GridTable:
        return GridTable(self.title, self.caption, [self.header], lambda v: [v], _in_order(self.labels.values()),
                         _shot_col, _dataset_shot_sort, dict(self.paper))


NOT_TRANSCRIBED = "The paper's numbers for this table are not transcribed in docs/method.md."
SWITCH_TABLES = {
    "ablation": SwitchTable("Ablation: task grouping and IGR (Table 4)", "TGR with its two components switched off "
                            "(config fields `grouping`, `igr`).", "variant", ("grouping", "igr"), ABLATION_ROWS,
                            paper.ABLATION),
    "loss": SwitchTable("Loss components (Table 5)", f"The terms of Eq. 8 (config fields `kd`, `ce`). "
                        f"{NOT_TRANSCRIBED}", "loss", ("kd", "ce"), LOSS_ROWS),
    "similarity": SwitchTable("Similarity against dissimilarity grouping (Table 8)", "Teachers grouped with similar "
                              f"(config `grouping=similarity`) or dissimilar ones. {NOT_TRANSCRIBED}", "grouping",
                              ("grouping",), GROUPING_ROWS),
}


def placement(run: Run) -> str:
    """Which table a finished run belongs to (``other`` where none fits)."""
    dev = run.deviations()
    if not dev:
        return "main" if run.scenario == "single" else run.scenario
    if run.scenario != "single":
        return "other"
    if dev == {"zoo_size"}:
        return "zoo-size"
    if run.method != "tgr":
        return "other"
    if dev <= {"grouping", "igr"} and run.config.get("grouping") != "similarity":
        return "ablation"
    if dev <= {"kd", "ce"}:
        return "loss"
    return {frozenset({"grouping"}): "similarity", frozenset({"groups"}): "groups"}.get(frozenset(dev), "other")


@dataclass
class Tables:
    """The rendered tables, the runs placed in none of them, and Fig. 6's cells for its plot."""

    lines: list[str] = field(default_factory=list)
    other: list[Run] = field(default_factory=list)
    teachers: dict[tuple[Hashable, str, Hashable], Cell] = field(default_factory=dict)


def render_tables(runs: list[Run]) -> Tables:
    """Every table that has runs, in the paper's order."""
    placed: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        placed[placement(r)].append(r)
    out = Tables(other=placed["other"])

    def with_reference(name: str, to_points: Callable[[list[Run]], list[Point]]) -> list[Point]:
        """The points of an ablation table's runs, plus those of the default runs (the main table's) of the same
        method at the same dataset and K, as the reference."""
        own = to_points(placed[name])
        settings = {(e.run.method, e.run.dataset, e.k) for *_, e in own}
        ref = [r for r in placed["main"] if (r.method, r.dataset) in {s[:2] for s in settings}]
        return own + [p for p in to_points(ref) if (p[2].run.method, p[2].run.dataset, p[2].k) in settings]

    if placed["main"]:
        out.lines += _by_method("Main results (Table 1)", "5-way accuracy (%) on meta-test, one row per method; "
                                "meta-training methods meta-trained at the column's K.", dict(paper.TABLE1),
                                ).render(shot_points(placed["main"], _method_row))
    if placed["multi-domain"]:
        out.lines += multi_domain_table(placed["multi-domain"])
    if placed["multi-arch"]:
        out.lines += multi_arch_table(placed["multi-arch"])
    for name in ("ablation", "loss"):
        if placed[name]:
            out.lines += SWITCH_TABLES[name].table().render(with_reference(name, SWITCH_TABLES[name].points))
    if placed["groups"]:
        out.lines += GridTable("Number of groups c (Table 6)", "TGR with c task groups (config field `groups`); "
                               "columns: c.", ["dataset", "K"], _dataset_shot_cells, _dataset_shot_sort,
                               lambda c: f"c = {c}", paper=dict(paper.GROUPS),
                               ).render(with_reference("groups", lambda rs: _transposed(rs, _groups)))
    if placed["similarity"]:
        spec = SWITCH_TABLES["similarity"]
        out.lines += spec.table().render(with_reference("similarity", spec.points))
    if placed["zoo-size"]:
        pts = with_reference("zoo-size", lambda rs: [((_method_row(e.run), *row), col, e)
                                                     for row, col, e in _transposed(rs, n_teachers)])
        out.teachers = grid(pts)
        out.lines += GridTable("Accuracy against the number of teachers (Fig. 6)", "A seeded random subset of the "
                               "zoo (config field `zoo_size`); columns: number of teachers (all: the whole zoo, "
                               "size unknown here). The paper's numbers are a figure, not transcribed.",
                               ["method", "dataset", "K"], lambda row: [row[0], *_dataset_shot_cells(row[1:])],
                               lambda row: (_in_order(paper.METHOD_ORDER)(row[0]), _dataset_shot_sort(row[1:])),
                               lambda n: f"{n} teachers" if n != "all" else "all",
                               lambda n: (n == "all", n if n != "all" else 0)).render(pts)
    return out


def _method_row(run: Run) -> str:
    return method_name(run.method)


def _groups(run: Run) -> Hashable:
    return run.config.get("groups")


def n_teachers(run: Run) -> int | str:
    """Teachers the run used: ``zoo_size``, else how many its results (or its zoo's manifest) name, else ``all``."""
    size = run.config.get("zoo_size") or 0
    return size or (len(run.archs) if run.archs else "all")


def _dataset_shot_cells(row: tuple[str, int]) -> list[str]:
    return [dataset_name(row[0]), str(row[1])]


def _transposed(runs: Iterable[Run], col_of: Callable[[Run], Hashable]) -> list[Point]:
    """Rows (dataset, K), columns ``col_of(run)``."""
    return [((r.dataset, k), col_of(r), e) for r in runs for k in r.shots() if (e := Entry.of(r, k)) is not None]


def _paper_elsewhere(theirs: dict[str, dict[int, float]], where: str) -> str:
    """A caption line quoting the paper's scenario numbers measured on another benchmark than the runs'."""
    vals = "; ".join(f"{m} " + " / ".join(f"{v:.2f} ({k}-shot)" for k, v in sorted(ks.items()))
                     for m, ks in theirs.items())
    return (f" The paper's numbers ({paper.CITATION}: {vals}) were measured on {where}, which no run here used; "
            "they are not placed beside these columns.")


def multi_domain_table(runs: list[Run]) -> list[str]:
    """Multi-domain scenario: accuracy over all test episodes and on each domain's share of them. The paper's row
    sits only under a run on the paper's datasets (CIFAR-FS, miniImageNet, CUB)."""
    pts: list[Point] = []
    for r in runs:
        for k in r.shots():
            domains = [None, *sorted(((r.test(k) or {}).get("domains") or {}))]
            pts += [(method_name(r.method), (r.dataset, k, d), e) for d in domains
                    if (e := Entry.of(r, k, d)) is not None]
    same = {r.dataset for r in runs if set(r.dataset.split("+")) == paper.MULTI_DOMAIN_DATASETS}
    theirs = {m: {(d, k, None): v for k, v in vals.items() for d in same} for m, vals in paper.MULTI_DOMAIN.items()}
    caption = ("A zoo of teachers from several datasets; test episodes spread evenly over the datasets (all domains), "
               "and the accuracy on each dataset's share.")
    if not same:
        caption += _paper_elsewhere(paper.MULTI_DOMAIN, paper.MULTI_DOMAIN_DOMAINS)

    def header(col: tuple[str, int, str | None]) -> str:
        return f"{_shot_col(col[:2])}: {'all domains' if col[2] is None else domain_name(col[2])}"

    return GridTable("Multi-domain scenario (Table 2)", caption, ["method"], lambda m: [m],
                     _in_order(paper.METHOD_ORDER), header,
                     lambda c: (_dataset_sort(c[0]), c[1], c[2] is not None, c[2] or ""), theirs,
                     f"*paper* ({paper.CITATION}; {paper.MULTI_DOMAIN_DOMAINS})").render(pts)


def _mix(run: Run) -> str:
    return "+".join(sorted(set(run.archs or ())))


def multi_arch_table(runs: list[Run]) -> list[str]:
    """Multi-architecture scenario: a zoo of several architectures, one row per method (and per mix of
    architectures, where the runs used several). The paper's row sits only under a CIFAR-FS run whose zoo mixes
    the paper's three architectures."""
    mixes = sorted({_mix(r) for r in runs})
    if len(mixes) > 1:
        row_of: Callable[[Run], str] = lambda r: f"{method_name(r.method)} [{_mix(r)}]"  # noqa: E731
        caption = "Zoos mixing several architectures; each row names its zoo's mix."
    else:
        row_of, caption = _method_row, f"A zoo mixing {', '.join(mixes[0].split('+'))}."
    dataset, archs = paper.MULTI_ARCH_MIX
    same = any(r.dataset == dataset and set(r.archs or ()) == archs for r in runs)
    theirs = {m: {(dataset, k): v for k, v in vals.items()} for m, vals in paper.MULTI_ARCH.items()} if same else {}
    if not same:
        caption += _paper_elsewhere(paper.MULTI_ARCH, paper.MULTI_ARCH_ARCHS)
    return _by_method("Multi-architecture scenario (Table 3)", caption, theirs,
                      f"*paper* ({paper.CITATION}; {paper.MULTI_ARCH_ARCHS})").render(shot_points(runs, row_of))


def other_table(runs: list[Run]) -> list[str]:
    """Finished runs that fit no table above (e.g. several ablations at once), one row each."""
    if not runs:
        return []
    shots = sorted({k for r in runs for k in r.shots()})
    rows = []
    for r in sorted(runs, key=lambda r: r.shown):
        dev = ", ".join(f"{k}={short(r.config[k])}" for k in sorted(r.deviations())) or "—"
        res = [f"{e.acc:.2f} ± {e.ci95:.2f}" + "*" * r.ended_early if (e := Entry.of(r, k)) else "—" for k in shots]
        epochs = f"{r.epochs_run}/{r.epochs}, selected {r.selected_epoch}" if r.kind == "train" else "—"
        rows.append([f"`{r.shown}`", method_name(r.method), dataset_name(r.dataset), r.scenario, dev,
                     str(r.config.get("train_shot", "—")), epochs, *res])
    header = ["run", "method", "dataset", "scenario", "ablation", "train K", "epochs run, selected",
              *(f"{k}-shot" for k in shots)]
    return ["## Other runs", "", "Finished runs that fit none of the tables above.", "", *md_table(header, rows), ""]


def unfinished_table(runs: list[Run]) -> list[str]:
    """Runs without results: listed with their progress, no numbers."""
    if not runs:
        return []
    rows = []
    for r in sorted(runs, key=lambda r: r.shown):
        progress = f"epoch {r.epochs_run} of {r.epochs}" if r.kind == "train" else "—"
        missing = "analysis.json" if r.kind == "analysis" else "results.json"
        rows.append([f"`{r.shown}`", r.kind, method_name(r.method), dataset_name(r.dataset), progress,
                     f"no {missing}"])
    return ["## Unfinished runs", "", "No test numbers are reported for these (a meta-training run's meta-val so far "
            "is under Meta-validation).", "",
            *md_table(["run", "kind", "method", "dataset", "progress", "status"], rows), ""]
