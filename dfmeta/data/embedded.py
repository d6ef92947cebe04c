"""A procedurally generated few-shot dataset: no files, fixed by a seed; the quick start's and tests' default.

Each class is a random low-frequency colour pattern (a sum of oriented sinusoidal gratings and a blob); an image of
the class is that pattern under a random shift, phase and contrast jitter and pixel noise. Classes are distinct but
need a few examples to tell apart, so few-shot learning and meta-learning both show signal.
"""

from __future__ import annotations

import numpy as np

from dfmeta.data.dataset import FewShotSplit

EMBEDDED_MEAN = (0.5, 0.5, 0.5)
EMBEDDED_STD = (0.25, 0.25, 0.25)
# class ranges of the splits: 160 meta-train, 32 meta-val, 48 meta-test classes
EMBEDDED_SPLITS = {"train": (0, 160), "val": (160, 192), "test": (192, 240)}


def embedded_class(seed: int, c: int, n: int, size: int) -> np.ndarray:
    """``n`` uint8 images ``[n, size, size, 3]`` of class ``c``."""
    rng = np.random.default_rng([seed, c])
    yy, xx = np.meshgrid(np.linspace(0, 1, size, endpoint=False), np.linspace(0, 1, size, endpoint=False),
                         indexing="ij")
    k = 3
    freq = rng.uniform(1.0, 4.0, k)
    theta = rng.uniform(0, np.pi, k)
    phase0 = rng.uniform(0, 2 * np.pi, k)
    colour = rng.normal(0, 1, (k, 3))
    blob_c = rng.uniform(0.25, 0.75, 2)
    blob_col = rng.normal(0, 1.5, 3)
    base = rng.normal(0, 0.5, 3)
    # instance jitter
    shift = rng.uniform(-0.25, 0.25, (n, 2))
    dphase = rng.normal(0, 1.2, (n, k))
    contrast = rng.uniform(0.7, 1.3, (n, 1, 1, 1))
    y = yy[None] - shift[:, 0, None, None]
    x = xx[None] - shift[:, 1, None, None]
    img = np.broadcast_to(base, (n, size, size, 3)).copy()
    for j in range(k):
        u = np.cos(theta[j]) * x + np.sin(theta[j]) * y
        wave = np.sin(2 * np.pi * freq[j] * u + phase0[j] + dphase[:, j, None, None])
        img += wave[..., None] * colour[j]
    blob = np.exp(-((y - blob_c[0]) ** 2 + (x - blob_c[1]) ** 2) / 0.02)
    img += blob[..., None] * blob_col
    img = img * contrast + rng.normal(0, 1.0, img.shape)
    img = 1 / (1 + np.exp(-img))
    return (img * 255).round().astype(np.uint8)


def embedded_split(split: str, seed: int = 0, per_class: int = 60, size: int = 32) -> FewShotSplit:
    """The ``train``/``val``/``test`` split of the embedded dataset."""
    lo, hi = EMBEDDED_SPLITS[split]
    per = [embedded_class(seed, c, per_class, size) for c in range(lo, hi)]
    names = [f"pattern_{c:03d}" for c in range(lo, hi)]
    return FewShotSplit.from_classes(f"embedded/{split}", per, names, EMBEDDED_MEAN, EMBEDDED_STD)
