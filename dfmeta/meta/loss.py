"""The per-task loss of Eq. 8: L_i(theta) = KL(M_i(x_i) || M_meta(x_i; theta)) + CE(M_meta(x_i; theta), Y_i)."""

from __future__ import annotations

import copy
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfmeta.errors import DfmetaError
from dfmeta.nets import fcall

KD_FORMS = ("kl", "authors")
_SECOND_ORDER: "weakref.WeakKeyDictionary[nn.Module, nn.Module]" = weakref.WeakKeyDictionary()


class BatchStatNorm(nn.Module):
    """Batch-statistics BatchNorm written with elementary ops; same parameter names (``weight``, ``bias``)."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.eps = bn.eps
        self.weight, self.bias = bn.weight, bn.bias

    def forward(self, x: Tensor) -> Tensor:
        dims = [0, *range(2, x.ndim)]
        y = (x - x.mean(dims, keepdim=True)) * torch.rsqrt(x.var(dims, unbiased=False, keepdim=True) + self.eps)
        if self.weight is None:
            return y
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return y * self.weight.view(shape) + self.bias.view(shape)


def second_order_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (cached, same parameter names) whose batch-statistics BatchNorm layers are
    :class:`BatchStatNorm`, for derivatives of vmapped gradients (IGR ``second``, second-order MAML).

    PyTorch's fused batch norm gets reverse-over-reverse derivatives wrong under ``vmap`` (pytorch/functorch#534;
    reproduced on torch 2.13: errors of order 1 in the gradients of layers before BN), the decomposition is exact.
    Use it only through ``functional_call``/``fcall`` with a full parameter dict (the copy's own values are stale).
    """
    if model not in _SECOND_ORDER:
        twin = copy.deepcopy(model)
        for name, mod in list(twin.named_modules()):
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.running_mean is None:
                parent, _, leaf = name.rpartition(".")
                setattr(twin.get_submodule(parent) if parent else twin, leaf, BatchStatNorm(mod))
        _SECOND_ORDER[model] = twin
    return _SECOND_ORDER[model]


def check_loss_terms(kd: bool, ce: bool, kd_form: str) -> None:
    """Raise :class:`DfmetaError` unless at least one term is on and ``kd_form`` is known."""
    if not (kd or ce):
        raise DfmetaError("task loss: at least one of kd and ce must be on")
    if kd_form not in KD_FORMS:
        raise DfmetaError(f"task loss: kd_form must be one of {', '.join(KD_FORMS)}, got {kd_form!r}")


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, kd_form: str = "kl") -> Tensor:
    """Distillation term of Eq. 8.

    ``kl``: KL(teacher || student) = sum_c p_t (log p_t - log p_s), averaged over the batch
    (= ``F.kl_div(log_softmax(student), log_softmax(teacher), log_target=True, reduction="batchmean")``).
    ``authors``: ``F.kl_div(softmax(student), softmax(teacher))`` with the default element-mean reduction, as in the
    authors' code; ``kl_div`` expects log-probabilities first, so this is not a KL divergence (kept for fidelity).
    """
    teacher_logits = teacher_logits.detach().to(student_logits.dtype)
    # Written out (equal to F.kl_div) because kl_div has no vmap batching rule.
    if kd_form == "kl":
        log_t = F.log_softmax(teacher_logits, -1)
        return (log_t.exp() * (log_t - F.log_softmax(student_logits, -1))).sum(-1).mean()
    p_t = F.softmax(teacher_logits, -1)
    return (torch.special.xlogy(p_t, p_t) - p_t * F.softmax(student_logits, -1)).mean()


def task_loss(model: nn.Module, params: dict[str, Tensor], x: Tensor, teacher_logits: Tensor, labels: Tensor,
              kd: bool = True, ce: bool = True, kd_form: str = "kl") -> Tensor:
    """Eq. 8 for one recovered task: ``x`` ``[n, C, H, W]`` (already normalised), teacher logits ``[n, N]``,
    labels ``[n]``; each term can be switched off (not both). Works under ``torch.func.vmap``/``grad``."""
    check_loss_terms(kd, ce, kd_form)
    logits = fcall(model, params, x)
    terms = []
    if kd:
        terms.append(kd_loss(logits, teacher_logits, kd_form))
    if ce:
        terms.append(F.cross_entropy(logits, labels))
    return terms[0] if len(terms) == 1 else terms[0] + terms[1]
