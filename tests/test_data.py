"""The in-memory split, the decode-once cache, the image-folder reader's errors, the registry, the embedded dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dfmeta.data.folder as folder
from dfmeta.data.dataset import CIFAR100_MEAN, CIFAR100_STD, FewShotSplit, cache_dir, cached
from dfmeta.data.embedded import embedded_split
from dfmeta.data.registry import load_split
from dfmeta.errors import DfmetaError


def write_png(path: Path, value: int, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


def make_cifar_folder(root: Path, classes: dict[str, list[str]], per_class: int = 3) -> Path:
    """``root/cifar100`` in the folder layout: one flat-colour PNG per image, CIFAR-FS split lists ``classes``."""
    base = root / "cifar100"
    for split, names in classes.items():
        (base / "splits" / "cifar-fs").mkdir(parents=True, exist_ok=True)
        (base / "splits" / "cifar-fs" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for c, name in enumerate(names):
            for i in range(per_class):
                write_png(base / "images" / name / f"{i:03d}.png", 10 * c + i)
    return base


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    make_cifar_folder(tmp_path, {"train": ["apple", "bee"], "val": ["cup"], "test": ["dog", "eel"]})
    return tmp_path


def tiny_split() -> FewShotSplit:
    per = [np.full((2, 4, 4, 3), c, np.uint8) for c in range(3)]
    return FewShotSplit.from_classes("tiny", per, ["a", "b", "c"], (0.5,) * 3, (0.25,) * 3)


# ---------------------------------------------------------------- FewShotSplit and the cache

def test_split_layout_and_subset() -> None:
    s = tiny_split()
    assert (s.n_classes, s.image_size, s.channels) == (3, 4, 3)
    assert s.labels().tolist() == [0, 0, 1, 1, 2, 2]
    assert (s.class_images(2) == 2).all()
    sub = s.subset(["c", "a"], rows=slice(0, 1))
    assert sub.class_names == ["c", "a"] and sub.counts.tolist() == [1, 1] and sub.images[:, 0, 0, 0].tolist() == [2, 0]
    with pytest.raises(DfmetaError, match="'zz'"):
        s.subset(["zz"])


def test_cache_round_trip_builds_once() -> None:
    calls = []

    def build() -> FewShotSplit:
        calls.append(1)
        return tiny_split()

    first = cached("roundtrip", build)
    second = cached("roundtrip", build)
    assert len(calls) == 1
    assert np.array_equal(first.images, second.images) and second.class_names == first.class_names
    assert (second.mean, second.std) == (first.mean, first.std) and second.name == "tiny"
    cached("roundtrip", build, use_cache=False)
    assert len(calls) == 2


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b"not an npz" * 5])
def test_damaged_cache_is_rebuilt(damage, tmp_path: Path) -> None:
    calls = []

    def build() -> FewShotSplit:
        calls.append(1)
        return tiny_split()

    key = f"damaged-{tmp_path.name}"
    cached(key, build)
    path = cache_dir() / f"{key}.npz"
    path.write_bytes(damage(path.read_bytes()))
    again = cached(key, build)
    assert len(calls) == 2 and np.array_equal(again.images, tiny_split().images)
    cached(key, build)  # the rebuilt entry is good again
    assert len(calls) == 2


def test_folder_dataset_decoded_once(cifar_root: Path, monkeypatch) -> None:
    decodes = []
    real = folder.decode_many
    monkeypatch.setattr(folder, "decode_many", lambda *a, **k: decodes.append(1) or real(*a, **k))
    a = load_split("cifar-fs", "train", cifar_root)
    b = load_split("cifar-fs", "train", cifar_root)
    assert len(decodes) == 1
    assert np.array_equal(a.images, b.images) and a.class_names == ["apple", "bee"]
    assert a.images.shape == (6, 32, 32, 3) and a.images[:, 0, 0, 0].tolist() == [0, 1, 2, 10, 11, 12]
    assert (a.mean, a.std) == (CIFAR100_MEAN, CIFAR100_STD)
    # a changed split list is a different source: decoded again
    (cifar_root / "cifar100/splits/cifar-fs/train.txt").write_text("bee\n")
    c = load_split("cifar-fs", "train", cifar_root)
    assert len(decodes) == 2 and c.class_names == ["bee"]
    resized = load_split("cifar-fs", "test", cifar_root, image_size=16)
    assert resized.images.shape == (6, 16, 16, 3)


# ---------------------------------------------------------------- image-folder reader errors

def read(images_dir: Path, classes: list[str], native: int | None = 32) -> FewShotSplit:
    return folder.read_image_folder(images_dir, classes, "t", (0.5,) * 3, (0.5,) * 3, native, None)


def test_missing_image_directory(tmp_path: Path) -> None:
    with pytest.raises(DfmetaError, match="nope: image directory not found"):
        read(tmp_path / "nope", ["a"])


def test_split_list_names_absent_class(cifar_root: Path) -> None:
    (cifar_root / "cifar100/splits/cifar-fs/val.txt").write_text("cup\nzebra\n")
    with pytest.raises(DfmetaError, match="class 'zebra' but there is no folder"):
        load_split("cifar-fs", "val", cifar_root)


def test_corrupt_image_names_file(tmp_path: Path) -> None:
    write_png(tmp_path / "a/000.png", 1)
    (tmp_path / "a/001.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DfmetaError, match=r"001\.png: cannot decode image"):
        read(tmp_path, ["a"])


def test_wrongly_sized_image_names_file(tmp_path: Path) -> None:
    write_png(tmp_path / "a/000.png", 1)
    write_png(tmp_path / "a/001.png", 1, size=30)
    with pytest.raises(DfmetaError, match=r"001\.png: image is 30x30, expected 32x32"):
        read(tmp_path, ["a"])
    with pytest.raises(DfmetaError, match=r"001\.png: image shape"):  # no native size and no resize: sizes differ
        read(tmp_path, ["a"], native=None)


def test_empty_class_folder_names_class(tmp_path: Path) -> None:
    write_png(tmp_path / "a/000.png", 1)
    (tmp_path / "b").mkdir()
    (tmp_path / "b/notes.txt").write_text("no images here")
    with pytest.raises(DfmetaError, match="class 'b' has no images"):
        read(tmp_path, ["a", "b"])


def test_split_list_missing_or_empty(cifar_root: Path) -> None:
    lst = cifar_root / "cifar100/splits/cifar-fs/test.txt"
    lst.write_text("\n\n")
    with pytest.raises(DfmetaError, match="test.txt: split list is empty"):
        load_split("cifar-fs", "test", cifar_root)
    lst.unlink()
    with pytest.raises(DfmetaError, match="test.txt: split list not found"):
        load_split("cifar-fs", "test", cifar_root)


# ---------------------------------------------------------------- registry

def test_registry_errors(tmp_path: Path) -> None:
    with pytest.raises(DfmetaError, match="unknown dataset 'nope'; expected one of: .*cifar-fs"):
        load_split("nope", "train", tmp_path)
    with pytest.raises(DfmetaError, match="unknown split 'dev'"):
        load_split("embedded", "dev", tmp_path)
    with pytest.raises(DfmetaError, match="data root not found"):
        load_split("cifar-fs", "train", tmp_path / "missing")
    with pytest.raises(DfmetaError, match="cifar100/images .* or .*cifar-100-python.tar.gz"):
        load_split("fc100", "train", tmp_path)
    from dfmeta.data.dataset import save_split_file
    save_split_file(embedded_split("val", per_class=4, size=8), tmp_path / "prepared" / "cifar-fs" / "val.npz")
    assert load_split("cifar-fs", "val", tmp_path).name  # the prepared split is served
    with pytest.raises(DfmetaError, match=r"test\.npz: split 'test' not prepared .*--splits test.*no raw data"):
        load_split("cifar-fs", "test", tmp_path)


# ---------------------------------------------------------------- embedded

def test_embedded_is_deterministic() -> None:
    a = embedded_split("val", seed=0, per_class=8, size=16)
    b = embedded_split("val", seed=0, per_class=8, size=16)
    c = embedded_split("val", seed=1, per_class=8, size=16)
    assert np.array_equal(a.images, b.images) and not np.array_equal(a.images, c.images)
    assert a.images.shape == (32 * 8, 16, 16, 3) and a.n_classes == 32 and set(a.counts.tolist()) == {8}
    assert not np.array_equal(a.class_images(0), a.class_images(1))
    full = load_split("embedded", "test")
    assert (full.n_classes, full.image_size, full.channels) == (48, 32, 3)
    train_names = set(embedded_split("train", per_class=1, size=16).class_names)
    assert not train_names & set(a.class_names) and not train_names & set(full.class_names)
