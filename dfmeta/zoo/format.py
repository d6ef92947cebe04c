"""The zoo on disk: ``manifest.json`` plus one safetensors file per teacher; loading verifies everything.

manifest.json::

    {"format": "dfmeta-zoo", "version": 1, "models": [
        {"id": "0", "arch": "conv4", "image_size": 32, "in_channels": 3,
         "normalize": {"mean": [...], "std": [...]}, "dataset": "cifar-fs",
         "class_names": ["cloud", ...], "heldout_acc": 90.83, "sha256": "...", "file": "model_0000.safetensors",
         "recipe": {...}}]}
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from dfmeta.errors import DfmetaError
from dfmeta.nets import ARCHITECTURES, build
from dfmeta.runs import ZOO_RECORD, atomic_write, read_json_object

ZOO_FORMAT = "dfmeta-zoo"
ZOO_VERSION = 1
MANIFEST = "manifest.json"


@dataclass
class Teacher:
    """One pre-trained classifier of the zoo; ``state`` holds parameters and BatchNorm buffers (dfmeta key names)."""

    id: str
    arch: str
    image_size: int
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: str
    class_names: list[str]
    state: dict[str, torch.Tensor]
    heldout_acc: float | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    file: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_ids(self) -> list[str]:
        """``dataset/class name`` of each label: the same string for one dataset class in every teacher."""
        return [f"{self.dataset}/{name}" for name in self.class_names]

    def model(self, bn: str = "running") -> nn.Module:
        """The teacher as a module in eval mode (``bn="running"``: its running statistics, as trained)."""
        m = build(self.arch, self.num_classes, self.image_size, self.in_channels, bn)
        state = self.state if bn == "running" else {k: v for k, v in self.state.items()
                                                    if "running_" not in k and "num_batches" not in k}
        m.load_state_dict(state, strict=True)
        return m.eval()

    def entry(self) -> dict[str, Any]:
        """The manifest entry (without checksum and file)."""
        return {"id": self.id, "arch": self.arch, "image_size": self.image_size, "in_channels": self.in_channels,
                "normalize": {"mean": list(self.mean), "std": list(self.std)}, "dataset": self.dataset,
                "class_names": list(self.class_names), "heldout_acc": self.heldout_acc, "recipe": self.recipe}


@dataclass
class Zoo:
    """A loaded zoo: teachers in manifest order."""

    path: Path
    teachers: list[Teacher]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.teachers)

    def __getitem__(self, i: int) -> Teacher:
        return self.teachers[i]

    def dataset_warning(self, datasets: list[str]) -> str:
        """A warning when the teachers do not come from the ``datasets`` a command trains or evaluates on (no teacher
        of one of them; a zoo whose teachers name no dataset is not judged); empty when they do."""
        have = {t.dataset for t in self.teachers} - {""}
        missing = [d for d in datasets if d not in have]
        if not have or not missing:
            return ""
        if len(datasets) == 1:
            return (f"warning: the zoo's teachers come from {', '.join(sorted(have))}, not {datasets[0]}: the "
                    f"results then measure a transfer across datasets, not the paper's setting")
        return (f"warning: no teacher of the zoo comes from {', '.join(missing)} (the multi-domain scenario expects "
                f"teachers of every dataset in {'+'.join(datasets)}; `dfmeta zoo merge` joins zoos)")

    def check_defaulted_dataset(self, cfg: Any) -> None:
        """Refuse a call that left ``--dataset`` at its default while the teachers come from other datasets: a
        forgotten flag, which would otherwise start a long run on the wrong data."""
        from dfmeta.config import given
        stated = given(cfg)
        have = {t.dataset for t in self.teachers} - {""}
        if stated is None or "dataset" in stated or not have or cfg.dataset in have:
            return
        raise DfmetaError(f"--dataset not given (default {cfg.dataset}), but the zoo's teachers come from "
                          f"{', '.join(sorted(have))}: pass --dataset {'+'.join(sorted(have))} (or --dataset "
                          f"{cfg.dataset} to use them on that data anyway)")

    def by_arch(self) -> dict[str, list[int]]:
        """Teacher indices grouped by architecture."""
        out: dict[str, list[int]] = {}
        for i, t in enumerate(self.teachers):
            out.setdefault(t.arch, []).append(i)
        return out


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def teacher_file(teacher_id: str) -> str:
    return f"model_{teacher_id}.safetensors"


def save_teacher(zoo_dir: str | os.PathLike, teacher: Teacher) -> dict[str, Any]:
    """Write one teacher's safetensors file atomically; returns its manifest entry (with checksum and file)."""
    zoo_dir = Path(zoo_dir)
    data = st_save({k: v.detach().cpu().contiguous() for k, v in teacher.state.items()},
                   metadata={"id": teacher.id, "arch": teacher.arch})
    name = teacher.file or teacher_file(teacher.id)
    atomic_write(zoo_dir / name, data)
    return {**teacher.entry(), "sha256": sha256(data), "file": name}


