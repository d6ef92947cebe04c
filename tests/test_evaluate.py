"""Few-shot evaluation: the CI, vmapped fine-tuning against a plain per-episode loop, head preparation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dfmeta.data.embedded import embedded_split
from dfmeta.errors import DfmetaError
from dfmeta.evaluate import EvalResult, Evaluator, finetune_episodes, prepare_head, score_episodes
from dfmeta.nets import Conv4, fcall, params_of


def tiny_conv4(n_way: int = 5, seed: int = 0) -> Conv4:
    torch.manual_seed(seed)
    return Conv4(n_way, image_size=16, in_channels=3, width=8, bn="batch")


def test_eval_result_ci() -> None:
    accs = np.array([0.2, 0.4, 0.4, 0.8, 1.0])
    r = EvalResult.of(accs)
    assert r.mean == pytest.approx(56.0)
    assert r.ci95 == pytest.approx(1.96 * np.std(accs * 100) / math.sqrt(5))
    assert r.as_dict() == {"acc": 56.0, "ci95": round(r.ci95, 4), "episodes": 5}
    assert str(r) == f"56.00 ± {r.ci95:.2f}"
    assert math.isnan(EvalResult.of(np.array([0.5])).ci95)


def test_vmapped_finetuning_equals_a_plain_loop() -> None:
    model = tiny_conv4()
    params = params_of(model)
    g = torch.Generator().manual_seed(1)
    e, n, k = 3, 5, 2
    xs = torch.randn(e, n * k, 3, 16, 16, generator=g)
    ys = torch.arange(n).repeat_interleave(k).expand(e, -1)
    steps, lr = 4, 0.1
    batched = finetune_episodes(model, params, xs, ys, steps, lr)
    for i in range(e):
        p = {name: v.clone().requires_grad_(True) for name, v in params.items()}
        for _ in range(steps):
            loss = F.cross_entropy(fcall(model, p, xs[i]), ys[i])
            grads = torch.autograd.grad(loss, list(p.values()))
            p = {name: (v - lr * gr).detach().requires_grad_(True) for (name, v), gr in zip(p.items(), grads)}
        for name in params:
            torch.testing.assert_close(batched[name][i], p[name].detach(), atol=1e-5, rtol=1e-5)
        assert not torch.equal(batched["head.weight"][i], params["head.weight"])  # it did train
    # scoring: each episode's accuracy with its own parameters
    xq = torch.randn(e, n * 3, 3, 16, 16, generator=g)
    yq = torch.arange(n).repeat_interleave(3).expand(e, -1)
    acc = score_episodes(model, batched, xq, yq)
    with torch.no_grad():
        for i in range(e):
            one = {name: v[i] for name, v in batched.items()}
            assert acc[i].item() == pytest.approx((fcall(model, one, xq[i]).argmax(-1) == yq[i]).float().mean().item())


def test_prepare_head_modes() -> None:
    model = tiny_conv4(n_way=5)
    params = params_of(model)
    feat = model.feature_dim
    kept = prepare_head(model, params, 5, "keep")
    assert all(torch.equal(kept[k], params[k]) for k in params)
    with pytest.raises(DfmetaError, match="head has 5 outputs, episodes are 3-way"):
        prepare_head(model, params, 3, "keep")
    zero = prepare_head(model, params, 3, "zero")
    assert zero["head.weight"].shape == (3, feat) and not zero["head.weight"].any() and not zero["head.bias"].any()
    rand = prepare_head(model, params, 3, "random", seed=4)
    assert rand["head.weight"].shape == (3, feat) and rand["head.weight"].abs().max() <= 1 / math.sqrt(feat)
    assert torch.equal(rand["head.weight"], prepare_head(model, params, 3, "random", seed=4)["head.weight"])
    assert not torch.equal(rand["head.weight"], prepare_head(model, params, 3, "random", seed=5)["head.weight"])
    body = [k for k in params if not k.startswith("head.")]
    assert all(torch.equal(m[k], params[k]) for m in (zero, rand) for k in body)
    assert torch.equal(params["head.weight"], params_of(model)["head.weight"])  # the input is not modified


def test_evaluator_is_seeded() -> None:
    split = embedded_split("val", per_class=8, size=16)
    model = tiny_conv4()
    ev = Evaluator(split, n_way=5, k_shot=1, n_query=3, n_episodes=6, seed=0, steps=2, lr=0.05, episode_batch=4)
    a = ev(model, params_of(model))
    b = Evaluator(split, 5, 1, 3, 6, seed=0, steps=2, lr=0.05, episode_batch=6)(model, params_of(model))
    assert len(a.accs) == 6 and 0 <= a.mean <= 100
    np.testing.assert_allclose(a.accs, b.accs)  # episode batching does not change the result


def test_evaluator_shows_progress_only_when_asked(capsys) -> None:
    split = embedded_split("val", per_class=8, size=16)
    model = tiny_conv4()
    ev = Evaluator(split, n_way=5, k_shot=1, n_query=3, n_episodes=6, seed=0, steps=1, lr=0.05, episode_batch=4)
    quiet = ev(model, params_of(model))
    assert capsys.readouterr().err == ""
    shown = ev(model, params_of(model), progress="meta-test 1-shot")
    err = capsys.readouterr().err
    assert "meta-test 1-shot" in err and "/6 " in err  # a bar over the 6 episodes (its refreshes are throttled)
    np.testing.assert_array_equal(quiet.accs, shown.accs)
