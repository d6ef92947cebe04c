"""Reader for CUB-200-2011 in the layout of the official archive, extracted: ``<root>/CUB_200_2011/images/``.

``images/<NNN.Class_Name>/*.jpg``: 200 class folders. The class split (100/50/50) takes the sorted class folders
and puts index ``i`` in train when ``i % 2 == 0``, val when ``i % 4 == 1``, test when ``i % 4 == 3``. Images are
resized (bilinear) to 84 px by default, RGB, with ImageNet normalisation.
"""

from __future__ import annotations

from pathlib import Path

from dfmeta.data.dataset import IMAGENET_MEAN, IMAGENET_STD, FewShotSplit, cached, source_key
from dfmeta.data.folder import read_image_folder
from dfmeta.errors import DfmetaError

CUB_CLASSES = 200


def cub_split_classes(images_dir: Path, split: str) -> list[str]:
    """The class folders of ``split`` (``train``/``val``/``test``) under ``images_dir``."""
    if not images_dir.is_dir():
        raise DfmetaError(f"{images_dir}: not found; expected the extracted CUB_200_2011.tgz "
                          "(CUB_200_2011/images/<NNN.Class_Name>/*.jpg) under the data root")
    folders = sorted(d.name for d in images_dir.iterdir() if d.is_dir())
    if len(folders) != CUB_CLASSES:
        raise DfmetaError(f"{images_dir}: found {len(folders)} class folders, expected {CUB_CLASSES} (NNN.Class_Name)")
    keep = {"train": lambda i: i % 2 == 0, "val": lambda i: i % 4 == 1, "test": lambda i: i % 4 == 3}[split]
    return [c for i, c in enumerate(folders) if keep(i)]


def read_cub(root: Path, split: str, size: int | None, use_cache: bool = True) -> FewShotSplit:
    """One split of CUB-200-2011 from ``root/CUB_200_2011``; ``size`` defaults to 84 px."""
    images_dir = root / "CUB_200_2011" / "images"
    classes = cub_split_classes(images_dir, split)
    size = size or 84
    return cached(source_key("cub", split, size, paths=[images_dir]),
                  lambda: read_image_folder(images_dir, classes, f"cub/{split}", IMAGENET_MEAN, IMAGENET_STD,
                                            None, size), use_cache)
