"""``dfmeta baseline purer``: PURER (CVPR 2023) meta-training with presets for the TGR paper's settings."""

from __future__ import annotations

from typing import Any

from dfmeta.cli import Command
from dfmeta.commands.train import SETTINGS
from dfmeta.meta.purer import PurerConfig, train_purer

# The TGR paper's settings (Table 1-3); with teachers of several architectures there is no parameter average
# (the authors' code averages only when every teacher shares the meta-model's architecture).
PURER_SETTINGS: dict[str, dict[str, Any]] = {
    name: {**values, **(dict(init="random") if name.startswith("multi-arch") else {})}
    for name, values in SETTINGS.items()
}
# Ablations, applied after a setting: `--preset cifar-fs-1shot ei`.
ABLATIONS: dict[str, dict[str, Any]] = {
    "ei": dict(adv_schedule="off"),        # episode inversion without the curriculum (the paper's EI)
    "ramp": dict(adv_schedule="ramp"),     # adversarial weight growing linearly instead of the gradient switch
    "random-init": dict(init="random"),    # no parameter average of the zoo
}
PRESETS = {**PURER_SETTINGS, **ABLATIONS}

COMMANDS = [Command("baseline purer", "Meta-train PURER (episode curriculum inversion) from a teacher zoo "
                    "(resumable); select on meta-val, meta-test once.", PurerConfig, train_purer, PRESETS)]
