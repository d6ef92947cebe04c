"""OTA: optimal-transport model fusion (Singh & Jaggi 2020, "Model Fusion via Optimal Transport"), then a new head.

Weight-based alignment (data-free, so it fits the setting): layer by layer, every teacher's neurons (a conv
filter with its input channels already aligned, its bias and its BN scale and shift) are matched to the anchor's
by optimal transport with Euclidean ground cost. With equal widths and uniform marginals the exact OT plan is a
permutation, found by ``scipy.optimize.linear_sum_assignment``. The permutation reorders the layer's output
channels (conv weight and bias, BN parameters and buffers) and the next layer's input channels (the next conv, or
the head's channel-major input features). The fused model is the mean of the aligned teachers; the anchor is the
first meta-architecture teacher of the zoo. Implemented for Conv4 (a plain chain of conv blocks).
"""

from __future__ import annotations

import re

import torch
from scipy.optimize import linear_sum_assignment

from dfmeta.baselines import BaselineInput, Initialisation, register
from dfmeta.baselines.average import average_states
from dfmeta.baselines.best_model import feature_names, meta_teachers, with_new_head
from dfmeta.errors import DfmetaError

_PER_CHANNEL = ("conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")


def _blocks(state: dict[str, torch.Tensor]) -> int:
    return len([k for k in state if re.fullmatch(r"blocks\.\d+\.conv\.weight", k)])


def permute_conv4(state: dict[str, torch.Tensor], perms: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with block ``i``'s output channels reordered by ``perms[i]`` (new channel j = old ``perms[i][j]``),
    and the following layer's inputs reordered to match: the same function."""
    out = dict(state)
    for i, p in enumerate(perms):
        for name in _PER_CHANNEL:
            k = f"blocks.{i}.{name}"
            if k in out:
                out[k] = out[k][p]
        nxt = f"blocks.{i + 1}.conv.weight"
        if nxt in out:
            out[nxt] = out[nxt][:, p]
        elif "head.weight" in out:
            w = out["head.weight"]
            out["head.weight"] = w.view(w.shape[0], len(p), -1)[:, p].reshape(w.shape)
    return out


def _neurons(state: dict[str, torch.Tensor], i: int) -> torch.Tensor:
    width = len(state[f"blocks.{i}.bn.weight"])
    return torch.cat([state[f"blocks.{i}.{n}"].float().reshape(width, -1)
                      for n in ("conv.weight", "conv.bias", "bn.weight", "bn.bias")], 1)


def align_conv4(state: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` permuted, layer by layer, so that its neurons match ``anchor``'s (exact OT, uniform marginals)."""
    aligned = dict(state)
    for i in range(_blocks(state)):
        cost = torch.cdist(_neurons(anchor, i).double(), _neurons(aligned, i).double())
        _, col = linear_sum_assignment(cost.numpy())
        aligned = permute_conv4(aligned, [torch.arange(len(col))] * i + [torch.as_tensor(col)])
    return aligned


def ota_fuse(states: list[dict[str, torch.Tensor]], keys: list[str]) -> dict[str, torch.Tensor]:
    """Align every state to the first, then average the ``keys`` entries."""
    return average_states([states[0]] + [align_conv4(s, states[0]) for s in states[1:]], keys)


@register("ota", needs_zoo=True)
def ota(inp: BaselineInput) -> Initialisation:
    """OT fusion of the meta-architecture teachers, then a new head."""
    if inp.arch != "conv4":
        raise DfmetaError(f"ota: alignment is implemented for conv4 teachers, not {inp.arch!r} (use --arch conv4)")
    return with_new_head(inp, ota_fuse([t.state for t in meta_teachers(inp)], feature_names(inp)))
