"""One in-memory representation for every dataset: uint8 images grouped by class, with a decode-once cache."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from dfmeta.errors import DfmetaError
from dfmeta.runs import atomic_write

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class FewShotSplit:
    """The images of one split, grouped by class.

    ``images`` is uint8 ``[N, H, W, C]`` sorted by class; class ``c`` owns rows ``starts[c]:starts[c] + counts[c]``.
    ``mean``/``std`` are the input normalisation (applied to [0, 1] pixels) that models of this dataset expect.
    """

    name: str
    images: np.ndarray
    counts: np.ndarray
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        self.counts = np.asarray(self.counts, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DfmetaError(f"{self.name}: images must be uint8 [N, H, W, C], got {self.images.dtype} {self.images.shape}")
        if int(self.counts.sum()) != len(self.images) or len(self.counts) != len(self.class_names):
            raise DfmetaError(f"{self.name}: class counts do not match the images")
        for name, n in zip(self.class_names, self.counts):
            if n == 0:
                raise DfmetaError(f"{self.name}: class {name!r} has no images")

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[3])

    def class_images(self, c: int) -> np.ndarray:
        """The images of class index ``c``."""
        return self.images[self.starts[c]: self.starts[c] + self.counts[c]]

    def labels(self) -> np.ndarray:
        """Class index of every image."""
        return np.repeat(np.arange(self.n_classes), self.counts)

    def subset(self, class_names: list[str], rows: slice | None = None, name: str | None = None) -> "FewShotSplit":
        """The named classes (in that order), optionally only ``rows`` of each class."""
        index = {n: i for i, n in enumerate(self.class_names)}
        missing = [n for n in class_names if n not in index]
        if missing:
            raise DfmetaError(f"{self.name}: no class named {missing[0]!r} (it has {self.n_classes} classes)")
        parts = [self.class_images(index[n])[rows if rows is not None else slice(None)] for n in class_names]
        return FewShotSplit(name or self.name, np.concatenate(parts), np.array([len(p) for p in parts]),
                            list(class_names), self.mean, self.std)

    @staticmethod
    def from_classes(name: str, per_class: list[np.ndarray], class_names: list[str],
                     mean: tuple[float, ...], std: tuple[float, ...]) -> "FewShotSplit":
        """Build from one uint8 array per class (all the same image shape)."""
        shapes = {a.shape[1:] for a in per_class if len(a)}
        if len(shapes) > 1:
            raise DfmetaError(f"{name}: images of different sizes {sorted(shapes)}; expected one size (resize when reading)")
        for cname, a in zip(class_names, per_class):
            if len(a) == 0:
                raise DfmetaError(f"{name}: class {cname!r} has no images")
        return FewShotSplit(name, np.concatenate(per_class), np.array([len(a) for a in per_class]),
                            list(class_names), tuple(mean), tuple(std))


# ---------------------------------------------------------------- cache

def cache_dir() -> Path:
    """Where decoded datasets are kept: ``$DFMETA_CACHE`` or ``~/.cache/dfmeta``."""
    return Path(os.environ.get("DFMETA_CACHE", Path.home() / ".cache" / "dfmeta"))


def source_key(*parts: object, paths: list[Path] = ()) -> str:
    """A cache key from options and the size/mtime of source files."""
    h = hashlib.sha1(json.dumps([str(p) for p in parts]).encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def save_split_file(split: FewShotSplit, path: str | os.PathLike, compress: bool = False) -> None:
    """Write a decoded split as one ``.npz`` file (atomically); :func:`load_split_file` reads it back."""
    buf = io.BytesIO()
    meta = dict(name=split.name, class_names=split.class_names, mean=split.mean, std=split.std)
    (np.savez_compressed if compress else np.savez)(buf, images=split.images, counts=split.counts,
                                                    meta=np.array(json.dumps(meta)))
    atomic_write(path, buf.getvalue())


def load_split_file(path: str | os.PathLike) -> FewShotSplit:
    """Read a split written by :func:`save_split_file`."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return FewShotSplit(meta["name"], z["images"], z["counts"], meta["class_names"],
                                tuple(meta["mean"]), tuple(meta["std"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise DfmetaError(f"{path}: not a readable dfmeta split file ({e.__class__.__name__})") from None


def cached(key: str, build: Callable[[], FewShotSplit], use_cache: bool = True) -> FewShotSplit:
    """Load a decoded split from the cache, or build and store it (atomically)."""
    path = cache_dir() / f"{key}.npz"
    if use_cache and path.exists():
        try:
            return load_split_file(path)
        except DfmetaError:
            pass  # a damaged cache entry is rebuilt
    split = build()
    if use_cache:
        try:
            save_split_file(split, path)
        except OSError:
            pass  # a read-only cache is not an error
    return split


def bundled_splits(name: str) -> Path:
    """Folder of the split lists shipped with dfmeta for ``name`` (``cifar-fs``, ``fc100``, ``omniglot``)."""
    return Path(__file__).parent / "splits" / name


def read_split_list(path: Path) -> list[str]:
    """Non-empty, stripped lines of a split list file."""
    if not path.is_file():
        raise DfmetaError(f"{path}: split list not found")
    names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if not names:
        raise DfmetaError(f"{path}: split list is empty")
    return names
