"""How far the images in a TGR run's memory bank are told apart by the generator that made them rather than by
their class: a model-free reading of why replay tasks that mix several teachers' classes are easy.

    python benchmarks/generator_style.py RUN_DIR [RUN_DIR ...] [--size 8] [--data-root ../shared/data] [--equalise]

Reads each run's ``checkpoint.pt`` (the bank of its last checkpoint; its tasks must carry class names). Every two
teacher classes (teacher, label) of the bank form a pair of one of three kinds:

- *same class, two generators*: one dataset class recovered by two teachers (what ``pooled`` merges into one class);
- *two classes, one generator*: two classes of one teacher (a ``within`` replay task's pairs);
- *two classes, two generators*: the typical pair of an ``across`` replay task.

Each pair is scored by leave-one-out nearest-centroid accuracy on model-free features of its images: the image
average-pooled to ``size`` x ``size`` pixels (``pixels``), and each channel's mean and standard deviation
(``colour``, six numbers that carry a generator's colour statistics and almost nothing of the class's shape). 0.5
is chance. If *same class, two generators* pairs score well above 0.5, a generator's style alone tells images apart;
if *two classes, two generators* pairs score above *two classes, one generator*, styles add to the classes'
differences, so tasks whose classes come from several generators are easier. A third row per run, ``mean gap``,
is no accuracy but a size: the root mean square over channels of the difference between the two classes' mean
images' channel averages, averaged over the pairs of a kind; ``dfmeta train --replay-cue C`` adds C·√2 in
quadrature to every pair of a replay task, so C ≈ √(gap(two generators)² − gap(one generator)²)/√2 matches the
colour part of the style the ``across`` mix offers. With ``--data-root``, a fourth
column scores every two of the bank's dataset classes on real meta-train images (the first ones of each class, as
many as a bank class holds; the teachers' training data, read for this reference only). ``--equalise`` first
standardises each stored task's channels (mean 0, std 1 over all of a teacher's images): what is left once a
generator's overall colour statistics are taken away. ``--cue C [--cue-kind pattern]`` first adds to each class's
images the cast ``dfmeta train --replay-cue C --replay-cue-scope stored`` gives it (the same values): how far the
cast makes two classes of one teacher look like two teachers' classes, to size a cue. Recorded:
docs/results/cpu-2026-12-07-generator-style.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from dfmeta.data.episodes import to_input
from dfmeta.data.registry import load_split
from dfmeta.errors import DfmetaError
from dfmeta.meta.bank import CUE_KINDS, cast_shape, expand_casts, stored_bank, stored_cast_draw
from dfmeta.report.cells import md_table
from dfmeta.config import plain

KINDS = ("same class, two generators", "two classes, one generator", "two classes, two generators")
REAL = "two real classes"


def features(images: Tensor, size: int) -> dict[str, Tensor]:
    """``pixels``: images ``[n, C, H, W]`` average-pooled to ``size`` x ``size``, flattened; ``colour``: each
    channel's mean and standard deviation ``[n, 2C]``."""
    x = images.float()
    pixels = F.adaptive_avg_pool2d(x, size).flatten(1)
    colour = torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)
    return {"pixels": pixels, "colour": colour}


FEATURES = ("pixels", "colour", "mean gap")
"""Rows per run: two accuracies (leave-one-out, 0.5 chance), then the channel-mean gap (a size, see the top)."""


def pair_values(fa: dict[str, Tensor], fb: dict[str, Tensor]) -> dict[str, float]:
    """The accuracy of each feature and the channel-mean gap of two classes' :func:`features`."""
    channels = fa["colour"].shape[1] // 2
    gap = (fa["colour"][:, :channels].mean(0) - fb["colour"][:, :channels].mean(0)).pow(2).mean().sqrt()
    return {"pixels": loo_accuracy(fa["pixels"], fb["pixels"]), "colour": loo_accuracy(fa["colour"], fb["colour"]),
            "mean gap": float(gap)}


def loo_accuracy(a: Tensor, b: Tensor) -> float:
    """Leave-one-out nearest-centroid accuracy of telling the rows of ``a`` from those of ``b`` (each row is left out
    of its own class's centroid; each class needs two rows)."""
    sa, sb = a.sum(0), b.sum(0)
    na, nb = len(a), len(b)
    own_a, other_a = (sa - a) / (na - 1), sb / nb
    own_b, other_b = (sb - b) / (nb - 1), sa / na
    right_a = ((a - own_a).pow(2).sum(1) < (a - other_a).pow(2).sum(1)).sum()
    right_b = ((b - own_b).pow(2).sum(1) < (b - other_b).pow(2).sum(1)).sum()
    return float(right_a + right_b) / (na + nb)


def bank_classes(bank: dict) -> dict[tuple[int, int], tuple[str, Tensor]]:
    """(teacher, label) -> (dataset class, images) over the bank's tasks (a class recovered twice has both sets)."""
    out: dict[tuple[int, int], tuple[str, list[Tensor]]] = {}
    for task in bank["tasks"]:
        for label in task["labels"].unique().tolist():
            key = (int(task["teacher"]), int(label))
            out.setdefault(key, (task["names"][label], []))[1].append(task["images"][task["labels"] == label])
    return {k: (name, torch.cat(parts)) for k, (name, parts) in out.items()}


