"""MAML over a vmapped meta-batch: reductions, agreement with a per-task autograd loop, first vs second order."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from dfmeta.errors import DfmetaError
from dfmeta.meta.bank import MemoryBank
from dfmeta.meta.maml import maml_loss, replay
from dfmeta.nets import build, fcall, params_of

LR, STEPS = 0.1, 2
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = build("conv4", 3, 16, 3, "batch").double()
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(3, 3, 3, 16, 16, generator=g, dtype=torch.float64)           # 3 tasks, 3-way 1-shot
    xq = torch.randn(3, 6, 3, 16, 16, generator=g, dtype=torch.float64)           # 2 queries per class
    ys = torch.arange(3).expand(3, -1)
    yq = torch.arange(3).repeat_interleave(2).expand(3, -1)
    return model, params_of(model), xs, ys, xq, yq


def _live(p):
    return {k: v.clone().requires_grad_() for k, v in p.items()}


def _outer_grads(model, p, *data, **kw):
    live = _live(p)
    loss, acc = maml_loss(model, live, *data, **kw)
    return loss, acc, dict(zip(live, torch.autograd.grad(loss, list(live.values()))))


def _loop_reference(model, p, xs, ys, xq, yq, first_order):
    """Per-task Python loop with plain autograd (native BatchNorm)."""
    live = _live(p)
    total = 0
    for i in range(len(xs)):
        q = dict(live)
        for _ in range(STEPS):
            g = torch.autograd.grad(F.cross_entropy(fcall(model, q, xs[i]), ys[i]), list(q.values()),
                                    create_graph=not first_order)
            q = {k: q[k] - LR * gk for k, gk in zip(q, g)}
        total = total + F.cross_entropy(fcall(model, q, xq[i]), yq[i])
    return total, dict(zip(live, torch.autograd.grad(total, list(live.values()))))


def test_zero_steps_is_query_loss(setup):
    model, p, xs, ys, xq, yq = setup
    loss, acc = maml_loss(model, p, xs, ys, xq, yq, inner_steps=0)
    logits = [fcall(model, p, xq[i]) for i in range(3)]
    torch.testing.assert_close(loss, sum(F.cross_entropy(l, yq[i]) for i, l in enumerate(logits)))
    assert float(acc) == pytest.approx(float(sum((l.argmax(-1) == yq[i]).double().mean()
                                                  for i, l in enumerate(logits)) / 3))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_matches_loop(setup, first_order, device):
    model, p, *data = setup
    model, p, data = model.to(device), {k: v.to(device) for k, v in p.items()}, [d.to(device) for d in data]
    loss, _, grads = _outer_grads(model, p, *data, inner_lr=LR, inner_steps=STEPS, first_order=first_order)
    ref_loss, ref = _loop_reference(model, p, *data, first_order)
    torch.testing.assert_close(loss, ref_loss)
    for k in p:
        torch.testing.assert_close(grads[k], ref[k], rtol=1e-7, atol=1e-10)


def test_first_and_second_order_differ(setup):
    model, p, *data = setup
    _, _, second = _outer_grads(model, p, *data, inner_lr=LR, inner_steps=STEPS)
    _, _, first = _outer_grads(model, p, *data, inner_lr=LR, inner_steps=STEPS, first_order=True)
    assert all(torch.isfinite(g).all() for g in (*second.values(), *first.values()))
    diff = sum(((second[k] - first[k]) ** 2).sum() for k in p).sqrt()
    assert diff > 1e-3 * sum((first[k] ** 2).sum() for k in p).sqrt()


def test_adam_outer_steps_reduce_query_loss():
    torch.manual_seed(0)
    model = build("conv4", 3, 16, 1, "batch")
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(6, 1, 16, 16, generator=g)
    classes = torch.stack([torch.randperm(6, generator=g)[:3] for _ in range(4)])          # 4 tasks, 3-way

    def images(k):
        return protos[classes].unsqueeze(2).expand(-1, -1, k, -1, -1, -1).reshape(4, 3 * k, 1, 16, 16) \
            + 0.3 * torch.randn(4, 3 * k, 1, 16, 16, generator=g)

    xs, xq = images(1), images(3)
    ys, yq = torch.arange(3).expand(4, -1), torch.arange(3).repeat_interleave(3).expand(4, -1)
    params = {k: v.detach().requires_grad_() for k, v in model.named_parameters()}
    opt = torch.optim.Adam(params.values(), lr=1e-2)
    losses = []
    for _ in range(6):
        loss, _ = maml_loss(model, params, xs, ys, xq, yq, inner_lr=0.1, inner_steps=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0]


def test_bad_arguments(setup):
    model, p, xs, ys, xq, yq = setup
    with pytest.raises(DfmetaError):
        maml_loss(model, p, xs[0], ys, xq, yq)
    with pytest.raises(DfmetaError):
        maml_loss(model, p, xs, ys[:2], xq, yq)
    with pytest.raises(DfmetaError):
        maml_loss(model, p, xs, ys, xq, yq, inner_steps=-1)


def test_replay_stopping_rule():
    """Replay stops after `patience` meta-batches in a row without a new best training accuracy, or at the cap
    (0: no cap); the step sequence and accuracies are those the authors' rule implies."""
    bank = MemoryBank(4)
    g = torch.Generator().manual_seed(0)
    for t in range(2):
        bank.add(SimpleNamespace(images=torch.randn(15, 3, 16, 16, generator=g),
                                 labels=torch.arange(5).repeat_interleave(3), teacher=t))
    accs = iter([0.2, 0.5, 0.4, 0.5, 0.3, 0.9, 0.1, 0.1, 0.1, 0.1])
    seen = []

    def step(xs, ys, xq, yq):
        seen.append(xs.shape)
        return torch.tensor(1.0), torch.tensor(next(accs)), *[torch.zeros_like(p) for p in params.values()]

    torch.manual_seed(0)
    model = build("conv4", 5, 16, 3, "batch")
    params = {k: v.requires_grad_() for k, v in params_of(model).items()}
    opt = torch.optim.Adam(params.values(), lr=1e-3)
    kw = dict(n_tasks=2, n_way=5, k_shot=1, n_query=1, inner_lr=0.01, inner_steps=1, first_order=True)
    out = replay(model, params, opt, bank, 0, patience=3, max_batches=0, step=step, **kw)
    # best 0.2, 0.5, (0.4, 0.5, 0.3: stale 3) -> stop after 5 batches
    assert out["replay_batches"] == 5 and out["replay_acc"] == pytest.approx(0.5)
    assert seen[0] == (2, 5, 3, 16, 16)
    accs = iter([0.1, 0.2, 0.3, 0.4, 0.5])
    assert replay(model, params, opt, bank, 0, patience=3, max_batches=2, step=step, **kw)["replay_batches"] == 2
