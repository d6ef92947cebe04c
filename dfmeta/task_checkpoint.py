"""Recovered tasks kept on disk chunk by chunk while a grouping recovers one task per teacher of the zoo.

A grouping killed during its recovery (hours on a CPU for a paper-size zoo) resumes after its last finished chunk
instead of recovering every teacher again. A teacher's task depends only on its seed and the recovery settings, not
on the other teachers of its chunk (:mod:`dfmeta.recover`), so the resumed grouping is the uninterrupted one. The
folder costs about one float32 copy of the recovered images (C x H x W x 4 bytes per image: 1.8 MB per CIFAR-FS
teacher of 150 images) and is removed once the groups are stored.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from dfmeta.recover import RecoveredTask
from dfmeta.runs import atomic_torch_save, atomic_write, is_torch_file

FOLDER = "grouping-tasks"
"""The folder, in a run directory, that keeps the chunks until the groups are stored."""


def _saved(task: RecoveredTask) -> dict[str, Any]:
    return {"images": task.images.cpu(), "labels": task.labels.cpu(), "logits": task.logits.cpu(),
            "teacher": task.teacher, "loss": task.loss}


def _load(path: Path, part: list[int], device: torch.device) -> list[RecoveredTask] | None:
    """The chunk saved at ``path`` when it holds the tasks of ``part``; None when absent or unreadable."""
    if not path.is_file() or not is_torch_file(path):
        return None
    try:
        rows = torch.load(path, map_location=device, weights_only=True)
    except Exception:  # a damaged chunk is recovered again, not an error
        return None
    if [r["teacher"] for r in rows] != part:
        return None
    return [RecoveredTask(r["images"], r["labels"], r["logits"], int(r["teacher"]), float(r["loss"])) for r in rows]


def recover_resumably(folder: Path, key: dict[str, Any], indices: list[int], chunk: int,
                      recover: Callable[[list[int]], list[RecoveredTask]], device: torch.device,
                      on_chunk: Callable[[list[int], bool], None] | None = None) -> list[RecoveredTask]:
    """``recover(part)`` for each chunk ``part`` of ``indices`` (``chunk`` teachers; 0: all at once), in order, each
    chunk's tasks saved under ``folder``; a chunk already saved there under the same ``key`` (what the tasks depend
    on: settings, seed, teachers, device type) is loaded instead. ``on_chunk(part, loaded)`` follows each chunk.
    Call :func:`discard` once the grouping is stored."""
    text = json.dumps({**key, "indices": indices, "chunk": chunk}, sort_keys=True, default=str)
    key_file = folder / "key.json"
    if folder.is_dir() and (not key_file.is_file() or key_file.read_text() != text):
        shutil.rmtree(folder)  # chunks of other settings: of no use here
    folder.mkdir(parents=True, exist_ok=True)
    if not key_file.is_file():
        atomic_write(key_file, text)
    step = chunk if chunk > 0 else max(len(indices), 1)
    tasks: list[RecoveredTask] = []
    for lo in range(0, len(indices), step):
        part = indices[lo:lo + step]
        path = folder / f"chunk-{lo:06d}.pt"
        done = _load(path, part, device)
        loaded = done is not None
        if done is None:
            done = recover(part)
            atomic_torch_save([_saved(t) for t in done], path)
        tasks += done
        if on_chunk is not None:
            on_chunk(part, loaded)
    return tasks


def discard(folder: Path) -> None:
    """Remove the chunks (the grouping they served is stored)."""
    shutil.rmtree(folder, ignore_errors=True)


__all__ = ["FOLDER", "discard", "recover_resumably"]
