"""``dfmeta zoo merge``: join zoos into one, e.g. CIFAR-FS and Omniglot teachers for the multi-domain scenario."""

from __future__ import annotations

import os
from pathlib import Path

from dfmeta.errors import DfmetaError
from dfmeta.zoo.format import MANIFEST, load_zoo, save_teacher, teacher_file, write_manifest


def merge_zoos(sources: list[str] | tuple[str, ...], dst: str | os.PathLike) -> int:
    """Write every teacher of ``sources`` (verified on load) into the new zoo ``dst``, renumbered ``0..n-1``;
    each keeps its dataset, classes and normalisation and records ``merged_from`` (zoo path and id)."""
    dst = Path(dst)
    if (dst / MANIFEST).exists():
        raise DfmetaError(f"{dst}: already holds a zoo; choose a new directory")
    seen: dict[Path, str] = {}
    for s in sources:
        key = Path(s).resolve()
        if key in seen:
            raise DfmetaError(f"field 'src': zoo {s} is given twice (as {seen[key]} before); each zoo once")
        seen[key] = str(s)
    zoos = [load_zoo(s) for s in sources]
    ref = zoos[0][0] if zoos and len(zoos[0]) else None
    for zoo in zoos:  # every teacher checked before any file is written: a refused merge leaves nothing behind
        for t in zoo.teachers:
            assert ref is not None
            if (t.image_size, t.in_channels, t.num_classes) != (ref.image_size, ref.in_channels, ref.num_classes):
                raise DfmetaError(
                    f"{zoo.path}: model {t.id} is {t.num_classes}-way {t.image_size}px {t.in_channels}-channel, "
                    f"the first zoo's models are {ref.num_classes}-way {ref.image_size}px {ref.in_channels}-channel; "
                    "build the zoos with the same --image-size, --channels and --ways")
    entries: list[dict] = []
    try:
        for zoo in zoos:
            for t in zoo.teachers:
                new_id = str(len(entries))
                t.recipe = {**t.recipe, "merged_from": {"zoo": str(zoo.path), "id": t.id}}
                t.id, t.file = new_id, teacher_file(new_id)
                entries.append(save_teacher(dst, t))
        write_manifest(dst, entries, {"merged_from": [str(z.path) for z in zoos]})
    except BaseException:  # e.g. a full disk or ^C: remove what this call wrote
        for e in entries:
            (dst / e["file"]).unlink(missing_ok=True)
        raise
    return len(entries)
