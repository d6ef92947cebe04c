"""``dfmeta report RUN_DIR...``: markdown tables in the paper's layout, the paper's numbers beside ours, PNG plots."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dfmeta.cli import Command
from dfmeta.errors import DfmetaError
from dfmeta.runs import expect_directory


@dataclass(frozen=True)
class ReportConfig:
    """Turn run directories into a markdown report."""

    runs: tuple[str, ...] = ()
    """Run directories, records, or folders searched recursively for them (a run directory holds config.json; a
    record FOLDER/NAME is a run's files copied as FOLDER/NAME_config.json, NAME_results.json, ...)."""
    out: str = ""
    """Markdown file to write (empty: print the report)."""
    plots: str = ""
    """Folder for the PNG plots (empty: <out without .md>_plots beside --out; no plots when printing)."""

    def validate(self) -> None:
        if not self.runs:
            raise DfmetaError("field 'runs': give at least one run directory or folder of runs")
        if self.out and not self.out.endswith(".md"):
            raise DfmetaError(f"field 'out': expected a markdown file name ending in .md, got {self.out!r}")
        if self.out:
            expect_directory(Path(self.out).parent, "--out")
        if self.plots:
            expect_directory(self.plots, "--plots")


def run_report(cfg: ReportConfig) -> None:
    from dfmeta.report import build_report
    text = build_report(cfg.runs, cfg.out, cfg.plots)
    if cfg.out:
        print(f"wrote {cfg.out}")
    else:
        print(text, end="")


COMMANDS = [Command("report", "Markdown tables (mean ± 95% CI per setting, the paper's numbers in rows of their "
                    "own) and PNG plots from run directories.", ReportConfig, run_report, positional="runs")]
