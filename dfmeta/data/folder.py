"""Reader for class-per-folder image trees with split lists (the layout of ``shared/data/cifar100``)."""

from __future__ import annotations

from pathlib import Path

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
    files = {c: list_class_images(images_dir, c) for c in class_names}  # validate all before decoding
    per_class = []
    for c in class_names:
        paths = [str(p) for p in files[c]]
        arr = decode_many(paths, paths, None if native_size else size, channels, expect_size=native_size)
        per_class.append(resize_uint8(arr, size) if size else arr)
    return FewShotSplit.from_classes(name, per_class, class_names, mean, std)


def resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of uint8 ``[N, H, W, C]`` images to ``size`` x ``size``."""
    from PIL import Image
    if images.shape[1] == size and images.shape[2] == size:
        return images
    out = []
    for im in images:
        mode_im = Image.fromarray(im[:, :, 0] if im.shape[2] == 1 else im)
        r = np.asarray(mode_im.resize((size, size), Image.BILINEAR), np.uint8)
        out.append(r[:, :, None] if r.ndim == 2 else r)
    return np.stack(out)
