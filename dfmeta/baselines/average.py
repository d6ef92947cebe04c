"""Average: the parameter average of the zoo's meta-architecture teachers, under a new zero head.

BatchNorm affine parameters are averaged like the rest; running statistics are not used (evaluation normalises
with batch statistics). Heads are replaced: each teacher's head scores different classes.
"""

from __future__ import annotations

import torch

from dfmeta.baselines import BaselineInput, Initialisation, register
from dfmeta.baselines.best_model import feature_names, meta_teachers, with_new_head


def average_states(states: list[dict[str, torch.Tensor]], keys: list[str]) -> dict[str, torch.Tensor]:
    """Elementwise mean of the ``keys`` entries of same-architecture states."""
    return {k: torch.stack([s[k].float() for s in states]).mean(0) for k in keys}


@register("average", needs_zoo=True)
def average(inp: BaselineInput) -> Initialisation:
    """Mean of every meta-architecture teacher's parameters, then a new head."""
    return with_new_head(inp, average_states([t.state for t in meta_teachers(inp)], feature_names(inp)))
