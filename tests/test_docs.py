"""The documentation's links resolve, and the index of measured results lists every record."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def relative_links(md: Path) -> list[str]:
    """The targets of ``md``'s markdown links that point inside the repository."""
    return [t for t in LINK.findall(md.read_text()) if not re.match(r"[a-z]+:", t)]


def test_relative_links_resolve() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = [f"{p.relative_to(ROOT)} -> {t}" for p in pages for t in relative_links(p)
              if not (p.parent / t).exists()]
    assert not broken, broken


def test_results_index_lists_every_record() -> None:
    listed = set(relative_links(RESULTS / "README.md"))
    records = {p.name for p in RESULTS.glob("*.md") if p.name != "README.md"}
    assert records and not records - listed, sorted(records - listed)
