"""``dfmeta zoo info``: a zoo's teachers as a table, and how they cover a dataset's meta-train classes."""

from __future__ import annotations

import numpy as np

from dfmeta.data.dataset import FewShotSplit
from dfmeta.errors import DfmetaError
from dfmeta.zoo.format import Zoo


def teacher_table(zoo: Zoo) -> str:
    """One line per teacher: id, architecture, classes, held-out accuracy."""
    rows = [("id", "arch", "held-out %", "classes")]
    for t in zoo.teachers:
        acc = "-" if t.heldout_acc is None else f"{t.heldout_acc:.2f}"
        rows.append((t.id, t.arch, acc, ", ".join(t.class_names)))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{a:>{w[0]}}  {b:<{w[1]}}  {c:>{w[2]}}  {d}" for a, b, c, d in rows)


def summary(zoo: Zoo) -> str:
    """Counts per architecture and the held-out accuracy range."""
    archs = ", ".join(f"{len(v)} {k}" for k, v in zoo.by_arch().items())
    accs = np.array([t.heldout_acc for t in zoo.teachers if t.heldout_acc is not None], dtype=float)
    line = f"{len(zoo)} teachers ({archs})"
    if len(accs):
        line += f"; held-out accuracy mean {accs.mean():.1f}%, min {accs.min():.1f}%, max {accs.max():.1f}%"
    return line


def class_problems(zoo: Zoo, split: FewShotSplit) -> list[str]:
    """One message per teacher class name that ``split`` lacks (naming the model id and file)."""
    known = set(split.class_names)
    return [f"model {t.id} ({zoo.path / t.file}): class {c!r} is not a class of {split.name}"
            for t in zoo.teachers for c in t.class_names if c not in known]


def require_classes(zoo: Zoo, split: FewShotSplit) -> None:
    """Raise :class:`DfmetaError` for the first teacher class name that ``split`` lacks."""
    problems = class_problems(zoo, split)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DfmetaError(problems[0] + more)


def coverage(zoo: Zoo, split: FewShotSplit) -> tuple[int, list[str]]:
    """How many of ``split``'s classes appear in at least one teacher, and the names of those that do not."""
    seen = {c for t in zoo.teachers for c in t.class_names}
    missing = [c for c in split.class_names if c not in seen]
    return split.n_classes - len(missing), missing


def report(zoo: Zoo, split: FewShotSplit | None = None) -> tuple[str, list[str]]:
    """The ``zoo info`` text and its warnings (skipped models, class names the dataset lacks)."""
    lines = [teacher_table(zoo), "", summary(zoo)]
    warnings = [f"skipped {s}" for s in zoo.skipped]
    if split is not None:
        covered, missing = coverage(zoo, split)
        line = f"coverage of {split.name}: {covered} of {split.n_classes} classes in at least one teacher"
        if missing:
            line += f"; not covered: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}"
        lines.append(line)
        warnings += class_problems(zoo, split)
    return "\n".join(lines), warnings
