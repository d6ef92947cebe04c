"""Reader for class-per-folder image trees with split lists (the layout of ``shared/data/cifar100``)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from dfmeta.data.dataset import FewShotSplit
from dfmeta.data.images import decode_many
from dfmeta.errors import DfmetaError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def list_class_images(images_dir: Path, class_name: str) -> list[Path]:
    """Sorted image files of one class folder, with an error naming the class when absent or empty."""
    d = images_dir / class_name
    if not d.is_dir():
        raise DfmetaError(f"{images_dir}: split lists class {class_name!r} but there is no folder {d}")
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DfmetaError(f"{d}: class {class_name!r} has no images")
    return files


def read_image_folder(images_dir: Path, class_names: list[str], name: str, mean: tuple[float, ...],
                      std: tuple[float, ...], native_size: int | None, size: int | None,
                      channels: int = 3) -> FewShotSplit:
    """Decode ``images_dir/<class>/<file>`` for the given classes (files in sorted order).

    ``native_size`` (if set) is the size every file must have; ``size`` resizes after that check.
    """
    if not images_dir.is_dir():
        raise DfmetaError(f"{images_dir}: image directory not found")
    files = [[str(p) for p in list_class_images(images_dir, c)] for c in class_names]  # validate before decoding
    return decode_classes(name, class_names, files, files, mean, std, size, channels, native_size)


def decode_classes(name: str, class_names: list[str], sources: list[Sequence[str | bytes]],
                   where: list[Sequence[str]], mean: tuple[float, ...], std: tuple[float, ...], size: int | None,
                   channels: int, native_size: int | None = None) -> FewShotSplit:
    """Decode each class's images (file paths or encoded bytes; ``where`` names them in errors) into one split.

    ``native_size`` (if set) is the size every image must have; ``size`` resizes (after that check).
    """
    counts = [len(src) for src in sources]
    flat_src = [x for src in sources for x in src]
    flat_where = [x for names in where for x in names]
    images = decode_many(flat_src, flat_where, None if native_size else size, channels, expect_size=native_size)
    if size and native_size:
        images = resize_uint8(images, size)
    return FewShotSplit(name, images, np.array(counts), list(class_names), tuple(mean), tuple(std))


def resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of uint8 ``[N, H, W, C]`` images to ``size`` x ``size``."""
    from PIL import Image
    if images.shape[1] == size and images.shape[2] == size:
        return images
    if not len(images):
        return images.reshape(0, size, size, images.shape[3])
    out = []
    for im in images:
        mode_im = Image.fromarray(im[:, :, 0] if im.shape[2] == 1 else im)
        r = np.asarray(mode_im.resize((size, size), Image.BILINEAR), np.uint8)
        out.append(r[:, :, None] if r.ndim == 2 else r)
    return np.stack(out)
