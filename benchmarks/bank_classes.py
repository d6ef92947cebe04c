"""The classes in a TGR run's memory bank, and how often the paper's replay (``across``) puts one dataset class into
a replay task twice, under two labels that only the generators' styles tell apart.

    python benchmarks/bank_classes.py RUN_DIR [RUN_DIR ...]

Reads each run's ``checkpoint.pt`` (the bank of its last checkpoint). Columns: the epoch, the teacher classes
(teacher, label) stored, the dataset classes they are, how many dataset classes were recovered by 1, 2, 3, ...
teachers, and the probability that a ``ways``-way task whose classes are drawn uniformly from the teacher classes with
at least K + Q images (the ``across`` mix) holds some dataset class twice, computed exactly. Under ``within`` (a
teacher's classes are distinct), ``pooled`` (a class is a dataset class) and the ablations ``distinct``, ``one-copy``
and ``distinct-pooled`` (none draws a dataset class twice) it is 0 by construction. The bank's
composition depends on the seed and the teachers drawn, not on the replay mix. Recorded:
docs/results/cpu-2026-12-05-pooled.md.
"""

from __future__ import annotations

import argparse
from collections import Counter
from math import comb
from pathlib import Path

from dfmeta.errors import DfmetaError
from dfmeta.meta.bank import stored_bank
from dfmeta.report.cells import md_table
from dfmeta.config import plain


def repeat_probability(multiplicity: list[int], ways: int) -> float:
    """P(a uniform ``ways``-subset of the teacher classes holds two of one dataset class), where dataset class i has
    ``multiplicity[i]`` teacher classes: 1 - e_ways(multiplicity) / C(sum, ways) (e: elementary symmetric sum)."""
    e = [1] + [0] * ways
    for m in multiplicity:
        for k in range(ways, 0, -1):
            e[k] += e[k - 1] * m
    total = comb(sum(multiplicity), ways)
    return 1.0 - e[ways] / total if total else float("nan")


def bank_row(run: Path) -> list[str]:
    """One table row for the bank in ``run``'s checkpoint."""
    ck, bank = stored_bank(run)
    config = ck["config"]
    need = int(config.get("train_shot", 1)) + int(config.get("replay_queries", 15))
    images: Counter = Counter()
    name: dict[tuple[int, int], str] = {}
    for task in bank["tasks"]:
        for label, n in Counter(task["labels"].tolist()).items():
            images[(task["teacher"], label)] += n
            name[(task["teacher"], label)] = task["names"][label]
    eligible = [c for c in name if images[c] >= need]
    per_class = Counter(name[c] for c in eligible)
    spread = Counter(per_class.values())
    ways = int(config.get("ways", 5))
    return [f"{run.parent.name}/{run.name}", str(ck["epoch"]), str(config.get("replay_mix", "across")),
            str(len(name)), str(len(eligible)), str(len(per_class)),
            " ".join(f"{k}:{spread[k]}" for k in sorted(spread)),
            f"{repeat_probability(list(per_class.values()), ways):.3f}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=plain(__doc__.split("\n\n")[0]))
    ap.add_argument("runs", nargs="+", type=Path, help="TGR run directories (with checkpoint.pt)")
    args = ap.parse_args()
    header = ["run", "epoch", "mix", "teacher classes", "with >= K + Q images", "dataset classes",
              "teachers per dataset class (n:classes)", "P(across task repeats a dataset class)"]
    try:
        rows = [bank_row(r) for r in args.runs]
    except DfmetaError as e:
        raise SystemExit(f"error: {e}")
    print("\n".join(md_table(header, rows)))


if __name__ == "__main__":
    main()
