"""Best-Model: the zoo's teacher with the best held-out accuracy, its feature extractor under a new head.

Shared by the zoo baselines: :func:`meta_teachers` (the teachers usable as the meta-model) and :func:`with_new_head`.
The head is new and zero-initialised (``head="zero"``): a teacher's head scores its own classes, not an episode's;
a zero head starts every class equal and is learned from the support set without a seed-dependent preference.
"""

from __future__ import annotations

import math

import torch

from dfmeta.baselines import BaselineInput, Initialisation, register
from dfmeta.errors import DfmetaError
from dfmeta.nets import build, head_names
from dfmeta.zoo.format import Teacher


def meta_teachers(inp: BaselineInput) -> list[Teacher]:
    """The zoo's teachers of the meta architecture and input shape (error when there are none)."""
    ts = [t for t in inp.zoo.teachers
          if t.arch == inp.arch and t.in_channels == inp.in_channels and t.image_size == inp.image_size]
    if not ts:
        have = sorted({f"{t.arch} {t.image_size}px {t.in_channels}ch" for t in inp.zoo.teachers})
        raise DfmetaError(f"{inp.zoo.path}: no {inp.arch} teacher for {inp.image_size}px {inp.in_channels}-channel "
                          f"images (the zoo has: {', '.join(have)})")
    return ts


def feature_names(inp: BaselineInput) -> list[str]:
    """Names of the meta-model's feature-extractor parameters (all but the head)."""
    model = build(inp.arch, inp.n_way, inp.image_size, inp.in_channels, bn="batch")
    heads = set(head_names(model))
    return [k for k, _ in model.named_parameters() if k not in heads]


def with_new_head(inp: BaselineInput, state: dict[str, torch.Tensor]) -> Initialisation:
    """A ``bn="batch"`` meta-model whose feature extractor takes ``state``'s parameters, with a new zero head."""
    model = build(inp.arch, inp.n_way, inp.image_size, inp.in_channels, bn="batch")
    heads = set(head_names(model))
    params = {k: (v.detach().clone() if k in heads else state[k].detach().clone().float())
              for k, v in model.named_parameters()}
    return Initialisation(model.to(inp.device), params, "zero")


def heldout_key(t: Teacher) -> float:
    """Held-out accuracy for ranking (a teacher without one ranks last)."""
    return -math.inf if t.heldout_acc is None else float(t.heldout_acc)


@register("best-model", needs_zoo=True)
def best_model(inp: BaselineInput) -> Initialisation:
    """The meta-architecture teacher with the highest held-out accuracy (first on ties)."""
    best = max(meta_teachers(inp), key=heldout_key)
    return with_new_head(inp, best.state)