def write_manifest(zoo_dir: str | os.PathLike, entries: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
    """Write ``manifest.json`` atomically."""
    doc = {"format": ZOO_FORMAT, "version": ZOO_VERSION, **(extra or {}), "models": entries}
    atomic_write(Path(zoo_dir) / MANIFEST, json.dumps(doc, indent=1) + "\n")


def read_manifest(zoo_dir: str | os.PathLike) -> dict[str, Any]:
    """Parse and check ``manifest.json`` of a dfmeta zoo."""
    path = Path(zoo_dir) / MANIFEST
    if not Path(zoo_dir).is_dir():
        what = "a file, not a zoo directory" if Path(zoo_dir).exists() else "zoo directory not found"
        raise DfmetaError(f"{zoo_dir}: {what}")
    if not path.is_file():
        raise DfmetaError(f"{path}: no manifest.json (is this a zoo? `dfmeta zoo import` converts the authors' format)")
    doc = read_json_object(path)
    if doc.get("format") != ZOO_FORMAT:
        raise DfmetaError(f"{path}: format is {doc.get('format')!r}, expected {ZOO_FORMAT!r} "
                          "(the authors' format is converted by `dfmeta zoo import`)")
    if doc.get("version") != ZOO_VERSION:
        raise DfmetaError(f"{path}: version {doc.get('version')!r}, this dfmeta reads version {ZOO_VERSION}")
    if not isinstance(doc.get("models"), list):
        raise DfmetaError(f"{path}: field 'models' must be a list")
    return doc


def fingerprint(zoo_dir: str | os.PathLike) -> list[list[str]]:
    """``[id, sha256]`` of each teacher in the zoo's manifest, in its order: what identifies a zoo wherever it lies."""
    return [[str(m.get("id")), str(m.get("sha256"))] for m in read_manifest(zoo_dir)["models"]]


def record_zoo(run_dir: str | os.PathLike, zoo_dir: str | os.PathLike) -> None:
    """Write the run's ``zoo.json`` (the zoo's path and :func:`fingerprint`) unless it has one."""
    path = Path(run_dir) / ZOO_RECORD
    if not path.is_file():
        atomic_write(path, json.dumps({"path": str(zoo_dir), "teachers": fingerprint(zoo_dir)}, indent=1) + "\n")


def check_zoo_of_resume(run_dir: str | os.PathLike, stored: str, given: str) -> None:
    """Before a run is continued: a zoo ``given`` anew (where the run's zoo lies now) must hold the run's teachers
    (ids and checksums, in order; those of the run's ``zoo.json``, else of the zoo at its ``stored`` path); none
    given, the ``stored`` zoo must still be there."""
    run, record = Path(run_dir), Path(run_dir) / ZOO_RECORD
    if not given or given == stored:
        if stored and not Path(stored).is_dir():
            raise DfmetaError(f"{stored}: the run's zoo is not there any more; if it was moved, name it with --zoo "
                              f"(its teachers are checked against the run's)")
        return
    if record.is_file():
        teachers = read_json_object(record).get("teachers")
    elif Path(stored).is_dir():
        teachers = fingerprint(stored)
    else:
        raise DfmetaError(f"--zoo {given}: {run} has no {ZOO_RECORD} and its zoo {stored} is gone, so whether this "
                          f"zoo holds the run's teachers cannot be checked; put the zoo back at {stored}")
    if fingerprint(given) != teachers:
        raise DfmetaError(f"--zoo {given}: not the zoo {run} was started with ({stored}): its teachers' ids or "
                          f"checksums differ (start a new run to use another zoo)")


def load_teacher(zoo_dir: Path, entry: dict[str, Any]) -> Teacher:
    """Load and verify one teacher (architecture, checksum, keys and shapes)."""
    mid = entry.get("id", "?")
    where = f"{zoo_dir / MANIFEST}: model {mid}"
    for key in ("id", "arch", "image_size", "in_channels", "normalize", "class_names", "sha256", "file"):
        if key not in entry:
            raise DfmetaError(f"{where}: missing field {key!r}")
    if entry["arch"] not in ARCHITECTURES:
        raise DfmetaError(f"{where}: unknown architecture {entry['arch']!r}; expected one of {', '.join(ARCHITECTURES)}")
    path = zoo_dir / entry["file"]
    where = f"model {mid} ({path})"
    if not path.is_file():
        raise DfmetaError(f"{where}: file missing")
    data = path.read_bytes()
    if sha256(data) != entry["sha256"]:
        raise DfmetaError(f"{where}: checksum mismatch (file changed or truncated)")
    try:
        state = st_load(data)
    except Exception as e:  # safetensors raises its own error types
        raise DfmetaError(f"{where}: not a readable safetensors file ({e})") from None
    try:
        t = Teacher(str(mid), entry["arch"], int(entry["image_size"]), int(entry["in_channels"]),
                    tuple(map(float, entry["normalize"]["mean"])), tuple(map(float, entry["normalize"]["std"])),
                    entry.get("dataset", ""), list(entry["class_names"]), state, entry.get("heldout_acc"),
                    entry.get("recipe", {}), entry["file"])
    except (TypeError, ValueError, KeyError) as e:
        raise DfmetaError(f"{zoo_dir / MANIFEST}: model {mid}: a field has the wrong type or form (image_size and "
                          f"in_channels integers, normalize {{mean: [...], std: [...]}} numbers, class_names a list; "
                          f"{type(e).__name__}: {e})") from None
    check_state(t, where)
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise DfmetaError(f"{where}: weights {bad[0]} hold NaN or infinite values (a diverged teacher); rebuild it "
                          "or pass --skip-bad where the command takes it")
    return t


def check_state(t: Teacher, where: str) -> None:
    """Raise a clear error when ``t.state`` does not fit its architecture (names and shapes)."""
    ref = build(t.arch, t.num_classes, t.image_size, t.in_channels, "running").state_dict()
    missing = sorted(set(ref) - set(t.state))
    extra = sorted(set(t.state) - set(ref))
    if missing or extra:
        raise DfmetaError(f"{where}: keys do not match {t.arch}: missing {missing[:3]}, unexpected {extra[:3]}")
    for k, v in ref.items():
        if tuple(t.state[k].shape) != tuple(v.shape):
            raise DfmetaError(f"{where}: {k} has shape {tuple(t.state[k].shape)}, {t.arch} expects {tuple(v.shape)}")


def load_zoo(zoo_dir: str | os.PathLike, skip_bad: bool = False) -> Zoo:
    """Load every teacher of a zoo, verified. ``skip_bad`` excludes broken models (reported) instead of failing."""
    zoo_dir = Path(zoo_dir)
    doc = read_manifest(zoo_dir)
    teachers, skipped = [], []
    for entry in doc["models"]:
        try:
            teachers.append(load_teacher(zoo_dir, entry))
        except DfmetaError as e:
            if not skip_bad:
                raise
            skipped.append(str(e))
    if not teachers:
        raise DfmetaError(f"{zoo_dir}: the zoo holds no usable model")
    return Zoo(zoo_dir, teachers, skipped)
