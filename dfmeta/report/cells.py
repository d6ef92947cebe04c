"""Table cells: one setting's accuracy over its runs (seeds), its footnote naming the runs, markdown tables.

A cell shows ``mean ± 95% CI``. With one run that is the run's own number (the paper's CI, 1.96 std / sqrt(episodes)).
With n runs (seeds) it is the mean over runs ± the mean of their episode CIs: every run meets the same fixed, seeded
episodes, so more seeds do not narrow the episode CI; the spread over seeds is shown as ``sd`` (sample standard
deviation). Markers: ``*`` a run ended before its configured epochs (time limit); ``†`` no run was meta-trained at
this K, so the runs meta-trained (and selected) at another K are shown.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from dfmeta.report.collect import Run

LEGEND = ("Cells: mean ± 95% CI over test episodes (the paper's 1.96·std/√episodes). n > 1: mean over n runs (seeds) ± "
          "the mean of their CIs (all runs meet the same seeded episodes), sd = standard deviation over the runs. "
          "`*` a run ended before its configured epochs (time limit); `†` no run was meta-trained at this K, the "
          "runs meta-trained at another K are shown. [k]: the runs behind a number, listed under each table. "
          "Rows marked *paper* are the paper's published numbers (means only), never ours.")


@dataclass(frozen=True)
class Entry:
    """One run's accuracy at K shots (overall, or on one domain of a multi-domain test)."""

    run: Run
    k: int
    acc: float
    ci95: float
    episodes: int

    @staticmethod
    def of(run: Run, k: int, domain: str | None = None) -> "Entry | None":
        res = run.test(k)
        if res is not None and domain is not None:
            res = (res.get("domains") or {}).get(domain)
        if res is None:
            return None
        return Entry(run, k, float(res["acc"]), float(res["ci95"]), int(res.get("episodes", 0)))

    def note(self, with_acc: bool) -> str:
        """The run's name, its epochs run and selected epoch (meta-training) or its split (evaluation), and its own
        accuracy if ``with_acc`` (a cell of several runs)."""
        r = self.run
        text = f"`{r.shown}`" + (f" {self.acc:.2f} ± {self.ci95:.2f}" if with_acc else "") + ": "
        if r.kind == "train":
            text += f"epochs {r.epochs_run}/{r.epochs}" + (" (ended early)" if r.ended_early else "")
            text += f", selected epoch {r.selected_epoch}"
            if r.config.get("train_shot") not in (None, self.k):
                text += f", meta-trained at K={r.config['train_shot']}"
        else:
            text += f"{r.method} evaluated on split test"
        text += f", {self.episodes} episodes" if self.episodes else ""
        cut = [n for names in ((r.results or {}).get("splits") or {}).values() for n in names if "(first" in str(n)]
        text += f", on cut splits: {', '.join(cut)}" if cut else ""  # `dfmeta data prepare --max-per-class`
        if r.kind == "train" and (changed := r.changed_settings()):
            text += f" (set away from the defaults: {', '.join(f'{k}={short(v)}' for k, v in sorted(changed.items()))})"
        return text


@dataclass(frozen=True)
class Cell:
    """The entries of one setting at one K."""

    entries: tuple[Entry, ...]
    off_shot: bool = False

    @staticmethod
    def pick(entries: list[Entry]) -> "Cell":
        """Prefer runs meta-trained at the cell's K (evaluation runs always qualify); else all, marked ``†``."""
        own = [e for e in entries if e.run.config.get("train_shot") in (None, e.k)]
        return Cell(tuple(own), False) if own else Cell(tuple(entries), True)

    @property
    def n(self) -> int:
        return len(self.entries)

    @property
    def mean(self) -> float:
        return statistics.fmean(e.acc for e in self.entries)

    @property
    def ci95(self) -> float:
        return statistics.fmean(e.ci95 for e in self.entries)

    @property
    def sd(self) -> float | None:
        return statistics.stdev(e.acc for e in self.entries) if self.n > 1 else None

    def text(self, sources: "Sources") -> str:
        out = f"{self.mean:.2f} ± {self.ci95:.2f}"
        if self.n > 1:
            out += f" (n={self.n}, sd {self.sd:.2f})"
        out += "*" * any(e.run.ended_early for e in self.entries) + "†" * self.off_shot
        return f"{out} {sources.ref(self)}"


class Sources:
    """Numbered footnotes ``[k]`` naming the runs behind each cell of one table."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def ref(self, cell: Cell) -> str:
        note = "; ".join(e.note(cell.n > 1) for e in sorted(cell.entries, key=lambda e: e.run.shown))
        if note not in self.notes:
            self.notes.append(note)
        return f"[{self.notes.index(note) + 1}]"

    def lines(self) -> list[str]:
        return [f"- [{i}] {n}" for i, n in enumerate(self.notes, 1)]


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table."""
    esc = [[str(c).replace("|", "\\|") for c in r] for r in [header, *rows]]
    return ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |"
                                                                           for r in esc[1:]]


def short(value: Any) -> str:
    """A config value in a row label: booleans lower-case, paths by their last part."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str) and "/" in value:
        return value.rstrip("/").rsplit("/", 1)[-1]
    return str(value)
