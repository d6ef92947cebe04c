"""k same-architecture networks run as one network of grouped convolutions (the recovery's fast batching).

With stacked parameters (leading axis k), the activations of all k networks are kept as ``[n, k * C, H, W]``: a
convolution is one ``groups=k`` convolution, a BatchNorm one native BatchNorm over ``k * C`` channels (per-channel
statistics are exactly each network's own), pooling and activations act per channel. This is what ``vmap`` computes,
without its per-layer reshuffling of the teacher axis and its BatchNorm decomposition. Written for the task-recovery
generator (:class:`dfmeta.nets.generator.Generator`) and the Conv4 teacher (:mod:`dfmeta.nets.conv4`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dfmeta.nets.generator import upsample2

Params = dict[str, Tensor]


def to_grouped(x: Tensor, channels_last: bool = False) -> Tensor:
    """``[k, n, C, H, W]`` -> ``[n, k * C, H, W]`` (in channels_last memory order if asked)."""
    k, n, c, h, w = x.shape
    out = x.transpose(0, 1).reshape(n, k * c, h, w)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def from_grouped(x: Tensor, k: int) -> Tensor:
    """``[n, k * C, H, W]`` -> ``[k, n, C, H, W]``."""
    n, kc, h, w = x.shape
    return x.reshape(n, k, kc // k, h, w).transpose(0, 1)


def _conv(x: Tensor, p: Params, name: str, k: int, bias: bool = True) -> Tensor:
    w = p[f"{name}.weight"].flatten(0, 1)
    if _channels_last(x):
        w = w.contiguous(memory_format=torch.channels_last)
    return F.conv2d(x, w, p[f"{name}.bias"].flatten() if bias else None, padding=w.shape[-1] // 2,
                    groups=k)


def _channels_last(x: Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _upsample2(x: Tensor) -> Tensor:
    """:func:`dfmeta.nets.generator.upsample2`, keeping a channels_last tensor channels_last."""
    if not _channels_last(x):
        return upsample2(x)
    n, c, h, w = x.shape  # upsample the [n, h, w, C] view
    y = x.permute(0, 2, 3, 1)[:, :, None, :, None, :].expand(n, h, 2, w, 2, c).reshape(n, 2 * h, 2 * w, c)
    return y.permute(0, 3, 1, 2)


def _batch_bn(x: Tensor, p: Params, name: str, eps: float = 1e-5) -> Tensor:
    return F.batch_norm(x, None, None, p[f"{name}.weight"].flatten(), p[f"{name}.bias"].flatten(), True, 0.0, eps)


def generate(p: Params, z: Tensor, nf: int, init_size: int, channels_last: bool = False) -> Tensor:
    """The Generator's forward for k stacked generators: codes ``[k, n, nz]`` -> images ``[k, n, C, s, s]``."""
    k, n, _ = z.shape
    h = torch.baddbmm(p["fc.bias"][:, None, :], z, p["fc.weight"].transpose(1, 2))
    x = to_grouped(h.view(k, n, 2 * nf, init_size, init_size), channels_last)
    x = _upsample2(_batch_bn(x, p, "bn0"))
    x = F.leaky_relu(_batch_bn(_conv(x, p, "conv1", k, bias=False), p, "bn1"), 0.2)
    x = _upsample2(x)
    x = F.leaky_relu(_batch_bn(_conv(x, p, "conv2", k, bias=False), p, "bn2"), 0.2)
    return from_grouped(torch.sigmoid(_conv(x, p, "conv3", k)), k)


def conv4_blocks(state: Params) -> int:
    """How many conv blocks a Conv4 state has (0: not a Conv4 state this module can run)."""
    n = 0
    while f"blocks.{n}.conv.weight" in state:
        n += 1
    return n if n and "head.weight" in state else 0


def conv4_terms(state: Params, x: Tensor, y: Tensor, eps: float = 1e-5,
                channels_last: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Eval-mode Conv4 teachers (stacked state) on normalised inputs ``[k, n, C, H, W]``: (cross-entropy ``[k]``,
    BatchNorm-statistics term ``[k]`` as :class:`dfmeta.recover.BNStatLoss`, logits ``[k, n, N]``)."""
    k, n = x.shape[:2]
    h = to_grouped(x, channels_last)
    bn_term = x.new_zeros(k, dtype=torch.float32)
    for i in range(conv4_blocks(state)):
        h = _conv(h, state, f"blocks.{i}.conv", k)
        rm, rv = state[f"blocks.{i}.bn.running_mean"], state[f"blocks.{i}.bn.running_var"]
        var, mu = torch.var_mean(h.float(), (0, 2, 3), correction=0)
        bn_term = bn_term + torch.linalg.vector_norm(mu.view(k, -1) - rm, dim=1) \
            + torch.linalg.vector_norm(var.view(k, -1) - rv, dim=1)
        scale = state[f"blocks.{i}.bn.weight"] * torch.rsqrt(rv + eps)
        shift = state[f"blocks.{i}.bn.bias"] - rm * scale
        h = h * scale.flatten()[:, None, None].to(h.dtype) + shift.flatten()[:, None, None].to(h.dtype)
        h = F.max_pool2d(F.relu(h), 2)
    feats = h.reshape(n, k, -1)
    logits = torch.einsum("nkf,kof->kno", feats, state["head.weight"].to(feats.dtype)) + state["head.bias"][:, None]
    ce = F.cross_entropy(logits.flatten(0, 1).float(), y.repeat(k), reduction="none").view(k, n).mean(1)
    return ce, bn_term, logits


__all__ = ["conv4_blocks", "conv4_terms", "from_grouped", "generate", "to_grouped"]
