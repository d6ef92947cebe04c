"""MAML over a meta-batch of interpolated tasks (cross-task replay, Eq. 9), all tasks at once with ``torch.func.vmap``.

Inner loop: ``inner_steps`` plain gradient-descent steps on each task's support set. Outer loss: the query
cross-entropy at the adapted parameters, summed over the tasks of the meta-batch (as the authors do with 16 tasks;
divide by the number of tasks for a mean). Second-order by default: call ``.backward()`` (or ``torch.func.grad``) on
the returned loss and gradients flow through the inner steps (the model then runs through
:func:`dfmeta.meta.loss.second_order_model`, as PyTorch's fused batch norm is wrong there under ``vmap``);
``first_order`` detaches the inner gradients. :func:`adapt` can also distil a teacher's logits on the support set
(BiDf-MKD's inner loop), and :func:`replay` runs the replay meta-batches of an epoch with the authors' stopping rule.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad, vmap

from dfmeta.errors import DfmetaError
from dfmeta.meta.loss import kd_loss, second_order_model
from dfmeta.nets import fcall

Params = dict[str, Tensor]


def adapt(model: nn.Module, params: Params, x: Tensor, y: Tensor, inner_lr: float, inner_steps: int,
          first_order: bool = False, teacher_logits: Tensor | None = None, kd_form: str = "kl") -> Params:
    """``inner_steps`` steps of plain gradient descent on one support set (vmappable, differentiable).

    The support loss is the cross-entropy to ``y``; with ``teacher_logits`` ``[n, N]`` it is instead the distillation
    term :func:`dfmeta.meta.loss.kd_loss` (``kd_form``) to the teacher's outputs (``y`` unused).
    """
    def support_loss(p: Params) -> Tensor:
        logits = fcall(model, p, x)
        if teacher_logits is not None:
            return kd_loss(logits, teacher_logits, kd_form)
        return F.cross_entropy(logits, y)

    p = params
    for _ in range(inner_steps):
        g = grad(support_loss)(p)
        p = {k: p[k] - inner_lr * (g[k].detach() if first_order else g[k]) for k in p}
    return p


def _check(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor, inner_lr: float, inner_steps: int) -> None:
    if xs.ndim != 5 or xq.ndim != 5 or ys.ndim != 2 or yq.ndim != 2:
        raise DfmetaError(f"MAML: expected xs/xq [T, n, C, H, W] and ys/yq [T, n]; got {list(xs.shape)}, "
                          f"{list(ys.shape)}, {list(xq.shape)}, {list(yq.shape)}")
    if not (xs.shape[0] == ys.shape[0] == xq.shape[0] == yq.shape[0]) or xs.shape[1] != ys.shape[1] \
            or xq.shape[1] != yq.shape[1]:
        raise DfmetaError(f"MAML: tasks/images disagree: xs {list(xs.shape[:2])}, ys {list(ys.shape)}, "
                          f"xq {list(xq.shape[:2])}, yq {list(yq.shape)}")
    if inner_steps < 0 or inner_lr < 0:
        raise DfmetaError(f"MAML: inner_steps and inner_lr must be >= 0, got {inner_steps} and {inner_lr}")


def maml_loss(model: nn.Module, params: Params, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor,
              inner_lr: float = 0.01, inner_steps: int = 5, first_order: bool = False) -> tuple[Tensor, Tensor]:
    """(query loss summed over the T tasks, mean query accuracy) for support ``xs`` ``[T, N*K, C, H, W]``, ``ys``
    ``[T, N*K]`` and query ``xq`` ``[T, N*Q, C, H, W]``, ``yq`` ``[T, N*Q]`` (inputs normalised)."""
    _check(xs, ys, xq, yq, inner_lr, inner_steps)
    if not first_order and inner_steps > 0:
        model = second_order_model(model)

    def task(x: Tensor, y: Tensor, xqi: Tensor, yqi: Tensor) -> tuple[Tensor, Tensor]:
        logits = fcall(model, adapt(model, params, x, y, inner_lr, inner_steps, first_order), xqi)
        return F.cross_entropy(logits, yqi), (logits.argmax(-1) == yqi).to(logits.dtype).mean()

    losses, accs = vmap(task)(xs, ys, xq, yq)
    return losses.sum(), accs.mean().detach()


class TaskSource(Protocol):
    """Where replay draws its meta-batches: the memory bank, or real images (:class:`dfmeta.meta.real_maml.RealTasks`)."""

    def sample_tasks(self, n_tasks: int, n_way: int, k_shot: int, n_query: int,
                     generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]: ...


MetaStep = Callable[..., Sequence[Tensor]]
"""``step(xs, ys, xq, yq) -> (loss, accuracy, *gradients in the parameters' order)`` of one meta-batch."""


def meta_gradients(model: nn.Module, params: Params, inner_lr: float, inner_steps: int,
                   first_order: bool) -> MetaStep:
    """The :data:`MetaStep` of :func:`maml_loss` at ``params`` (fixed tensors: wrap it in
    :class:`dfmeta.cuda_graph.Graphed` to replay it as a CUDA graph)."""
    leaves = list(params.values())

    def step(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> tuple[Tensor, ...]:
        loss, acc = maml_loss(model, params, xs, ys, xq, yq, inner_lr, inner_steps, first_order)
        return (loss.detach(), acc, *torch.autograd.grad(loss, leaves))
    return step


def replay(model: nn.Module, params: Params, opt: torch.optim.Optimizer, bank: TaskSource, seed: int, *,
           n_tasks: int, n_way: int, k_shot: int, n_query: int, inner_lr: float, inner_steps: int, first_order: bool,
           patience: int, max_batches: int, step: MetaStep | None = None) -> dict[str, float]:
    """Cross-task replay: MAML meta-batches of ``n_tasks`` interpolated tasks from ``bank`` (drawn with a generator
    seeded by ``seed`` on the parameters' device), one ``opt`` step each, until ``patience`` batches in a row bring no
    new best training accuracy (the authors' rule) or ``max_batches`` (0: no cap). Stops early while the bank cannot
    supply ``n_way`` classes. ``step``: the meta-batch computation (default :func:`meta_gradients` of these settings).
    Returns replay_batches, replay_loss, replay_acc."""
    step = step or meta_gradients(model, params, inner_lr, inner_steps, first_order)
    generator = torch.Generator(device=next(iter(params.values())).device)
    generator.manual_seed(seed)
    best, stale, n, losses = -1.0, 0, 0, []
    while (max_batches <= 0 or n < max_batches) and stale < patience:
        try:
            xs, ys, xq, yq = bank.sample_tasks(n_tasks, n_way, k_shot, n_query, generator)
        except DfmetaError:
            break  # not enough stored classes yet
        loss, acc, *grads = step(xs, ys, xq, yq)
        opt.zero_grad(set_to_none=True)
        for p, g in zip(params.values(), grads):
            p.grad = g.clone()  # a graphed step's outputs are overwritten by its next replay
        opt.step()
        n += 1
        losses.append(float(loss))
        if float(acc) > best:
            best, stale = float(acc), 0
        else:
            stale += 1
    return {"replay_batches": n, "replay_loss": float(np.mean(losses)) if losses else float("nan"),
            "replay_acc": best if n else float("nan")}
