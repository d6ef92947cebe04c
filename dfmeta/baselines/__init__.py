"""Meta-initialisations scored by the few-shot evaluation: Finetune, and (with a zoo) Best-Model, Average, OTA, ...

Each baseline is a function ``(BaselineInput) -> Initialisation`` registered in :data:`BASELINES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from dfmeta.evaluate import HeadMode


@dataclass
class BaselineInput:
    """What a baseline may use: the meta-model's shape, a seed, and (for zoo baselines) the loaded zoo."""

    arch: str
    n_way: int
    image_size: int
    in_channels: int
    seed: int
    zoo: Any = None
    device: torch.device = torch.device("cpu")


@dataclass
class Initialisation:
    """A model (BatchNorm on batch statistics) and the parameters evaluation starts from."""

    model: nn.Module
    params: dict[str, torch.Tensor]
    head: HeadMode = "keep"


BASELINES: dict[str, Callable[[BaselineInput], Initialisation]] = {}
NEEDS_ZOO: set[str] = set()


def register(name: str, needs_zoo: bool = False) -> Callable:
    """Decorator adding a baseline to :data:`BASELINES`."""
    def deco(fn: Callable[[BaselineInput], Initialisation]) -> Callable[[BaselineInput], Initialisation]:
        BASELINES[name] = fn
        if needs_zoo:
            NEEDS_ZOO.add(name)
        return fn
    return deco


def _load_all() -> None:
    import importlib
    import pkgutil
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


_load_all()
