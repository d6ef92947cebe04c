"""Seeded N-way K-shot episodes and the uint8 -> normalised input conversion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dfmeta.data.dataset import FewShotSplit
from dfmeta.data.episodes import Episodes, sample_episodes, to_input
from dfmeta.errors import DfmetaError


def labelled_split(counts: list[int]) -> FewShotSplit:
    """Class ``c``'s images all have pixel value ``c`` (so rows can be traced back to classes)."""
    per = [np.full((n, 2, 2, 3), c, np.uint8) for c, n in enumerate(counts)]
    return FewShotSplit.from_classes("lab", per, [f"class{c}" for c in range(len(counts))], (0.0,) * 3, (1.0,) * 3)


SPLIT = labelled_split([12, 10, 11, 12, 10, 12, 13])


def test_same_seed_same_episodes_other_seed_different() -> None:
    a = sample_episodes(SPLIT, 5, 2, 3, 20, seed=7)
    b = sample_episodes(SPLIT, 5, 2, 3, 20, seed=7)
    c = sample_episodes(SPLIT, 5, 2, 3, 20, seed=8)
    for x in ("support", "query", "classes"):
        assert np.array_equal(getattr(a, x), getattr(b, x))
    assert not np.array_equal(a.support, c.support) or not np.array_equal(a.classes, c.classes)


def test_shapes_labels_and_disjoint_support_query() -> None:
    ep = sample_episodes(SPLIT, 5, 3, 4, 30, seed=1)
    assert ep.shape == (30, 5, 3, 4) and len(ep) == 30 and ep.classes.shape == (30, 5)
    labels = SPLIT.labels()
    for e in range(len(ep)):
        assert len(set(ep.classes[e].tolist())) == 5  # distinct classes per episode
        for j, c in enumerate(ep.classes[e]):
            # the j-th row of support and query holds images of class classes[e, j]: the label is j
            assert (labels[ep.support[e, j]] == c).all() and (labels[ep.query[e, j]] == c).all()
            assert (SPLIT.images[ep.support[e, j], 0, 0, 0] == c).all()
        rows_s, rows_q = set(ep.support[e].ravel().tolist()), set(ep.query[e].ravel().tolist())
        assert len(rows_s) == 15 and len(rows_q) == 20 and not rows_s & rows_q
    assert set(ep.classes.ravel().tolist()) == set(range(SPLIT.n_classes))  # every class gets drawn


def test_too_few_images_names_the_class() -> None:
    split = labelled_split([12, 12, 5, 12])
    with pytest.raises(DfmetaError, match=r"lab: class 'class2' has 5 images, fewer than K \+ Q = 1 \+ 5 = 6"):
        sample_episodes(split, 3, 1, 5, 4, seed=0)
    assert sample_episodes(split, 3, 1, 4, 4, seed=0).shape == (4, 3, 1, 4)


def test_too_many_ways() -> None:
    with pytest.raises(DfmetaError, match="8-way episodes need 8 classes, the split has 7"):
        sample_episodes(SPLIT, 8, 1, 1, 1, seed=0)


def test_save_load_round_trip(tmp_path: Path) -> None:
    ep = sample_episodes(SPLIT, 4, 1, 2, 5, seed=3)
    ep.save(str(tmp_path / "ep.npz"))
    back = Episodes.load(str(tmp_path / "ep.npz"))
    assert back.seed == 3 and all(np.array_equal(getattr(ep, x), getattr(back, x))
                                  for x in ("support", "query", "classes"))


def test_to_input_normalises_channels_first() -> None:
    img = torch.tensor([[[[0, 51, 255]]]], dtype=torch.uint8).expand(2, 3, 4, 3)  # [N, H, W, C]
    x = to_input(img, (0.0, 0.2, 0.5), (1.0, 0.5, 0.5))
    assert x.shape == (2, 3, 3, 4) and x.dtype == torch.float32
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([0.0, 0.0, 1.0]))
