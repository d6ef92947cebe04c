"""Implicit gradient regularisation (IGR) over a group of m recovered tasks (Algorithm 1, step 5; Theorem 4.1).

With per-task gradients g_i = grad L_i(theta) and their mean gbar = grad Lbar(theta), each task's loss is evaluated at
a displaced point theta - v_i, v_i = beta (gbar - g_i), and the update direction is the mean of those gradients:

- ``first`` (paper, default): v_i is a constant (detached), g = (1/m) sum_i grad L_i(theta - v_i). Theorem 4.1:
  g = grad Lbar + (beta / 2m) grad sum_i ||g_i - gbar||^2 + O(beta^2), i.e. it descends on the task-gradient spread.
- ``second`` (authors' code): v_i keeps its graph, g = (1/m) sum_i d/dtheta L_i(theta - v_i(theta)), so the
  Jacobian of the displacement (Hessian terms) enters as well.
- ``off``: g = gbar (plain averaged gradient, ERM).

All m tasks are handled in one batched computation with ``torch.func.vmap`` over ``grad``; the meta-model must use
batch-statistics BatchNorm (``bn="batch"``). ``second`` differentiates vmapped gradients, so it runs the model through
:func:`dfmeta.meta.loss.second_order_model` (PyTorch's fused batch norm is wrong there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad, grad_and_value, vmap

from dfmeta.errors import DfmetaError
from dfmeta.meta.loss import check_loss_terms, second_order_model, task_loss

IGR_MODES = ("first", "second", "off")
Params = dict[str, Tensor]


@dataclass
class IGRResult:
    """The IGR update direction and diagnostics of the task group at theta."""

    grads: Params
    """The update direction g (detached, shaped like the parameters)."""
    losses: Tensor
    """``[m]`` per-task losses L_i(theta)."""
    regulariser: float
    """(1/2m) sum_i ||grad L_i - grad Lbar||^2 at theta."""
    cosine: float
    """Mean pairwise cosine similarity of the m task gradients (paper Fig. 5); nan when m = 1."""


def _loss_fn(model: nn.Module, loss_kw: dict[str, Any]) -> Callable[[Params, Tensor, Tensor, Tensor], Tensor]:
    def loss(p: Params, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return task_loss(model, p, x, t, y, **loss_kw)
    return loss


def task_gradients(model: nn.Module, params: Params, xs: Tensor, teacher_logits: Tensor, labels: Tensor,
                   per_task_params: bool = False, **loss_kw: Any) -> tuple[Params, Tensor]:
    """Per-task gradients ``{name: [m, ...]}`` and losses ``[m]`` of Eq. 8, vmapped over the m tasks.

    ``per_task_params``: ``params`` carry a leading task axis (one parameter point per task).
    """
    loss = _loss_fn(model, loss_kw)
    return vmap(grad_and_value(loss), in_dims=(0 if per_task_params else None, 0, 0, 0))(
        params, xs, teacher_logits, labels)


def gradient_stats(task_grads: Params) -> tuple[float, float]:
    """(regulariser (1/2m) sum_i ||g_i - gbar||^2, mean pairwise cosine of the g_i) of per-task gradients."""
    flat = torch.cat([g.detach().flatten(1) for g in task_grads.values()], 1)
    m = flat.shape[0]
    reg = (flat - flat.mean(0)).pow(2).sum() / (2 * m)
    if m < 2:
        return float(reg), float("nan")
    unit = F.normalize(flat, dim=1)
    iu = torch.triu_indices(m, m, 1, device=flat.device)
    cos = (unit @ unit.T)[iu[0], iu[1]].mean()
    return float(reg), float(cos)


def _check(xs: Tensor, teacher_logits: Tensor, labels: Tensor, beta: float, mode: str) -> None:
    if mode not in IGR_MODES:
        raise DfmetaError(f"IGR: mode must be one of {', '.join(IGR_MODES)}, got {mode!r}")
    if not beta >= 0:
        raise DfmetaError(f"IGR: beta must be >= 0, got {beta}")
    if xs.ndim != 5 or teacher_logits.ndim != 3 or labels.ndim != 2:
        raise DfmetaError(f"IGR: expected xs [m, n, C, H, W], teacher_logits [m, n, N], labels [m, n]; got "
                          f"{list(xs.shape)}, {list(teacher_logits.shape)}, {list(labels.shape)}")
    if not (xs.shape[:2] == teacher_logits.shape[:2] == labels.shape[:2]) or xs.shape[0] < 1:
        raise DfmetaError(f"IGR: tasks/images disagree: xs {list(xs.shape[:2])}, teacher_logits "
                          f"{list(teacher_logits.shape[:2])}, labels {list(labels.shape[:2])}")


def igr_gradient(model: nn.Module, params: Params, xs: Tensor, teacher_logits: Tensor, labels: Tensor,
                 beta: float = 1e-3, mode: str = "first", **loss_kw: Any) -> IGRResult:
    """IGR update direction for m tasks: ``xs`` ``[m, n, C, H, W]`` (normalised), ``teacher_logits`` ``[m, n, N]``,
    ``labels`` ``[m, n]``; ``loss_kw`` go to :func:`task_loss` (kd, ce, kd_form). See the module docstring for modes.
    """
    _check(xs, teacher_logits, labels, beta, mode)
    check_loss_terms(loss_kw.get("kd", True), loss_kw.get("ce", True), loss_kw.get("kd_form", "kl"))
    p = {k: v.detach() for k, v in params.items()}
    data = (xs, teacher_logits, labels)
    if mode == "second":
        model = second_order_model(model)
        loss = _loss_fn(model, loss_kw)

        def displaced_mean_loss(q: Params) -> tuple[Tensor, tuple[Params, Tensor]]:
            gi, losses = task_gradients(model, q, *data, **loss_kw)
            shifted = {k: q[k] - beta * (gi[k].mean(0) - gi[k]) for k in q}
            return vmap(loss)(shifted, *data).mean(), (gi, losses)

        g, (gi, losses) = grad(displaced_mean_loss, has_aux=True)(p)
    else:
        gi, losses = task_gradients(model, p, *data, **loss_kw)
        gbar = {k: v.mean(0) for k, v in gi.items()}
        if mode == "off":
            g = gbar
        else:
            shifted = {k: p[k] - beta * (gbar[k] - gi[k]) for k in p}
            gd, _ = task_gradients(model, shifted, *data, per_task_params=True, **loss_kw)
            g = {k: v.mean(0) for k, v in gd.items()}
    reg, cos = gradient_stats(gi)
    return IGRResult({k: v.detach() for k, v in g.items()}, losses.detach(), reg, cos)
