"""Image decoding with Pillow: one file or one in-memory blob to uint8 [H, W, C], with clear errors."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from dfmeta.errors import DfmetaError


def decode_image(source: str | bytes, where: str, size: int | None, channels: int,
                 expect_size: int | None = None) -> np.ndarray:
    """Decode one image to uint8 ``[H, W, channels]``.

    ``size`` resizes (bilinear) to a square; ``expect_size`` instead requires that size and fails otherwise.
    ``where`` names the file in errors.
    """
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            im.load()
            im = im.convert("RGB" if channels == 3 else "L")
            if expect_size is not None and im.size != (expect_size, expect_size):
                raise DfmetaError(f"{where}: image is {im.size[0]}x{im.size[1]}, expected {expect_size}x{expect_size}")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except DfmetaError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DfmetaError(f"{where}: cannot decode image ({e.__class__.__name__}: {e})") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def decode_many(sources: Sequence[str | bytes], names: Sequence[str], size: int | None, channels: int,
                expect_size: int | None = None, workers: int = 8) -> np.ndarray:
    """Decode many images (threaded: Pillow releases the GIL) into one uint8 ``[N, H, W, C]`` array."""
    if not sources:
        return np.zeros((0, size or 1, size or 1, channels), np.uint8)
    with ThreadPoolExecutor(workers) as pool:
        arrs = list(pool.map(lambda a: decode_image(a[0], a[1], size, channels, expect_size), zip(sources, names)))
    shapes = {a.shape for a in arrs}
    if len(shapes) > 1:
        first = arrs[0].shape
        bad = next(n for a, n in zip(arrs, names) if a.shape != first)
        raise DfmetaError(f"{bad}: image shape {next(a.shape for a, n in zip(arrs, names) if n == bad)} differs from "
                          f"{first} of {names[0]}; pass an image size to resize")
    return np.stack(arrs)
