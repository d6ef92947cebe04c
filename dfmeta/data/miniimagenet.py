"""Reader for miniImageNet in the Ravi & Larochelle layout.

``<root>/miniimagenet/{train,val,test}.csv`` (header ``filename,label``, one image per row) and
``<root>/miniimagenet/images/<filename>``. Classes are the labels in order of first appearance, images in CSV order;
they are resized (bilinear) to 84 px by default. 64/16/20 classes x 600 images in the original split.
"""

from __future__ import annotations

import csv
from pathlib import Path

from dfmeta.data.dataset import IMAGENET_MEAN, IMAGENET_STD, FewShotSplit, cached, source_key
from dfmeta.data.folder import decode_classes
from dfmeta.errors import DfmetaError


def read_split_csv(path: Path) -> dict[str, list[str]]:
    """``label -> [filename, ...]`` of one split CSV (labels in order of first appearance)."""
    if not path.is_file():
        raise DfmetaError(f"{path}: not found; expected the Ravi & Larochelle files {{train,val,test}}.csv and "
                          f"images/ in {path.parent}")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise DfmetaError(f"{path}: expected the header 'filename,label'")
    classes: dict[str, list[str]] = {}
    for i, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise DfmetaError(f"{path}: line {i}: expected 'filename,label', got {','.join(row)!r}")
        classes.setdefault(row[1].strip(), []).append(row[0].strip())
    if not classes:
        raise DfmetaError(f"{path}: lists no images")
    return classes


def read_miniimagenet(root: Path, split: str, size: int | None, use_cache: bool = True) -> FewShotSplit:
    """One split of miniImageNet from ``root/miniimagenet``; ``size`` defaults to 84 px."""
    folder = root / "miniimagenet"
    csv_path = folder / f"{split}.csv"
    classes = read_split_csv(csv_path)
    images_dir = folder / "images"
    files = [[images_dir / fn for fn in names] for names in classes.values()]
    for paths in files:
        missing = next((p for p in paths if not p.is_file()), None)
        if missing is not None:
            raise DfmetaError(f"{csv_path}: lists {missing.name} but {missing} does not exist")
    size = size or 84

    def build() -> FewShotSplit:
        srcs = [[str(p) for p in paths] for paths in files]
        return decode_classes(f"miniimagenet/{split}", list(classes), srcs, srcs, IMAGENET_MEAN, IMAGENET_STD,
                              size, 3)

    return cached(source_key("miniimagenet", split, size, paths=[csv_path, images_dir]), build, use_cache)
