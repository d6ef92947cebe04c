"""``dfmeta zoo build | import | info``: make, convert and inspect teacher zoos."""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from dfmeta.cli import Command
from dfmeta.commands.common import DataConfig
from dfmeta.data.domains import check_dataset_spec, dataset_names, with_channels
from dfmeta.data.registry import DATASETS, default_data_root, load_split
from dfmeta.errors import DfmetaError
from dfmeta.runs import expect_directory, resolve_device, seed_everything, set_threads
from dfmeta.zoo.build import ZooRecipe, build_zoo, parse_shard, rebuild_manifest
from dfmeta.zoo.format import load_zoo


@dataclass(frozen=True)
class ZooBuildConfig(DataConfig, ZooRecipe):
    """Train a zoo of teachers on the meta-train split."""

    zoo: str = "zoo"
    """Zoo directory to write; rerunning resumes (finished teachers are skipped)."""
    image_size: int = 0
    """Image size (0: the dataset's own)."""
    channels: int = 0
    """Image channels (0: the dataset's own; 3 turns grey images into colour, for a multi-domain zoo)."""
    teachers_at_once: int = 0
    """Teachers trained together in one stacked step (0: 64 on CUDA, 1 on a CPU, where batching does not pay)."""
    shard: str = ""
    """Train only this shard's blocks of teachers (--teachers-at-once each; block j when j % n == i), given as i/n
    (default: torchrun's RANK/WORLD_SIZE, else all)."""

    def validate(self) -> None:
        DataConfig.validate(self)
        ZooRecipe.validate(self)
        parse_shard(self.shard)
        expect_directory(self.zoo, "--zoo")
        if len(dataset_names(self.dataset)) > 1:
            raise DfmetaError(f"field 'dataset': build one zoo per dataset (not {self.dataset!r}) and join them with "
                              "`dfmeta zoo merge`")
        if self.channels not in (0, 1, 3):
            raise DfmetaError(f"field 'channels': expected 0 (the dataset's own), 1 or 3, got {self.channels}")


def run_build(cfg: ZooBuildConfig) -> None:
    seed_everything(cfg.seed)
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = resolve_device(f"cuda:{os.environ['LOCAL_RANK']}")
    shard = parse_shard(cfg.shard)
    split = load_split(cfg.dataset, "train", cfg.data_root, cfg.image_size or None)
    if cfg.channels:
        split = with_channels(split, cfg.channels)
    recipe = ZooRecipe(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(ZooRecipe)})
    rep = build_zoo(cfg.zoo, split, cfg.dataset, recipe, cfg.seed, device, shard, cfg.teachers_at_once)
    where = f"shard {shard[0]}/{shard[1]}" if shard[1] > 1 else "the zoo"
    print(f"{cfg.zoo}: trained {len(rep.trained)} teachers, {len(rep.skipped)} already done, {rep.total} in {where}")


@dataclass(frozen=True)
class ZooImportConfig:
    """Convert a zoo in the TGR authors' format into dfmeta's."""

    src: str = ""
    """Authors'-format zoo: model/model_specific_{i}.pth and manifest.json with the class names."""
    dst: str = ""
    """dfmeta zoo directory to write."""
    dataset: str = "cifar-fs"
    """Dataset the teachers were trained on (recorded per teacher)."""
    skip_bad: bool = False
    """Leave out unreadable or malformed models (reported) instead of stopping."""

    def validate(self) -> None:
        for name in ("src", "dst"):
            if not getattr(self, name):
                raise DfmetaError(f"field {name!r}: required (--{name} DIR)")
        expect_directory(self.dst, "--dst")
        check_dataset_spec(self.dataset, single=True)  # recorded per teacher: a typo would go unnoticed


def run_import(cfg: ZooImportConfig) -> None:
    from dfmeta.zoo.authors import import_authors_zoo
    n, skipped = import_authors_zoo(cfg.src, cfg.dst, cfg.dataset, cfg.skip_bad)
    for s in skipped:
        print(f"skipped {s}", file=sys.stderr)
    print(f"{cfg.dst}: imported {n} teachers from {cfg.src}" + (f", skipped {len(skipped)}" if skipped else ""))


@dataclass(frozen=True)
class ZooInfoConfig:
    """Show a zoo's teachers and their coverage of a dataset's meta-train classes."""

    zoo: str = ""
    """Zoo directory."""
    dataset: str = ""
    """Dataset whose meta-train classes to check coverage of ('' : the teachers' own, when registered)."""
    data_root: str = str(default_data_root())
    """Root folder of the real datasets (env DFMETA_DATA sets the default)."""
    skip_bad: bool = False
    """List unreadable or malformed models as skipped instead of stopping."""

    def validate(self) -> None:
        if not self.zoo:
            raise DfmetaError("field 'zoo': required (--zoo DIR)")
        if self.dataset:
            check_dataset_spec(self.dataset, single=True)


def run_info(cfg: ZooInfoConfig) -> None:
    from dfmeta.zoo.info import report
    if any(Path(cfg.zoo).glob("model_*.json")):
        rebuild_manifest(cfg.zoo)  # a built zoo: its shards' sidecars are the truth
    zoo = load_zoo(cfg.zoo, cfg.skip_bad)
    dataset = cfg.dataset
    if not dataset:
        names = {t.dataset for t in zoo.teachers}
        dataset = names.pop() if len(names) == 1 and next(iter(names)) in DATASETS else ""
    split = load_split(dataset, "train", cfg.data_root) if dataset else None
    text, warnings = report(zoo, split)
    print(text)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)


@dataclass(frozen=True)
class ZooMergeConfig:
    """Join zoos into one (the multi-domain scenario: teachers of several datasets)."""

    src: tuple[str, ...] = ()
    """Zoo directories to join, in order."""
    dst: str = ""
    """New zoo directory (teachers renumbered 0..n-1; each records its source zoo and id)."""

    def validate(self) -> None:
        if len(self.src) < 1 or not self.dst:
            raise DfmetaError("fields 'src' and 'dst': pass --src ZOO [ZOO ...] --dst DIR")
        expect_directory(self.dst, "--dst")


def run_merge(cfg: ZooMergeConfig) -> None:
    from dfmeta.zoo.merge import merge_zoos
    n = merge_zoos(cfg.src, cfg.dst)
    print(f"{cfg.dst}: {n} teachers from {len(cfg.src)} zoos")


COMMANDS = [
    Command("zoo build", "Train n teachers (N classes each, seeded) on the meta-train split; resumable, shardable.",
            ZooBuildConfig, run_build, on_interrupt="finished teachers are kept; run the same command again to "
                                                   "continue"),
    Command("zoo import", "Convert the TGR authors' zoo format (model_specific_*.pth) into a dfmeta zoo.",
            ZooImportConfig, run_import, on_interrupt="nothing was written; run the same command again"),
    Command("zoo info", "Table of a zoo's teachers and their coverage of the meta-train classes.",
            ZooInfoConfig, run_info),
    Command("zoo merge", "Join zoos into one (teachers of several datasets: the multi-domain scenario).",
            ZooMergeConfig, run_merge),
]
