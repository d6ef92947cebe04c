"""IGR (Theorem 4.1): reduction to the mean gradient, the O(beta^2) expansion, the authors' second-order form."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dfmeta.errors import DfmetaError
from dfmeta.meta.igr import gradient_stats, igr_gradient
from dfmeta.meta.loss import task_loss
from dfmeta.nets import build, params_of


class SmoothNet(nn.Module):
    """A tiny smooth (tanh) network with batch-statistics BatchNorm, so Taylor expansions hold to high order."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 8)
        self.bn = nn.BatchNorm1d(8, track_running_stats=False)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.bn(self.fc(x.flatten(1)))))


def _data(m, n, shape, classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(m, n, *shape, generator=g, dtype=torch.float64)
    return xs, torch.randn(m, n, classes, generator=g, dtype=torch.float64), torch.randint(0, classes, (m, n), generator=g)


@pytest.fixture(scope="module")
def smooth():
    torch.manual_seed(0)
    model = SmoothNet().double()
    return model, params_of(model), *_data(3, 10, (3, 2, 2), 3)


def _reference(model, params, xs, t, y, beta, second):
    """Python loop over tasks with plain autograd: (1/m) sum_i d/dtheta L_i(theta - v_i)."""
    names = list(params)
    p = [params[k].clone().requires_grad_() for k in names]
    m = len(xs)

    def loss(i, q):
        return task_loss(model, dict(zip(names, q)), xs[i], t[i], y[i])

    gi = [torch.autograd.grad(loss(i, p), p, create_graph=second) for i in range(m)]
    gbar = [sum(g[j] for g in gi) / m for j in range(len(p))]
    total = 0
    for i in range(m):
        v = [beta * (gbar[j] - gi[i][j]) for j in range(len(p))]
        v = v if second else [a.detach() for a in v]
        total = total + loss(i, [a - b for a, b in zip(p, v)]) / m
    return dict(zip(names, torch.autograd.grad(total, p)))


def _theorem_rhs(model, params, xs, t, y, beta):
    """grad Lbar + (beta / 2m) grad sum_i ||grad L_i - grad Lbar||^2, by double backward."""
    names = list(params)
    p = [params[k].clone().requires_grad_() for k in names]
    m = len(xs)
    losses = [task_loss(model, dict(zip(names, p)), xs[i], t[i], y[i]) for i in range(m)]
    gi = [torch.autograd.grad(l, p, create_graph=True) for l in losses]
    gbar = [sum(g[j] for g in gi) / m for j in range(len(p))]
    spread = sum(((g[j] - gbar[j]) ** 2).sum() for g in gi for j in range(len(p)))
    return dict(zip(names, torch.autograd.grad(sum(losses) / m + beta / (2 * m) * spread, p)))


def _dist(a, b):
    return sum(((a[k] - b[k]) ** 2).sum() for k in a).sqrt().item()


def test_beta_zero_is_mean_gradient_conv4():
    torch.manual_seed(0)
    model = build("conv4", 5, 16, 3, "batch").double()
    p = params_of(model)
    data = _data(2, 6, (3, 16, 16), 5)
    ref = _reference(model, p, *data, 0.0, second=False)
    for mode in ("off", "first", "second"):
        r = igr_gradient(model, p, *data, beta=0.0, mode=mode)
        for k in p:
            torch.testing.assert_close(r.grads[k], ref[k], rtol=1e-9, atol=1e-11)
    off = igr_gradient(model, p, *data, mode="off")
    first = igr_gradient(model, p, *data, beta=1e-2, mode="first")
    assert _dist(off.grads, first.grads) > 1e-6


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["first", "second"])
def test_matches_autograd_loop(smooth, mode, device):
    model, p, xs, t, y = smooth
    model, p = model.to(device), {k: v.to(device) for k, v in p.items()}
    xs, t, y = xs.to(device), t.to(device), y.to(device)
    r = igr_gradient(model, p, xs, t, y, beta=0.05, mode=mode)
    ref = _reference(model, p, xs, t, y, 0.05, second=mode == "second")
    for k in p:
        torch.testing.assert_close(r.grads[k], ref[k], rtol=1e-9, atol=1e-11)
    losses = torch.stack([task_loss(model, p, xs[i], t[i], y[i]) for i in range(len(xs))])
    torch.testing.assert_close(r.losses, losses)


def test_theorem_4_1_expansion(smooth):
    """g_first - RHS is O(beta^2): small next to the O(beta) correction, and quartered when beta halves."""
    model, p, xs, t, y = smooth
    gbar = igr_gradient(model, p, xs, t, y, mode="off").grads
    errs = []
    for beta in (1e-3, 5e-4):
        g = igr_gradient(model, p, xs, t, y, beta=beta, mode="first").grads
        rhs = _theorem_rhs(model, p, xs, t, y, beta)
        errs.append(_dist(g, rhs))
        assert errs[-1] < 1e-2 * _dist(rhs, gbar)
    assert 3.0 < errs[0] / errs[1] < 5.0


def test_second_differs_from_first(smooth):
    model, p, xs, t, y = smooth
    first = igr_gradient(model, p, xs, t, y, beta=0.05, mode="first").grads
    second = igr_gradient(model, p, xs, t, y, beta=0.05, mode="second").grads
    assert _dist(first, second) > 1e-3 * _dist(first, {k: 0 * v for k, v in first.items()})


def test_stats_hand_made():
    reg, cos = gradient_stats({"a": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "b": torch.zeros(2, 3)})
    assert reg == pytest.approx(0.25) and cos == pytest.approx(0.0)
    reg, cos = gradient_stats({"a": torch.tensor([[1.0, 0.0], [-1.0, 0.0]])})
    assert reg == pytest.approx(0.5) and cos == pytest.approx(-1.0)
    reg, cos = gradient_stats({"a": torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])})
    assert reg == pytest.approx(0.0) and cos == pytest.approx(1.0)


def test_identical_tasks(smooth):
    model, p, xs, t, y = smooth
    same = [a[:1].expand(2, *a.shape[1:]) for a in (xs, t, y)]
    r = igr_gradient(model, p, *same, beta=0.05, mode="first")
    assert r.regulariser == pytest.approx(0.0, abs=1e-20) and r.cosine == pytest.approx(1.0)
    off = igr_gradient(model, p, *same, mode="off").grads
    assert _dist(r.grads, off) < 1e-12


def test_result_detached_and_loss_options(smooth):
    model, p, xs, t, y = smooth
    live = {k: v.clone().requires_grad_() for k, v in p.items()}
    r = igr_gradient(model, live, xs, t, y, mode="second")
    assert all(not g.requires_grad for g in r.grads.values()) and not r.losses.requires_grad
    ce_only = igr_gradient(model, p, xs, t, y, kd=False, mode="off").losses
    torch.testing.assert_close(ce_only, torch.stack([task_loss(model, p, xs[i], t[i], y[i], kd=False)
                                                     for i in range(3)]))


@pytest.mark.parametrize("kw", [dict(mode="third"), dict(beta=-1.0), dict(kd=False, ce=False), dict(kd_form="x")])
def test_bad_arguments(smooth, kw):
    model, p, xs, t, y = smooth
    with pytest.raises(DfmetaError):
        igr_gradient(model, p, xs, t, y, **kw)
    with pytest.raises(DfmetaError):
        igr_gradient(model, p, xs, t[:2], y)
