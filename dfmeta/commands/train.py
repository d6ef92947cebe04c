"""``dfmeta train``: TGR meta-training with presets for the paper's settings and ablations."""

from __future__ import annotations

from typing import Any

from dfmeta.cli import Command
from dfmeta.meta.trainer import TrainConfig, train

# The paper's settings (Table 1-3): dataset, K of replay and model selection, T.
SETTINGS: dict[str, dict[str, Any]] = {
    "cifar-fs-1shot": dict(dataset="cifar-fs", train_shot=1, epochs=1000),
    "cifar-fs-5shot": dict(dataset="cifar-fs", train_shot=5, epochs=1000),
    "miniimagenet-1shot": dict(dataset="miniimagenet", train_shot=1, epochs=1200),
    "miniimagenet-5shot": dict(dataset="miniimagenet", train_shot=5, epochs=1200),
    "cub-1shot": dict(dataset="cub", train_shot=1, epochs=1000),
    "cub-5shot": dict(dataset="cub", train_shot=5, epochs=1000),
    "multi-arch-1shot": dict(dataset="cifar-fs", train_shot=1, epochs=1000),
    "multi-arch-5shot": dict(dataset="cifar-fs", train_shot=5, epochs=1000),
    # Multi-domain with the datasets here: a zoo merged from CIFAR-FS and Omniglot teachers (32 px, colour),
    # evaluation spread evenly over both meta-test splits, --episodes on each (the paper: CIFAR-FS, miniImageNet, CUB;
    # 1800 episodes, 600 on each).
    "multi-domain-1shot": dict(dataset="cifar-fs+omniglot", image_size=32, train_shot=1, epochs=1000),
    "multi-domain-5shot": dict(dataset="cifar-fs+omniglot", image_size=32, train_shot=5, epochs=1000),
}
# The settings of one architecture (a parameter-space or data-based method has no use for a mixed zoo).
SINGLE_ARCH_SETTINGS = {name: values for name, values in SETTINGS.items() if not name.startswith("multi-arch")}
# Ablations (Tables 4-6, 8), applied after a setting: `--preset cifar-fs-1shot vanilla`.
ABLATIONS: dict[str, dict[str, Any]] = {
    "vanilla": dict(grouping="off", igr="off"),
    "grouping-only": dict(igr="off"),
    "igr-only": dict(grouping="off"),
    "similarity": dict(grouping="similarity"),
    "kd-only": dict(ce=False),
    "ce-only": dict(kd=False),
    "no-replay": dict(replay=False),
    **{f"groups-{c}": dict(groups=c) for c in range(1, 10)},
}
PRESETS = {**SETTINGS, **ABLATIONS}

COMMANDS = [Command("train", "Meta-train TGR from a teacher zoo (resumable); select on meta-val, meta-test once.",
                    TrainConfig, train, PRESETS)]
