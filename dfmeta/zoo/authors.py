"""Import of the TGR authors' zoo format (``model/model_specific_{i}.pth`` + ``manifest.json``) into dfmeta's.

Files are read with ``torch.load(weights_only=True)``: pickled code is never executed.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from dfmeta.data.dataset import CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN, IMAGENET_STD
from dfmeta.errors import DfmetaError, reason
from dfmeta.runs import read_json_object
from dfmeta.zoo.format import Teacher, check_state, save_teacher, write_manifest

_CONV4_KEY = re.compile(r"^trunk\.(\d)\.(C|BN)\.(.+)$")
_DUPLICATE = re.compile(r"^trunk\.\d\.trunk\.[01]\.")
_ARCHES = {"conv4-32": "conv4", "conv4": "conv4"}


def convert_conv4_state(state: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """The authors' Conv4 keys to dfmeta's (``trunk.i.C`` -> ``blocks.i.conv``, ``trunk.i.BN`` -> ``blocks.i.bn``,
    ``trunk.5`` -> ``head``); the duplicate ``trunk.i.trunk.{0,1}`` registrations must equal the originals."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        m = _CONV4_KEY.match(k)
        if m:
            out[f"blocks.{m[1]}.{'conv' if m[2] == 'C' else 'bn'}.{m[3]}"] = v
        elif k.startswith("trunk.5."):
            out["head." + k[len("trunk.5."):]] = v
        elif _DUPLICATE.match(k):
            i, j, rest = k.split(".")[1], k.split(".")[3], ".".join(k.split(".")[4:])
            orig = f"trunk.{i}.{'C' if j == '0' else 'BN'}.{rest}"
            if orig in state and not torch.equal(state[orig], v):
                raise DfmetaError(f"{where}: {k} differs from {orig} (they should be the same tensor)")
        else:
            raise DfmetaError(f"{where}: unexpected key {k!r} for the authors' Conv4")
    return out


def dataset_normalisation(dataset: str) -> dict[str, list[float]]:
    """The authors' input normalisation for ``dataset`` where their manifest names none: CIFAR-100 statistics at 32 px
    (CIFAR-FS, FC100), ImageNet statistics otherwise (84 px: miniImageNet, CUB)."""
    mean, std = (CIFAR100_MEAN, CIFAR100_STD) if dataset in ("cifar-fs", "fc100") else (IMAGENET_MEAN, IMAGENET_STD)
    return {"mean": list(mean), "std": list(std)}


def import_authors_zoo(src: str | Path, dst: str | Path, dataset: str = "cifar-fs",
                       skip_bad: bool = False) -> tuple[int, list[str]]:
    """Convert an authors'-format zoo at ``src`` into a dfmeta zoo at ``dst``; returns (imported, skipped notes)."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise DfmetaError(f"{dst}: exists and is not an empty directory (an import never overwrites); choose a new "
                          "directory")
    man_path = src / "manifest.json"
    if not man_path.is_file():
        raise DfmetaError(f"{man_path}: not found (expected the authors' zoo manifest with the class names)")
    man: dict[str, Any] = read_json_object(man_path)
    classes = man.get("classes")
    if not isinstance(classes, list):
        raise DfmetaError(f"{man_path}: field 'classes' (index -> class name) missing")
    arch = _ARCHES.get(str(man.get("arch", "conv4-32")))
    if arch is None:
        raise DfmetaError(f"{man_path}: architecture {man.get('arch')!r} is not supported by the importer")
    models = man.get("models", {})
    files = sorted((src / "model").glob("model_specific_*.pth"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    if not files:
        raise DfmetaError(f"{src / 'model'}: no model_specific_*.pth files")
    norm = man.get("normalize", dataset_normalisation(dataset))
    if isinstance(models, dict) and len(models) > len(files):
        found = {f.stem.rsplit("_", 1)[1] for f in files}
        absent = sorted((m for m in models if m not in found), key=lambda m: (len(m), m))
        print(f"warning: {len(absent)} of the {len(models)} models {man_path} lists have no file in {src / 'model'} "
              f"(first: {absent[0]}); only the {len(files)} present are imported", file=sys.stderr)
    # written beside the destination and renamed at the end: an interrupted or failed import leaves nothing
    work = dst.with_name(f".{dst.name}.importing")
    if work.exists():
        shutil.rmtree(work)
    entries: list[dict[str, Any]] = []
    skipped: list[str] = []
    for f in files:
        mid = f.stem.rsplit("_", 1)[1]
        where = f"model {mid} ({f})"
        try:
            try:
                obj = torch.load(f, map_location="cpu", weights_only=True)
            except Exception as e:
                raise DfmetaError(f"{where}: cannot read ({reason(e)})") from None
            if not isinstance(obj, dict) or "teacher" not in obj or "specific" not in obj:
                raise DfmetaError(f"{where}: expected a dict with 'teacher' and 'specific'")
            specific = [int(i) for i in obj["specific"]]
            if any(i < 0 or i >= len(classes) for i in specific):
                raise DfmetaError(f"{where}: class index out of range 0..{len(classes) - 1}: {specific}")
            info = models.get(mid, {}) if isinstance(models, dict) else {}
            state = convert_conv4_state(obj["teacher"], where)
            t = Teacher(mid, arch, int(man.get("image_size", 32)), 3, tuple(norm["mean"]), tuple(norm["std"]),
                        dataset, [classes[i] for i in specific], state, info.get("heldout_acc"),
                        {"source": "authors-format import", "best_epoch": info.get("best_epoch")})
            check_state(t, where)
            entries.append(save_teacher(work, t))
        except DfmetaError as e:
            if not skip_bad:
                raise
            skipped.append(str(e))
    if not entries:
        shutil.rmtree(work, ignore_errors=True)
        raise DfmetaError(f"{src}: no model could be imported ({len(skipped)} skipped)")
    write_manifest(work, entries, {"source": str(src), "recipe": man.get("recipe", "")})
    if dst.is_dir():
        dst.rmdir()  # empty (checked above)
    work.rename(dst)
    return len(entries), skipped
