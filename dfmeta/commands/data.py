"""``dfmeta data prepare``: export decoded splits as single files, to move a dataset to another machine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dfmeta.cli import Command
from dfmeta.data.dataset import save_split_file
from dfmeta.config import require
from dfmeta.data.domains import check_dataset_spec
from dfmeta.data.registry import default_data_root, load_split
from dfmeta.runs import expect_directory


@dataclass(frozen=True)
class PrepareConfig:
    """Export decoded splits to ``<out>/prepared/<dataset>/<split>.npz`` (read back with ``--data-root <out>``)."""

    dataset: str = "cifar-fs"
    """Dataset name."""
    data_root: str = str(default_data_root())
    """Root folder of the real datasets (env DFMETA_DATA sets the default)."""
    splits: tuple[str, ...] = ("val", "test")
    """Splits to export."""
    out: str = "prepared-data"
    """Output data root."""
    max_per_class: int = 0
    """Keep only the first this many images of each class (0: all); e.g. a smaller meta-val."""

    def validate(self) -> None:
        check_dataset_spec(self.dataset, single=True)
        require([(self.max_per_class >= 0, "max_per_class", f">= 0 (0: all images), got {self.max_per_class}")])
        expect_directory(self.out, "--out")


def run_prepare(cfg: PrepareConfig) -> None:
    for name in cfg.splits:
        split = load_split(cfg.dataset, name, cfg.data_root)
        if cfg.max_per_class:
            # the name carries the cut into every log and result that names the split
            split = split.subset(split.class_names, slice(0, cfg.max_per_class),
                                 f"{split.name} (first {cfg.max_per_class}/class)")
        path = Path(cfg.out) / "prepared" / cfg.dataset / f"{name}.npz"
        save_split_file(split, path, compress=True)
        print(f"{cfg.dataset}/{name}: {split.n_classes} classes, {len(split.images)} images -> {path} "
              f"({path.stat().st_size / 2**20:.1f} MiB)")


COMMANDS = [Command("data prepare", "Export decoded splits as single files (for another machine).",
                    PrepareConfig, run_prepare, on_interrupt="finished splits are kept; run the same command "
                                                             "again to continue")]
