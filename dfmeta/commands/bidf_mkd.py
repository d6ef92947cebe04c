"""``dfmeta baseline bidf-mkd``: BiDf-MKD (Hu et al., ICML 2023), white-box, with presets for the paper's settings."""

from __future__ import annotations

from typing import Any

from dfmeta.cli import Command
from dfmeta.commands.train import SETTINGS
from dfmeta.meta.bidf_mkd import BiDfMKDConfig, train_bidf_mkd

# Component ablations (without boundary query set recovery, without task memory replay; first-order meta-gradients),
# applied after a setting: `--preset cifar-fs-1shot no-boundary`.
ABLATIONS: dict[str, dict[str, Any]] = {
    "no-boundary": dict(boundary=False),
    "no-replay": dict(replay=False),
    "first-order": dict(first_order=True),
}
PRESETS = {**SETTINGS, **ABLATIONS}

COMMANDS = [Command("baseline bidf-mkd", "Meta-train BiDf-MKD (white-box) from a teacher zoo (resumable); select on "
                    "meta-val, meta-test once.", BiDfMKDConfig, train_bidf_mkd, PRESETS)]
