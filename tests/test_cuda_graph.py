"""Graphed steps: a plain call off the GPU; on CUDA the replays compute what eager calls compute, and a step that
cannot be captured falls back to eager."""

from __future__ import annotations

import pytest
import torch

from dfmeta.cuda_graph import Graphed

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def sgd_step(w: torch.Tensor):
    def step(x: torch.Tensor, y: torch.Tensor):
        loss = ((x @ w - y) ** 2).mean()
        (g,) = torch.autograd.grad(loss, [w])
        with torch.no_grad():
            w.sub_(0.1 * g)
        return (loss.detach(),)
    return step


def run(device: str, enabled: bool) -> tuple[list[float], torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, 1, generator=gen).to(device).requires_grad_()
    step = Graphed(sgd_step(w), torch.device(device), enabled)
    losses = []
    for _ in range(7):
        x, y = torch.randn(16, 8, generator=gen).to(device), torch.randn(16, 1, generator=gen).to(device)
        losses.append(float(step(x, y)[0]))
    return losses, w.detach().cpu()


def test_off_the_gpu_a_plain_call():
    step = Graphed(lambda x: (x * 2,), torch.device("cpu"))
    assert not step.enabled and step.graph is None
    assert torch.equal(step(torch.ones(2))[0], torch.full((2,), 2.0))
    losses, w = run("cpu", True)
    assert losses == run("cpu", False)[0]
    assert losses[-1] != losses[0]


@CUDA
def test_replays_equal_eager_on_cuda():
    eager, w_eager = run("cuda", False)
    graphed, w_graphed = run("cuda", True)
    assert graphed == pytest.approx(eager, rel=1e-5)
    torch.testing.assert_close(w_graphed, w_eager)


@CUDA
def test_uncapturable_step_falls_back_to_eager(capsys):
    step = Graphed(lambda x: (torch.tensor(float(x.sum()), device=x.device),), torch.device("cuda"), warmup=1)
    outs = [float(step(torch.full((3,), float(i), device="cuda"))[0]) for i in range(4)]
    assert outs == [0.0, 3.0, 6.0, 9.0]
    assert not step.enabled and "capture of the step failed" in capsys.readouterr().out
