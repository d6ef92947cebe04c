"""``dfmeta baseline dro``: the DRO baseline of TGR's Table 1 (Wasserstein distributionally-robust model fusion)."""

from __future__ import annotations

from dfmeta.cli import Command
from dfmeta.commands.train import SINGLE_ARCH_SETTINGS
from dfmeta.meta.dro import DROConfig, train_dro

# The paper's single-architecture settings; parameter fusion cannot take the multi-architecture zoo.
PRESETS = SINGLE_ARCH_SETTINGS

HELP = ("Meta-train the DRO baseline: a hyper-network fuses the zoo's Conv4 teachers into a meta-initialisation, "
        "robust over task embeddings (resumable); select on meta-val, meta-test once.")

COMMANDS = [Command("baseline dro", HELP, DROConfig, train_dro, PRESETS)]
