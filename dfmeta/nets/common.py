"""BatchNorm policy and functional helpers shared by every backbone."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.func import functional_call


def make_bn(channels: int, bn: str) -> nn.BatchNorm2d:
    """``running``: BatchNorm with running statistics (teachers, used in eval mode);
    ``batch``: always the current batch's statistics, no running buffers (the meta-model, as in the paper's protocol).
    """
    if bn == "running":
        return nn.BatchNorm2d(channels)
    if bn == "batch":
        return nn.BatchNorm2d(channels, track_running_stats=False)
    raise ValueError(f"bn must be 'running' or 'batch', got {bn!r}")


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of a model's parameters, by name."""
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def buffers_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of a model's buffers, by name."""
    return {k: v.detach().clone() for k, v in model.named_buffers()}


def fcall(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
          buffers: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``model(x)`` with the given parameters (and buffers) through ``torch.func.functional_call``."""
    state = dict(params) if buffers is None else {**buffers, **params}
    return functional_call(model, state, (x,))


def head_names(model: nn.Module) -> list[str]:
    """Names of the classifier head's parameters (``head.*`` or ``fc.*``)."""
    return [k for k, _ in model.named_parameters() if k.split(".")[0] in ("head", "fc")]


def stack_params(dicts: Iterable[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack same-shaped parameter dicts along a new leading axis (for ``vmap`` over models)."""
    dicts = list(dicts)
    return {k: torch.stack([d[k] for d in dicts]) for k in dicts[0]}
