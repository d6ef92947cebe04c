"""Finetune: a randomly initialised meta-model (seeded), fine-tuned on each episode's support set."""

from __future__ import annotations

import torch

from dfmeta.baselines import BaselineInput, Initialisation, register
from dfmeta.nets import build, params_of


@register("finetune")
def finetune(inp: BaselineInput) -> Initialisation:
    """A fresh ``inp.arch`` with PyTorch's default initialisation under ``inp.seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(inp.seed)
        model = build(inp.arch, inp.n_way, inp.image_size, inp.in_channels, bn="batch")
    return Initialisation(model, params_of(model), "keep")
