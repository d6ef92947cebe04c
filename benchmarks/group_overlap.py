"""Class overlap within the task groups of existing ``groups.json`` files (for runs written before TGR and
``dfmeta group`` recorded it), beside its range for random partitions of the same group sizes.

    python benchmarks/group_overlap.py --zoo ZOO GROUPS_JSON [GROUPS_JSON ...]

A file is a TGR run's or a ``dfmeta group`` run's ``groups.json`` (``labels`` with ``teacher_ids``, or ``members``);
its teachers are looked up by id in ZOO. Columns: the groups used (``used_labels`` where ``--small-groups`` changed
them), within-group overlap (:func:`dfmeta.grouping.within_group_overlap`: below 1, groups gather teachers that share
fewer classes than chance), and the 2.5-97.5% range of that number over 1000 seeded random partitions of the same
sizes. Recorded: docs/results/cpu-2026-12-02-probes.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dfmeta.errors import DfmetaError
from dfmeta.grouping import class_overlap, overlap_by_chance, within_group_overlap
from dfmeta.zoo import load_zoo
from dfmeta.config import plain


def read_groups(path: Path) -> tuple[list[str], np.ndarray]:
    """(teacher ids, group labels) of a ``groups.json``."""
    try:
        g = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DfmetaError(f"{path}: not a readable JSON file ({e})") from None
    if isinstance(g, dict) and isinstance(g.get("labels"), list) and isinstance(g.get("teacher_ids"), list):
        return [str(t) for t in g["teacher_ids"]], np.asarray(g.get("used_labels") or g["labels"], np.int64)
    if isinstance(g, dict) and isinstance(g.get("members"), list):
        pairs = [(str(m["id"]), k) for k, group in enumerate(g["members"]) for m in group]
        return [t for t, _ in pairs], np.array([k for _, k in pairs], np.int64)
    raise DfmetaError(f"{path}: expected 'labels' with 'teacher_ids', or 'members' (a groups.json)")


def main() -> None:
    ap = argparse.ArgumentParser(description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", required=True)
    ap.add_argument("files", nargs="+", type=Path)
    a = ap.parse_args()
    zoo = load_zoo(a.zoo)
    where = {t.id: i for i, t in enumerate(zoo.teachers)}
    overlap = class_overlap(zoo)
    print("| file | group sizes | within-group overlap | random partitions (95%) |\n|---|---|---|---|")
    for path in a.files:
        ids, labels = read_groups(path)
        missing = [t for t in ids if t not in where]
        if missing:
            raise DfmetaError(f"{path}: teacher {missing[0]!r} is not in the zoo {a.zoo}")
        idx = [where[t] for t in ids]
        sub = overlap[np.ix_(idx, idx)]
        within = within_group_overlap(labels, sub)
        if within is None:
            print(f"| `{path}` | {' '.join(map(str, np.bincount(labels)))} | — | — |")
            continue
        lo, hi = overlap_by_chance(labels, sub)
        print(f"| `{path}` | {' '.join(map(str, np.bincount(labels)))} | {within:.2f} | {lo:.2f}-{hi:.2f} |")


if __name__ == "__main__":
    try:
        main()
    except DfmetaError as e:
        raise SystemExit(f"group_overlap: {e}") from None
