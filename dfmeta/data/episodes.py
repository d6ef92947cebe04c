"""Seeded N-way K-shot Q-query episodes, and turning uint8 images into normalised model inputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dfmeta.data.dataset import FewShotSplit
from dfmeta.errors import DfmetaError


@dataclass
class Episodes:
    """A fixed set of episodes over one split: global image rows of support ``[E, N, K]`` and query ``[E, N, Q]``.

    Labels are the position of the class within its episode (``0..N-1``); ``classes`` ``[E, N]`` are class indices.
    """

    support: np.ndarray
    query: np.ndarray
    classes: np.ndarray
    seed: int

    def __len__(self) -> int:
        return len(self.support)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(episodes, ways, shots, queries)."""
        e, n, k = self.support.shape
        return e, n, k, self.query.shape[2]

    def save(self, path: str) -> None:
        np.savez(path, support=self.support, query=self.query, classes=self.classes, seed=self.seed)

    @staticmethod
    def load(path: str) -> "Episodes":
        with np.load(path) as z:
            return Episodes(z["support"], z["query"], z["classes"], int(z["seed"]))


def check_episodes(split: FewShotSplit, n_way: int, k_shot: int, n_query: int) -> None:
    """Raise if ``split`` cannot give N-way K-shot Q-query episodes (too few classes, or images in a class)."""
    if n_way > split.n_classes:
        raise DfmetaError(f"{split.name}: {n_way}-way episodes need {n_way} classes, the split has {split.n_classes}")
    need = k_shot + n_query
    small = [(n, c) for n, c in zip(split.class_names, split.counts) if c < need]
    if small:
        raise DfmetaError(f"{split.name}: class {small[0][0]!r} has {small[0][1]} images, fewer than "
                          f"K + Q = {k_shot} + {n_query} = {need}")


def sample_episodes(split: FewShotSplit, n_way: int, k_shot: int, n_query: int, n_episodes: int,
                    seed: int) -> Episodes:
    """Draw ``n_episodes`` episodes with numpy's PCG64 seeded by ``seed``: the same episodes on every machine."""
    check_episodes(split, n_way, k_shot, n_query)
    need = k_shot + n_query
    rng = np.random.Generator(np.random.PCG64(seed))
    classes = np.empty((n_episodes, n_way), np.int64)
    rows = np.empty((n_episodes, n_way, need), np.int64)
    for e in range(n_episodes):
        classes[e] = rng.choice(split.n_classes, n_way, replace=False)
        for j, c in enumerate(classes[e]):
            rows[e, j] = split.starts[c] + rng.choice(split.counts[c], need, replace=False)
    return Episodes(rows[:, :, :k_shot].copy(), rows[:, :, k_shot:].copy(), classes, seed)


def to_input(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 ``[..., H, W, C]`` to normalised float ``[..., C, H, W]`` (on the images' device)."""
    x = images.movedim(-1, -3).float().div_(255)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(-1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(-1, 1, 1)
    return (x - m) / s
