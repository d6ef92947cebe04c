"""Reader for the official CIFAR-100 python archive ``cifar-100-python.tar.gz``, giving CIFAR-FS or FC100 splits.

The archive holds three pickles, ``cifar-100-python/{train,test,meta}``: dicts with ``data`` (uint8 ``[N, 3072]``,
each row the R, G, B planes of a 32x32 image), ``fine_labels`` and, in ``meta``, ``fine_label_names``. They are
Python 2 pickles, read like the official loader (``encoding="latin1"``) but through an unpickler that only rebuilds
numpy arrays, so an archive from elsewhere cannot run code when loaded.

A class's 600 images are its 500 ``train`` images followed by its 100 ``test`` images, in archive order. The class
lists of the splits are the ones shipped with dfmeta (``dfmeta/data/splits/{cifar-fs,fc100}``).
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from dfmeta.data.dataset import CIFAR100_MEAN, CIFAR100_STD, FewShotSplit, bundled_splits, cached, read_split_list, \
    source_key
from dfmeta.data.folder import resize_uint8
from dfmeta.errors import DfmetaError

MEMBERS = ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta")
_NUMPY_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")} | {
    (mod, fn) for mod in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                          "numpy._core.numeric") for fn in ("_reconstruct", "_frombuffer")}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _load_member(tar: tarfile.TarFile, archive: Path, member: str) -> dict:
    try:
        f = tar.extractfile(member)
    except KeyError:
        f = None
    if f is None:
        raise DfmetaError(f"{archive}: no file {member}; expected the official cifar-100-python.tar.gz")
    try:
        obj = _ArrayUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
    except Exception as e:  # any unpickling failure means a damaged or foreign file
        raise DfmetaError(f"{archive}: cannot read {member} ({e.__class__.__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DfmetaError(f"{archive}: {member} is not a dict")
    return obj


def _field(d: dict, key: str, archive: Path, member: str) -> Any:
    if key not in d:
        raise DfmetaError(f"{archive}: {member} has no {key!r}; expected the official CIFAR-100 python format")
    return d[key]


def load_cifar100_archive(archive: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All 60,000 images as uint8 ``[N, 32, 32, 3]`` (train then test), their fine labels, and the class names."""
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise DfmetaError(f"{archive}: cannot open as a tar archive ({e})") from None
    with tar:
        train, test, meta = (_load_member(tar, archive, m) for m in MEMBERS)
    names = [str(n) for n in _field(meta, "fine_label_names", archive, MEMBERS[2])]
    images, labels = [], []
    for part, member in ((train, MEMBERS[0]), (test, MEMBERS[1])):
        data = np.asarray(_field(part, "data", archive, member))
        lab = np.asarray(_field(part, "fine_labels", archive, member), dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(lab):
            raise DfmetaError(f"{archive}: {member} 'data' is {data.dtype} {data.shape}; expected uint8 [N, 3072] "
                              f"with one fine label per row")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(lab)
    labels_all = np.concatenate(labels)
    if labels_all.min() < 0 or labels_all.max() >= len(names):
        raise DfmetaError(f"{archive}: fine labels outside 0..{len(names) - 1}")
    return np.concatenate(images), labels_all, names


def read_cifar_archive(archive: Path, split_dir: str, split: str, size: int | None,
                       use_cache: bool = True) -> FewShotSplit:
    """One split (``train``/``val``/``test``) of CIFAR-FS (``split_dir="cifar-fs"``) or FC100 (``"fc100"``)."""
    list_path = bundled_splits(split_dir) / f"{split}.txt"
    classes = read_split_list(list_path)
    name = f"{split_dir}/{split}"

    def build() -> FewShotSplit:
        images, labels, names = load_cifar100_archive(archive)
        index = {n: i for i, n in enumerate(names)}
        missing = [c for c in classes if c not in index]
        if missing:
            raise DfmetaError(f"{list_path}: class {missing[0]!r} is not a CIFAR-100 fine label of {archive}")
        per_class = [images[labels == index[c]] for c in classes]
        if size and size != 32:
            per_class = [resize_uint8(a, size) for a in per_class]
        return FewShotSplit.from_classes(name, per_class, classes, CIFAR100_MEAN, CIFAR100_STD)

    return cached(source_key("cifar-archive", split_dir, split, size, paths=[list_path, archive]), build, use_cache)
