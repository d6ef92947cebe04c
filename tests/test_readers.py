"""Readers of the official formats, on small copies generated in each official layout."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dfmeta.data.cifar_archive import load_cifar100_archive
from dfmeta.data.dataset import IMAGENET_MEAN, bundled_splits, read_split_list
from dfmeta.data.omniglot import OMNIGLOT_MEAN, omniglot_splits_dir
from dfmeta.data.registry import DATASETS, load_split
from dfmeta.errors import DfmetaError


def encode(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    """Encoded image bytes; a bool array gives a 1-bit image like Omniglot's."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


# ---------------------------------------------------------------- CIFAR-100 python archive

FINE_NAMES = sorted(set(sum((read_split_list(bundled_splits("cifar-fs") / f"{s}.txt")
                             for s in ("train", "val", "test")), [])))
N_TRAIN, N_TEST = 3, 1  # images per class (the real archive: 500 and 100)


def official_pickle(obj: dict) -> bytes:
    """A pickle like the official (Python 2, protocol 2) files: numpy arrays via ``numpy.core.multiarray``."""
    return pickle.dumps(obj, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def cifar_parts(seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Per part, ``data`` [N, 3072] and ``fine_labels``, classes interleaved as in the real archive."""
    rng = np.random.default_rng(seed)
    parts = {}
    for part, per in (("train", N_TRAIN), ("test", N_TEST)):
        labels = rng.permutation(np.repeat(np.arange(100), per)).tolist()
        parts[part] = (rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8), labels)
    return parts


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def make_cifar_archive(path: Path, parts: dict, meta: dict | None = None) -> Path:
    members = {f"cifar-100-python/{p}": official_pickle({"data": d, "fine_labels": lab, "coarse_labels": lab})
               for p, (d, lab) in parts.items()}
    members["cifar-100-python/meta"] = official_pickle(meta or {"fine_label_names": FINE_NAMES})
    return write_tar(path, members)


@pytest.fixture(scope="module")
def cifar_archive(tmp_path_factory) -> tuple[Path, dict]:
    parts = cifar_parts()
    root = tmp_path_factory.mktemp("cifar_archive")
    make_cifar_archive(root / "cifar-100-python.tar.gz", parts)
    return root, parts


@pytest.mark.parametrize("split_dir,sizes", [("cifar-fs", (64, 16, 20)), ("fc100", (60, 20, 20))])
def test_cifar_archive_splits(cifar_archive, split_dir: str, sizes: tuple[int, int, int]) -> None:
    root, _ = cifar_archive
    seen: set[str] = set()
    for split, n in zip(("train", "val", "test"), sizes):
        s = load_split(split_dir, split, root)
        assert s.class_names == read_split_list(bundled_splits(split_dir) / f"{split}.txt")
        assert s.n_classes == n and s.images.shape == (n * (N_TRAIN + N_TEST), 32, 32, 3)
        assert set(s.counts.tolist()) == {N_TRAIN + N_TEST} and s.name == f"{split_dir}/{split}"
        seen |= set(s.class_names)
    assert seen == set(FINE_NAMES)


def test_cifar_archive_pixel_and_image_order(cifar_archive) -> None:
    root, parts = cifar_archive
    s = load_split("cifar-fs", "val", root)
    for c, name in enumerate(s.class_names):
        label = FINE_NAMES.index(name)
        rows = [d[i] for part in ("train", "test") for d, lab in [parts[part]] for i in range(len(lab))
                if lab[i] == label]  # the train images, then the test images, in archive order
        got = s.class_images(c)
        assert len(got) == len(rows)
        for img, row in zip(got, rows):
            assert img[0, 1, 0] == row[1] and img[0, 1, 1] == row[1024 + 1] and img[2, 5, 2] == row[2048 + 2 * 32 + 5]
            assert np.array_equal(img, row.reshape(3, 32, 32).transpose(1, 2, 0))
    small = load_split("cifar-fs", "val", root, image_size=16)
    assert small.images.shape == (16 * 4, 16, 16, 3)


def test_cifar_archive_refuses_foreign_pickles(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    bad = write_tar(tmp_path / "evil.tar.gz", {f"cifar-100-python/{m}": pickle.dumps({"data": Evil()})
                                               for m in ("train", "test", "meta")})
    with pytest.raises(DfmetaError, match="evil.tar.gz: cannot read cifar-100-python/train .*refusing"):
        load_cifar100_archive(bad)


def test_cifar_archive_bad_inputs(tmp_path: Path) -> None:
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(DfmetaError, match="junk.tar.gz: cannot open as a tar archive"):
        load_cifar100_archive(tmp_path / "junk.tar.gz")
    partial = write_tar(tmp_path / "partial.tar.gz", {"cifar-100-python/train": official_pickle({})})
    with pytest.raises(DfmetaError, match="partial.tar.gz: no file cifar-100-python/test"):
        load_cifar100_archive(partial)
    parts = cifar_parts()
    parts["test"] = (parts["test"][0][:, :100], parts["test"][1])
    with pytest.raises(DfmetaError, match=r"shape.tar.gz: cifar-100-python/test 'data' is uint8 \(100, 100\)"):
        load_cifar100_archive(make_cifar_archive(tmp_path / "shape.tar.gz", cifar_parts() | {"test": parts["test"]}))
    root = tmp_path / "renamed"
    root.mkdir()
    make_cifar_archive(root / "cifar-100-python.tar.gz", cifar_parts(),
                       {"fine_label_names": [n.upper() for n in FINE_NAMES]})
    with pytest.raises(DfmetaError, match=r"cifar-fs/test.txt: class '\w+' is not a CIFAR-100 fine label"):
        load_split("cifar-fs", "test", root)


# ---------------------------------------------------------------- Omniglot zips

ALPHABETS = {"images_background": {"Alpha": 2, "Beta": 1, "Gamma": 1}, "images_evaluation": {"Delta": 2, "Eps": 1}}
DRAWERS = 3


def stroke_image(k: int) -> bytes:
    """A 105x105 binary PNG: white background, a black bar at a position set by ``k``."""
    a = np.ones((105, 105), bool)
    a[10 + 5 * k: 30 + 5 * k, 20:60] = False
    return encode(a)


def make_omniglot(root: Path, splits: dict[str, list[str]] | None) -> Path:
    folder = root / "omniglot"
    folder.mkdir(parents=True)
    k = 0
    for zname, alphabets in ALPHABETS.items():
        with zipfile.ZipFile(folder / f"{zname}.zip", "w") as zf:
            for alphabet, n_chars in alphabets.items():
                for ch in range(1, n_chars + 1):
                    k += 1
                    for d in range(1, DRAWERS + 1):
                        zf.writestr(f"{zname}/{alphabet}/character{ch:02d}/{k:04d}_{d:02d}.png", stroke_image(k))
    if splits is not None:
        (folder / "splits").mkdir()
        for split, lines in splits.items():
            (folder / "splits" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return folder


SPLITS = {"train": ["images_background/Alpha", "images_evaluation/Delta"], "val": ["images_background/Beta"],
          "test": ["images_evaluation/Eps", "images_background/Alpha", "images_background/Gamma"]}


def test_omniglot_from_zips(tmp_path: Path) -> None:
    make_omniglot(tmp_path, SPLITS)
    train = load_split("omniglot", "train", tmp_path)
    assert train.class_names == ["Alpha/character01", "Alpha/character02", "Delta/character01", "Delta/character02"]
    assert train.images.shape == (4 * DRAWERS, 28, 28, 1) and set(train.counts.tolist()) == {DRAWERS}
    assert train.mean == OMNIGLOT_MEAN and train.channels == DATASETS["omniglot"].channels == 1
    assert train.images[0, 0, 0, 0] == 255 and train.images[0].min() == 0  # white background, black strokes
    assert not np.array_equal(train.class_images(0)[0], train.class_images(1)[0])
    # Alpha is named by train and test: it belongs to train only
    test = load_split("omniglot", "test", tmp_path)
    assert test.class_names == ["Eps/character01", "Gamma/character01"]
    assert load_split("omniglot", "val", tmp_path, image_size=20).images.shape == (DRAWERS, 20, 20, 1)


def test_omniglot_split_list_errors(tmp_path: Path) -> None:
    folder = make_omniglot(tmp_path, {**SPLITS, "val": ["images_background/Zeta"]})
    with pytest.raises(DfmetaError, match=r"val.txt: alphabet 'images_background/Zeta' has no characters in .*"
                                          r"images_background.zip"):
        load_split("omniglot", "val", tmp_path)
    (folder / "splits/val.txt").write_text("Beta\n")
    with pytest.raises(DfmetaError, match=r"val.txt: bad line 'Beta'; expected images_background/<Alphabet>"):
        load_split("omniglot", "train", tmp_path)
    (folder / "splits/val.txt").write_text("images_background/Alpha\n")
    with pytest.raises(DfmetaError, match="val.txt: every alphabet it names is already in an earlier split"):
        load_split("omniglot", "val", tmp_path)
    (folder / "splits/val.txt").write_text("images_background/Beta\n")
    (folder / "images_evaluation.zip").unlink()
    with pytest.raises(DfmetaError, match="images_evaluation.zip: not found"):
        load_split("omniglot", "train", tmp_path)


def test_omniglot_bundled_split_lists(tmp_path: Path) -> None:
    folder = make_omniglot(tmp_path, None)
    assert omniglot_splits_dir(folder) == bundled_splits("omniglot")
    with pytest.raises(DfmetaError, match=r"omniglot/train.txt: alphabet 'images_background/Alphabet_of_the_Magi'"):
        load_split("omniglot", "train", tmp_path)
    (folder / "images_background.zip").write_bytes(b"broken")
    with pytest.raises(DfmetaError, match="images_background.zip: cannot open as a zip"):
        load_split("omniglot", "val", tmp_path)


# ---------------------------------------------------------------- miniImageNet (Ravi & Larochelle)

def make_miniimagenet(root: Path, classes: dict[str, dict[str, int]]) -> Path:
    """``root/miniimagenet/{split}.csv`` and ``images/``: non-square JPEGs, class c image i of colour 40c + i."""
    folder = root / "miniimagenet"
    (folder / "images").mkdir(parents=True)
    for split, wnids in classes.items():
        lines = ["filename,label"]
        for c, (wnid, n) in enumerate(wnids.items()):
            for i in range(n):
                fn = f"{wnid}{i + 1:08d}.jpg"
                (folder / "images" / fn).write_bytes(encode(np.full((90, 100, 3), 40 * c + i, np.uint8), "JPEG"))
                lines.append(f"{fn},{wnid}")
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return folder


MINI = {"train": {"n01532829": 3, "n01558993": 2, "n01704323": 3}, "val": {"n01855672": 2}, "test": {"n01930112": 2}}


def test_miniimagenet(tmp_path: Path) -> None:
    make_miniimagenet(tmp_path, MINI)
    s = load_split("miniimagenet", "train", tmp_path)
    assert s.class_names == list(MINI["train"]) and s.counts.tolist() == [3, 2, 3]
    assert s.images.shape == (8, 84, 84, 3) and s.mean == IMAGENET_MEAN
    assert np.abs(s.images[:, 40, 40, 0].astype(int) - [0, 1, 2, 40, 41, 80, 81, 82]).max() <= 3  # JPEG rounding
    assert load_split("miniimagenet", "test", tmp_path, image_size=32).images.shape == (2, 32, 32, 3)


def test_miniimagenet_errors(tmp_path: Path) -> None:
    with pytest.raises(DfmetaError, match="miniimagenet/val.csv: not found; expected the Ravi & Larochelle"):
        load_split("miniimagenet", "val", tmp_path)
    folder = make_miniimagenet(tmp_path, MINI)
    (folder / "val.csv").write_text("file,class\na.jpg,n1\n")
    with pytest.raises(DfmetaError, match="val.csv: expected the header 'filename,label'"):
        load_split("miniimagenet", "val", tmp_path)
    (folder / "val.csv").write_text("filename,label\na.jpg\n")
    with pytest.raises(DfmetaError, match="val.csv: line 2: expected 'filename,label'"):
        load_split("miniimagenet", "val", tmp_path)
    (folder / "test.csv").write_text("filename,label\nn0193011200000001.jpg,n01930112\nmissing.jpg,n01930112\n")
    with pytest.raises(DfmetaError, match="test.csv: lists missing.jpg but .*images/missing.jpg does not exist"):
        load_split("miniimagenet", "test", tmp_path)


# ---------------------------------------------------------------- CUB-200-2011

def make_cub(root: Path, n_classes: int = 200) -> Path:
    images = root / "CUB_200_2011" / "images"
    for i in range(n_classes):
        d = images / f"{i + 1:03d}.Bird_{i}"
        d.mkdir(parents=True)
        grey = np.full((20 + i % 3, 24), i, np.uint8)  # varied sizes; one greyscale image per class
        (d / f"Bird_{i}_0001_{i}.jpg").write_bytes(encode(grey, "JPEG"))
        (d / f"Bird_{i}_0002_{i}.jpg").write_bytes(encode(np.full((30, 26, 3), i, np.uint8), "JPEG"))
    return images


def test_cub_class_split(tmp_path: Path) -> None:
    make_cub(tmp_path)
    splits = {s: load_split("cub", s, tmp_path) for s in ("train", "val", "test")}
    assert [splits[s].n_classes for s in splits] == [100, 50, 50]
    assert splits["train"].class_names[:2] == ["001.Bird_0", "003.Bird_2"]
    assert splits["val"].class_names[:2] == ["002.Bird_1", "006.Bird_5"]
    assert splits["test"].class_names[:2] == ["004.Bird_3", "008.Bird_7"]
    names = [n for s in splits.values() for n in s.class_names]
    assert len(set(names)) == 200
    test = splits["test"]
    assert test.images.shape == (100, 84, 84, 3) and test.mean == IMAGENET_MEAN
    assert abs(int(test.class_images(1)[0, 40, 40, 1]) - 7) <= 2  # greyscale image, converted to RGB
    assert load_split("cub", "val", tmp_path, image_size=32, use_cache=False).images.shape == (100, 32, 32, 3)


def test_cub_errors(tmp_path: Path) -> None:
    with pytest.raises(DfmetaError, match="CUB_200_2011/images: not found; expected the extracted CUB_200_2011.tgz"):
        load_split("cub", "train", tmp_path)
    make_cub(tmp_path, n_classes=12)
    with pytest.raises(DfmetaError, match="found 12 class folders, expected 200"):
        load_split("cub", "train", tmp_path)
