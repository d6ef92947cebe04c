"""Integration: the readers on the real data (skipped when it is absent; see ``conftest.require_data``).

Decoded splits go to the session's cache, so later tests of the session reuse them. Timings on a loaded 2-core
machine: CIFAR-FS train ~10 s, val/test ~3 s each; Omniglot train ~3 s, val+test ~2 s.
"""

from __future__ import annotations

import zipfile
from collections import defaultdict

import pytest
from conftest import require_data

from dfmeta.data.dataset import bundled_splits, read_split_list
from dfmeta.data.folder import list_class_images
from dfmeta.data.omniglot import ZIPS
from dfmeta.data.registry import load_split

pytestmark = pytest.mark.integration
SPLITS = ("train", "val", "test")


@pytest.mark.parametrize("split_dir,name", [(d, n) for d in ("cifar-fs", "fc100", "omniglot") for n in SPLITS])
def test_bundled_split_lists_match_the_data(split_dir: str, name: str) -> None:
    base = require_data("omniglot/splits" if split_dir == "omniglot" else f"cifar100/splits/{split_dir}")
    assert read_split_list(bundled_splits(split_dir) / f"{name}.txt") == read_split_list(base / f"{name}.txt")


@pytest.mark.parametrize("split,n_classes", [("train", 64), ("val", 16), ("test", 20)])
def test_cifar_fs_folder(split: str, n_classes: int) -> None:
    root = require_data("cifar100").parent
    s = load_split("cifar-fs", split, root)
    assert s.n_classes == n_classes and s.images.shape == (n_classes * 600, 32, 32, 3)
    assert set(s.counts.tolist()) == {600}
    assert s.class_names == read_split_list(root / "cifar100/splits/cifar-fs" / f"{split}.txt")


def test_fc100_folder() -> None:
    root = require_data("cifar100").parent
    lists = {s: read_split_list(root / "cifar100/splits/fc100" / f"{s}.txt") for s in SPLITS}
    assert [len(lists[s]) for s in SPLITS] == [60, 20, 20]
    assert len(set(sum(lists.values(), []))) == 100
    for c in lists["train"] + lists["test"]:  # listed only: decoding every split twice would be slow
        assert len(list_class_images(root / "cifar100/images", c)) == 600
    val = load_split("fc100", "val", root)
    assert val.images.shape == (20 * 600, 32, 32, 3) and val.class_names == lists["val"]


def expected_omniglot_characters(folder) -> dict[str, set[str]]:
    """Characters of each split, computed from the zips: an alphabet belongs to the first list naming it."""
    chars: dict[str, set[str]] = defaultdict(set)
    for z in ZIPS:
        for m in zipfile.ZipFile(folder / f"{z}.zip").namelist():
            parts = m.split("/")
            if len(parts) == 4 and m.endswith(".png"):
                chars["/".join(parts[:2])].add("/".join(parts[1:3]))
    assert sum(map(len, chars.values())) == 1623
    out, seen = {}, set()
    for s in SPLITS:
        alphabets = [a for a in read_split_list(folder / "splits" / f"{s}.txt") if a not in seen]
        seen |= set(alphabets)
        out[s] = set().union(*(chars[a] for a in alphabets))
    return out


def test_omniglot_zips() -> None:
    folder = require_data("omniglot")
    expected = expected_omniglot_characters(folder)
    assert [len(expected[s]) for s in SPLITS] == [1032, 172, 419]
    seen: set[str] = set()
    for s in SPLITS:
        split = load_split("omniglot", s, folder.parent)
        assert set(split.class_names) == expected[s] and not seen & expected[s]
        assert split.images.shape == (len(expected[s]) * 20, 28, 28, 1) and set(split.counts.tolist()) == {20}
        seen |= expected[s]
    assert split.images.mean() > 200  # white background kept
