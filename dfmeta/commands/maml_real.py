"""``dfmeta baseline maml-real``: MAML on the real meta-train split, the data-based reference point (not data-free)."""

from __future__ import annotations

from dfmeta.cli import Command
from dfmeta.commands.train import SINGLE_ARCH_SETTINGS
from dfmeta.meta.real_maml import RealMAMLConfig, train_real_maml

# The paper's dataset settings (the multi-architecture ones concern the zoo, which this method does not use).
PRESETS = SINGLE_ARCH_SETTINGS

HELP = ("Meta-train with MAML on the real meta-train images (TGR's replay settings; not data-free): the reference "
        "point a data-free run is compared with; select on meta-val, meta-test once.")

COMMANDS = [Command("baseline maml-real", HELP, RealMAMLConfig, train_real_maml, PRESETS)]
