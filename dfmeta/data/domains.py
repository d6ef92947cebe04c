"""Multi-domain data: a dataset spec ``a+b`` names several datasets, brought to one image format.

``cifar-fs+omniglot`` is the multi-domain scenario with the datasets here: teachers come from both meta-train
splits, and evaluation spreads its episodes evenly over both meta-test splits (the paper: CIFAR-FS, miniImageNet
and CUB, 1800 episodes). Every domain keeps its own input normalisation. Grey images become three equal channels
when the models take colour; images are resized to one size.
"""

from __future__ import annotations

import os

import numpy as np

from dfmeta.data.dataset import FewShotSplit
from dfmeta.data.registry import DATASETS, load_split
from dfmeta.errors import DfmetaError

SEP = "+"


def dataset_names(spec: str) -> list[str]:
    """The datasets of a spec: ``cifar-fs`` -> [cifar-fs], ``cifar-fs+omniglot`` -> [cifar-fs, omniglot]."""
    return [s for s in spec.split(SEP)]


def check_dataset_spec(spec: str, field: str = "dataset", single: bool = False) -> None:
    """A clear error for an unknown or repeated dataset in a spec (or, ``single``, for more than one dataset)."""
    names = dataset_names(spec)
    if single and len(names) > 1:
        raise DfmetaError(f"field {field!r}: one dataset expected, got {spec!r}")
    for n in names:
        if n not in DATASETS:
            several = "" if single else f" (several joined by '{SEP}' for the multi-domain scenario)"
            raise DfmetaError(f"field {field!r}: unknown dataset {n!r}; expected one of: {', '.join(sorted(DATASETS))}"
                              f"{several}")
    if len(set(names)) != len(names):
        raise DfmetaError(f"field {field!r}: {spec!r} names a dataset twice")


def with_channels(split: FewShotSplit, channels: int) -> FewShotSplit:
    """``split`` with ``channels`` image channels (grey to colour by repeating the channel)."""
    if split.channels == channels:
        return split
    if split.channels == 1 and channels == 3:
        return FewShotSplit(split.name, np.repeat(split.images, 3, axis=3), split.counts, split.class_names,
                            tuple(split.mean) * 3 if len(split.mean) == 1 else split.mean,
                            tuple(split.std) * 3 if len(split.std) == 1 else split.std)
    raise DfmetaError(f"{split.name}: has {split.channels}-channel images, cannot make {channels}-channel ones")


def load_domains(spec: str, split: str, root: str | os.PathLike | None = None, image_size: int | None = None,
                 channels: int | None = None) -> list[FewShotSplit]:
    """One split of every dataset of ``spec``, at one image size and channel count.

    ``image_size`` None keeps the datasets' own size (they must agree); ``channels`` None keeps their own channels
    (they must agree).
    """
    check_dataset_spec(spec)
    names = dataset_names(spec)
    splits = [load_split(n, split, root, image_size) for n in names]
    if channels is None:
        channels = max(s.channels for s in splits)
    splits = [with_channels(s, channels) for s in splits]
    sizes = {s.name: s.image_size for s in splits}
    if len(set(sizes.values())) > 1:
        raise DfmetaError(f"datasets of {spec!r} have different image sizes "
                          f"({', '.join(f'{k} {v}px' for k, v in sizes.items())}); set --image-size")
    return splits


__all__ = ["dataset_names", "check_dataset_spec", "with_channels", "load_domains"]
