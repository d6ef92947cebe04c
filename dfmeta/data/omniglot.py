"""Reader for Omniglot straight from the official zips ``images_background.zip`` and ``images_evaluation.zip``.

Layout: ``<root>/omniglot/images_{background,evaluation}.zip`` holding
``images_background/<Alphabet>/<characterNN>/<id>_<drawer>.png`` (105x105, white background, black strokes).
Each character is a class named ``<Alphabet>/<characterNN>``. Images are kept as drawn (white background = 255,
no inversion), resized (bilinear, antialiased) to 28 px by default, one channel.

Splits are alphabet-level lists with lines ``images_background/<Alphabet>``: ``<root>/omniglot/splits/`` (files
``train.txt``, ``val.txt``, ``test.txt``) when present, else the copy shipped with dfmeta
(``dfmeta/data/splits/omniglot``, the Vinyals et al. split as distributed with the data). An alphabet named by more than one list belongs only to the
first of train, val, test that names it, so splits never share a class: the distributed lists name Gurmukhi in
train and test, so it is a train alphabet here (1032/172/419 characters; torchmeta instead divides Gurmukhi by
character, 41 train and 4 test: 1028/172/423).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from dfmeta.data.dataset import FewShotSplit, bundled_splits, cached, read_split_list, source_key
from dfmeta.data.folder import decode_classes
from dfmeta.errors import DfmetaError

# Normalisation of the 28 px images (pixels in [0, 1]): the train split has mean 0.922 and standard deviation
# 0.216 (mostly white background); fixed constants, so that no statistics pass is needed.
OMNIGLOT_MEAN = (0.92,)
OMNIGLOT_STD = (0.22,)
ZIPS = ("images_background", "images_evaluation")
SPLIT_ORDER = ("train", "val", "test")


def omniglot_splits_dir(folder: Path) -> Path:
    """``folder/splits`` when it exists, else the split lists shipped with dfmeta."""
    return folder / "splits" if (folder / "splits").is_dir() else bundled_splits("omniglot")


def split_alphabets(splits_dir: Path) -> dict[str, list[str]]:
    """Alphabets (``images_background/<Alphabet>``) of each split, each in the first split list that names it."""
    seen: set[str] = set()
    out: dict[str, list[str]] = {}
    for split in SPLIT_ORDER:
        path = splits_dir / f"{split}.txt"
        names = read_split_list(path)
        for line in names:
            parts = line.split("/")
            if len(parts) != 2 or parts[0] not in ZIPS or not parts[1]:
                raise DfmetaError(f"{path}: bad line {line!r}; expected images_background/<Alphabet> or "
                                  "images_evaluation/<Alphabet>")
        out[split] = [a for a in dict.fromkeys(names) if a not in seen]
        seen.update(names)
        if not out[split]:
            raise DfmetaError(f"{path}: every alphabet it names is already in an earlier split")
    return out


def _zip_characters(path: Path) -> tuple[zipfile.ZipFile, dict[str, list[str]]]:
    """The open zip and its PNG members grouped by ``<zip name>/<Alphabet>/<characterNN>`` (sorted)."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DfmetaError(f"{path}: cannot open as a zip ({e})") from None
    chars: dict[str, list[str]] = {}
    for m in sorted(zf.namelist()):
        parts = m.split("/")
        if len(parts) == 4 and parts[3].lower().endswith(".png"):
            chars.setdefault("/".join(parts[:3]), []).append(m)
    return zf, chars


def _decode(folder: Path, alphabets: list[str], list_path: Path, name: str, size: int) -> FewShotSplit:
    opened = {z: _zip_characters(folder / f"{z}.zip") for z in sorted({a.split("/")[0] for a in alphabets})}
    class_names, sources, where = [], [], []
    try:
        for alphabet in alphabets:
            zip_name = alphabet.split("/")[0]
            zf, chars = opened[zip_name]
            keys = [k for k in chars if k.rsplit("/", 1)[0] == alphabet]
            if not keys:
                raise DfmetaError(f"{list_path}: alphabet {alphabet!r} has no characters in {zf.filename}")
            for key in keys:
                try:
                    sources.append([zf.read(m) for m in chars[key]])
                except (zipfile.BadZipFile, OSError) as e:
                    raise DfmetaError(f"{zf.filename}: cannot read {key} ({e})") from None
                where.append([f"{zf.filename}:{m}" for m in chars[key]])
                class_names.append(key.split("/", 1)[1])
    finally:
        for zf, _ in opened.values():
            zf.close()
    return decode_classes(name, class_names, sources, where, OMNIGLOT_MEAN, OMNIGLOT_STD, size, 1)


def read_omniglot(root: Path, split: str, size: int | None, use_cache: bool = True) -> FewShotSplit:
    """One split of Omniglot from ``root/omniglot``; ``size`` defaults to 28 px."""
    folder = root / "omniglot"
    splits_dir = omniglot_splits_dir(folder)
    alphabets = split_alphabets(splits_dir)[split]
    zips = [folder / f"{z}.zip" for z in ZIPS]
    for z in zips:
        if not z.is_file():
            raise DfmetaError(f"{z}: not found; expected the official Omniglot zips in {folder}")
    size = size or 28
    lists = [splits_dir / f"{s}.txt" for s in SPLIT_ORDER]
    key = source_key("omniglot", split, size, paths=[*lists, *zips])
    return cached(key, lambda: _decode(folder, alphabets, splits_dir / f"{split}.txt", f"omniglot/{split}", size),
                  use_cache)