def pair_scores(classes: dict[tuple[int, int], tuple[str, Tensor]], size: int) -> dict[str, dict[str, list[float]]]:
    """Accuracy of every pair of classes with two or more images, by feature and kind of pair."""
    feats = {k: features(imgs, size) for k, (_, imgs) in classes.items() if len(imgs) >= 2}
    keys = sorted(feats)
    scores: dict[str, dict[str, list[float]]] = {f: {kind: [] for kind in KINDS} for f in FEATURES}
    for i, p in enumerate(keys):
        for q in keys[i + 1:]:
            same_class, same_teacher = classes[p][0] == classes[q][0], p[0] == q[0]
            if same_class and same_teacher:
                continue
            kind = KINDS[0] if same_class else KINDS[1] if same_teacher else KINDS[2]
            for f, value in pair_values(feats[p], feats[q]).items():
                scores[f][kind].append(value)
    return scores


def real_scores(names: list[str], per_class: int, root: Path, size: int) -> dict[str, list[float]]:
    """Accuracy of every pair of the dataset classes ``names`` ("dataset/class") on ``per_class`` real meta-train
    images each, normalised as the bank's, by feature."""
    feats = {}
    for dataset in sorted({n.split("/", 1)[0] for n in names}):
        split = load_split(dataset, "train", root)
        index = {c: i for i, c in enumerate(split.class_names)}
        for n in (n for n in names if n.split("/", 1)[0] == dataset):
            c = index.get(n.split("/", 1)[1])
            if c is None:
                raise DfmetaError(f"{root}: {dataset}'s meta-train split has no class {n.split('/', 1)[1]!r}")
            rows = split.images[split.starts[c]:split.starts[c] + min(per_class, int(split.counts[c]))]
            feats[n] = features(to_input(torch.from_numpy(rows), split.mean, split.std), size)
    keys = sorted(feats)
    pairs = [pair_values(feats[p], feats[q]) for i, p in enumerate(keys) for q in keys[i + 1:]]
    return {f: [v[f] for v in pairs] for f in FEATURES}


def equalise(bank: dict) -> None:
    """Standardise each stored task's channels over all its images (in place): mean 0, standard deviation 1."""
    for task in bank["tasks"]:
        x = task["images"].float()
        task["images"] = (x - x.mean(dim=(0, 2, 3), keepdim=True)) / x.std(dim=(0, 2, 3), keepdim=True)


def add_stored_casts(classes: dict[tuple[int, int], tuple[str, Tensor]], cue: float, kind: str) -> None:
    """Add to each (teacher, label) class's images (in place) its ``--replay-cue-scope stored`` cast of size ``cue``."""
    for key, (name, images) in classes.items():
        draw = stored_cast_draw(key, cast_shape(kind, images.shape[1]))
        classes[key] = (name, images.float() + cue * expand_casts(draw, images.shape[1:], kind))


def run_rows(run: Path, size: int, root: Path | None, equalised: bool = False, cue: float = 0.0,
             cue_kind: str = "colour") -> list[list[str]]:
    """Table rows (one per feature) for the bank in ``run``'s checkpoint."""
    ck, bank = stored_bank(run)
    if equalised:
        equalise(bank)
    classes = bank_classes(bank)
    if cue:
        add_stored_casts(classes, cue, cue_kind)
    scores = pair_scores(classes, size)
    if root is not None:
        per_class = sorted(len(imgs) for _, imgs in classes.values())[len(classes) // 2]
        real = real_scores(sorted({name for name, _ in classes.values()}), per_class, root, size)
        for f in scores:
            scores[f][REAL] = real[f]
    rows = []
    for feat, by_kind in scores.items():
        cells = [f"{sum(v) / len(v):.3f} ({len(v)})" if v else "—" for v in by_kind.values()]
        rows.append([f"{run.parent.name}/{run.name}", str(ck.get("epoch", "?")), feat, *cells])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=plain(__doc__.split("\n\n")[0]))
    ap.add_argument("runs", nargs="+", type=Path, help="TGR run directories (with checkpoint.pt)")
    ap.add_argument("--size", type=int, default=8, help="side of the pooled image of the pixels feature")
    ap.add_argument("--data-root", type=Path, help="score pairs of real meta-train classes too (a dfmeta data root)")
    ap.add_argument("--equalise", action="store_true", help="standardise each teacher's channels first")
    ap.add_argument("--cue", type=float, default=0.0, help="add each class's stored replay cast of this size first")
    ap.add_argument("--cue-kind", choices=CUE_KINDS, default="colour", help="the kind of cast --cue adds")
    args = ap.parse_args()
    if args.size < 1:
        raise SystemExit(f"error: --size must be >= 1, got {args.size}")
    if not args.cue >= 0:
        raise SystemExit(f"error: --cue must be >= 0, got {args.cue}")
    try:
        rows = [row for r in args.runs
                for row in run_rows(r, args.size, args.data_root, args.equalise, args.cue, args.cue_kind)]
    except DfmetaError as e:
        raise SystemExit(f"error: {e}")
    kinds = KINDS + ((REAL,) if args.data_root else ())
    header = ["run", "epoch", "feature", *(f"{k} (pairs)" for k in kinds)]
    print("\n".join(md_table(header, rows)))


if __name__ == "__main__":
    main()
