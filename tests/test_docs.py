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


def documented_commands(md: Path) -> list[str]:
    """The ``dfmeta ...`` lines of ``md``'s code blocks that are meant to be run as written: without shell
    variables, placeholders (``<run>``, ``[--flag]``, ``...``, ``MIX``) or the command table's descriptions."""
    out = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", md.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.split(r"\s+#|\s*(?:&&|;|\||>)\s*", line.strip())[0]
            if not line.startswith("dfmeta ") or re.match(r"dfmeta [a-z -]+\s{2,}\S", line):
                continue
            if re.search(r"[$<\[]|\.\.\.|\b[A-Z]{2,}\b", line):
                continue
            out.append(line)
    return out


def test_documented_commands_parse() -> None:
    """Every runnable `dfmeta` line of the README, the guides and the results' records names a command and flags it
    takes, with values of the right type (parsing only; nothing runs)."""
    import shlex

    from dfmeta.cli import build_parser, discover
    parser = build_parser(discover())
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]  # the results' records included
    lines = [(p.relative_to(ROOT), c) for p in pages for c in documented_commands(p)]
    assert len(lines) > 20
    bad = []
    for page, line in lines:
        try:
            _, extra = parser.parse_known_args(shlex.split(line)[1:])
        except SystemExit:
            extra = ["(rejected)"]
        if extra:
            bad.append(f"{page}: {line} -> {extra}")
    assert not bad, bad
