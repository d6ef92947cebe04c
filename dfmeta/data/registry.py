"""The dataset registry: a name (``cifar-fs``, ``omniglot``, ...) and a split to one :class:`FewShotSplit`.

Each entry finds its files under a data root (default ``../shared/data``, or ``$DFMETA_DATA``) and is decoded once
into the cache. ``embedded`` needs no files. A split exported by ``dfmeta data prepare`` to
``<root>/prepared/<dataset>/<split>.npz`` is read from there first (to move decoded data to another machine).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dfmeta.data.cub import read_cub
from dfmeta.data.dataset import (CIFAR100_MEAN, CIFAR100_STD, FewShotSplit, cached, load_split_file,
                                  read_split_list, source_key)
from dfmeta.data.embedded import embedded_split
from dfmeta.data.folder import read_image_folder
from dfmeta.data.miniimagenet import read_miniimagenet
from dfmeta.data.omniglot import read_omniglot
from dfmeta.errors import DfmetaError

SPLITS = ("train", "val", "test")


def default_data_root() -> Path:
    """``$DFMETA_DATA`` or ``../shared/data`` (relative to the working directory)."""
    return Path(os.environ.get("DFMETA_DATA", "../shared/data"))


@dataclass(frozen=True)
class DatasetSpec:
    """How to read one dataset: ``read(root, split, image_size, use_cache) -> FewShotSplit``."""

    name: str
    read: Callable[[Path, str, int | None, bool], FewShotSplit]
    image_size: int
    channels: int
    doc: str


def _cifar_reader(split_dir: str) -> Callable[[Path, str, int | None, bool], FewShotSplit]:
    def read(root: Path, split: str, size: int | None, use_cache: bool) -> FewShotSplit:
        folder = root / "cifar100"
        if not (folder / "images").is_dir():
            archive = root / "cifar-100-python.tar.gz"
            if archive.is_file():
                from dfmeta.data.cifar_archive import read_cifar_archive
                return read_cifar_archive(archive, split_dir, split, size, use_cache)
            raise DfmetaError(f"{root}: expected {folder / 'images'} (image folders) or {archive}; "
                              "set --data-root or DFMETA_DATA")
        list_path = folder / "splits" / split_dir / f"{split}.txt"
        classes = read_split_list(list_path)
        key = source_key("folder", split_dir, split, size, paths=[list_path, folder / "images"])
        return cached(key, lambda: read_image_folder(folder / "images", classes, f"{split_dir}/{split}",
                                                     CIFAR100_MEAN, CIFAR100_STD, 32, size), use_cache)
    return read


def _embedded(root: Path, split: str, size: int | None, use_cache: bool) -> FewShotSplit:
    return embedded_split(split, size=size or 32)


DATASETS: dict[str, DatasetSpec] = {
    "embedded": DatasetSpec("embedded", _embedded, 32, 3, "procedural patterns, 160/32/48 classes, no files"),
    "cifar-fs": DatasetSpec("cifar-fs", _cifar_reader("cifar-fs"), 32, 3,
                            "CIFAR-100, CIFAR-FS split 64/16/20 (cifar100/ folders or cifar-100-python.tar.gz)"),
    "fc100": DatasetSpec("fc100", _cifar_reader("fc100"), 32, 3,
                         "CIFAR-100, FC100 split 60/20/20 (cifar100/ folders or cifar-100-python.tar.gz)"),
    "omniglot": DatasetSpec("omniglot", read_omniglot, 28, 1,
                            "Omniglot, alphabet split 1032/172/419 characters (omniglot/images_*.zip)"),
    "miniimagenet": DatasetSpec("miniimagenet", read_miniimagenet, 84, 3,
                                "miniImageNet, Ravi & Larochelle split 64/16/20 (miniimagenet/{train,val,test}.csv, "
                                "images/)"),
    "cub": DatasetSpec("cub", read_cub, 84, 3, "CUB-200-2011, class split 100/50/50 (CUB_200_2011/images/)"),
}


def register(spec: DatasetSpec) -> None:
    """Add a dataset to the registry."""
    DATASETS[spec.name] = spec


def load_split(dataset: str, split: str, root: str | os.PathLike | None = None, image_size: int | None = None,
               use_cache: bool = True) -> FewShotSplit:
    """Read one split of a registered dataset (decoded once, then served from the cache)."""
    if dataset not in DATASETS:
        raise DfmetaError(f"unknown dataset {dataset!r}; expected one of: {', '.join(sorted(DATASETS))}")
    if split not in SPLITS:
        raise DfmetaError(f"unknown split {split!r}; expected one of: {', '.join(SPLITS)}")
    root = Path(root) if root is not None else default_data_root()
    if dataset != "embedded" and not root.is_dir():
        raise DfmetaError(f"{root}: data root not found; set --data-root or DFMETA_DATA")
    prepared = root / "prepared" / dataset / f"{split}.npz"
    if prepared.is_file() and image_size is None:
        return load_split_file(prepared)
    try:
        return DATASETS[dataset].read(root, split, image_size, use_cache)
    except DfmetaError as e:
        if prepared.parent.is_dir() and image_size is None:  # other splits were prepared, this one was not
            raise DfmetaError(f"{prepared}: split {split!r} not prepared (`dfmeta data prepare --splits {split}`), "
                              f"and no raw data: {e}") from e
        raise
