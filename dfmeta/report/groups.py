"""The task groups behind each grouped meta-training run (its ``groups.json``): sizes, stability and the class overlap
within groups, so a reader tells groups that follow the tasks from a partition W hardly determines."""

from __future__ import annotations

from dfmeta.errors import DfmetaError
from dfmeta.report.cells import md_table
from dfmeta.report.collect import Run, run_file
from dfmeta.report.curves import method_label
from dfmeta.runs import read_json_object


def _number(g: dict, key: str) -> str:
    v = g.get(key)
    return f"{v:.2f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "—"


def groups_section(runs: list[Run]) -> list[str]:
    """``## Task groups`` for the finished meta-training runs whose directory holds a ``groups.json``."""
    rows = []
    for r in sorted(runs, key=lambda r: r.shown):
        path = run_file(r.path, "groups.json")
        if r.kind != "train" or not path.is_file():
            continue
        g = read_json_object(path)
        if not isinstance(g.get("labels"), list):
            raise DfmetaError(f"{path}: expected an object with 'labels' (a list)")
        sizes = g.get("used_sizes") or g.get("sizes") or []
        source = "grouped in the run"
        if g.get("from"):
            source = ("regrouped from the W of " if g.get("regrouped") else "taken from ") + f"`{g['from']}`"
        rows.append([f"`{r.shown}`", method_label(r), str(len(g["labels"])), " ".join(map(str, sizes)), source,
                     _number(g, "stability"), _number(g, "within_group_overlap")])
    if not rows:
        return []
    intro = ("Each grouped run's groups: stability is the adjusted Rand index against the groups of W plus 1% noise "
             "(1: firm); class overlap within groups is the mean number of classes two teachers of one group share "
             "over that of any two teachers (below 1: groups gather teachers that share fewer classes than chance, as "
             "dissimilarity grouping intends; — where not recorded or no teachers share a class).")
    header = ["run", "method", "teachers", "group sizes", "groups", "stability", "class overlap within groups"]
    return ["## Task groups", "", intro, "", *md_table(header, rows), ""]
