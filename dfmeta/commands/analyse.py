"""``dfmeta analyse igr``: the paper's Fig. 5 (IGR against ERM on one task sequence)."""

from __future__ import annotations

from dfmeta.analysis.igr_vs_erm import IGRvsERMConfig, run_igr_vs_erm
from dfmeta.cli import Command

COMMANDS = [Command("analyse igr", "Fig. 5: gradient regulariser and cosine over training, IGR against ERM on the "
                    "same recovered tasks; writes analysis.json.", IGRvsERMConfig, run_igr_vs_erm)]
