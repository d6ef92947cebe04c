"""BiDf-MKD (white-box) on the shared loop: the bi-level KD gradient against a per-task autograd loop, the boundary
term, the recovery hook, end to end at toy scale (results, determinism, exact resume) and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import make_zoo

from dfmeta.config import make
from dfmeta.errors import DfmetaError
from dfmeta.meta.bidf_mkd import BiDfMKDConfig, boundary_loss, kd_adapt, outer_kd, train_bidf_mkd
from dfmeta.meta.loss import kd_loss
from dfmeta.meta.maml import adapt
from dfmeta.nets import build, fcall, params_of
from dfmeta.recover import RecoveryConfig, recover_tasks
from dfmeta.zoo import load_zoo

pytestmark = pytest.mark.usefixtures("one_thread")

LR, STEPS = 0.1, 2


# ---------------------------------------------------------------------- the bi-level KD step
@pytest.fixture(scope="module")
def tasks():
    torch.manual_seed(0)
    model = build("conv4", 3, 16, 3, "batch").double()
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(2, 6, 3, 16, 16, generator=g, dtype=torch.float64)     # 2 tasks, 3-way, 2 images per class
    xq = torch.randn(2, 6, 3, 16, 16, generator=g, dtype=torch.float64)
    ys = yq = torch.arange(3).repeat(2).expand(2, -1)
    ts = 3 * torch.randn(2, 6, 3, generator=g, dtype=torch.float64)          # teacher logits
    tq = 3 * torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    return model, params_of(model), xs, ys, ts, xq, yq, tq


def _live(p):
    return {k: v.clone().requires_grad_() for k, v in p.items()}


def _loop_reference(model, p, xs, ts, xq, tq, first_order):
    """Per-task Python loop with plain autograd (native BatchNorm): KD inner steps, KL on the query set."""
    live = _live(p)
    total = 0
    for i in range(len(xs)):
        q = dict(live)
        for _ in range(STEPS):
            g = torch.autograd.grad(kd_loss(fcall(model, q, xs[i]), ts[i]), list(q.values()),
                                    create_graph=not first_order)
            q = {k: q[k] - LR * gk for k, gk in zip(q, g)}
        total = total + kd_loss(fcall(model, q, xq[i]), tq[i])
    return total, dict(zip(live, torch.autograd.grad(total, list(live.values()))))


@pytest.mark.parametrize("first_order", [False, True])
def test_bilevel_kd_gradient_matches_per_task_loop(tasks, first_order):
    model, p, xs, ys, ts, xq, yq, tq = tasks
    live = _live(p)
    fast = kd_adapt(model, live, xs, ys, ts, LR, STEPS, first_order)
    loss, acc, agree = outer_kd(model, fast, xq, yq, tq, first_order)
    grads = dict(zip(live, torch.autograd.grad(loss, list(live.values()))))
    ref_loss, ref = _loop_reference(model, p, xs, ts, xq, tq, first_order)
    torch.testing.assert_close(loss, ref_loss)
    for k in p:
        torch.testing.assert_close(grads[k], ref[k], rtol=1e-7, atol=1e-10)
    assert 0 <= float(acc) <= 1 and 0 <= float(agree) <= 1


def test_inner_kd_steps_move_towards_the_teacher(tasks):
    model, p, xs, ys, ts, *_ = tasks
    before = kd_loss(fcall(model, p, xs[0]), ts[0])
    after = kd_loss(fcall(model, adapt(model, p, xs[0], ys[0], LR, 3, teacher_logits=ts[0]), xs[0]), ts[0])
    assert after < before
    ce = adapt(model, p, xs[0], ys[0], LR, 1)  # no teacher logits: the CE inner loop as before
    ce_kd = kd_adapt(model, p, xs[:1], ys[:1], ts[:1], LR, 1, inner_loss="ce")
    for k in p:
        torch.testing.assert_close(ce_kd[k][0], ce[k])


# ---------------------------------------------------------------------- boundary query set recovery
def test_boundary_loss_masks_agreement_and_matches_kl():
    t = torch.tensor([[[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 0.0, 0.5]]], requires_grad=True)
    s = torch.tensor([[[2.0, 0.5, 0.0], [0.0, 0.0, 1.0], [2.0, 1.0, 0.0]]], requires_grad=True)
    loss = boundary_loss(t, s)
    agree = torch.tensor([1.0, 0.0, 1.0])
    kl = (F.softmax(t, -1) * (F.log_softmax(t, -1) - F.log_softmax(s, -1))).sum(-1)[0]
    torch.testing.assert_close(loss, -(agree * kl).mean().view(1))
    loss.sum().backward()
    assert s.grad is None or not s.grad.any()                 # the meta-model is not trained by recovery
    assert not t.grad[0, 1].any() and t.grad[0, 0].any()      # a disagreeing image gets no push
    authors = boundary_loss(t.detach(), s.detach(), "authors")
    ref = F.kl_div(F.softmax(t, -1), F.softmax(s, -1), reduction="none").sum(-1)[0]  # their adv term
    torch.testing.assert_close(authors, -(agree * ref).mean().view(1))


def test_boundary_descent_moves_agreeing_images_to_the_boundary():
    g = torch.Generator().manual_seed(0)
    s = 2 * torch.randn(64, 5, generator=g)
    t = (s + 0.5 * torch.randn(64, 5, generator=g)).requires_grad_()
    agree0 = float((t.argmax(-1) == s.argmax(-1)).float().mean())
    opt = torch.optim.SGD([t], lr=1.0)
    for _ in range(20):
        opt.zero_grad()
        (len(t) * boundary_loss(t, s)).backward()
        opt.step()
    agree = float((t.argmax(-1) == s.argmax(-1)).float().mean())
    assert agree0 > 0.6 and agree < 0.5 * agree0


@pytest.mark.parametrize("amp,batching", [("off", "vmap"), ("bf16", "grouped")])
def test_recovery_extra_loss_is_added_per_teacher(tmp_path, amp, batching):
    """Also under the CUDA defaults (bf16, grouped requested): the extra loss gets float32 inputs of the vmap layout."""
    zoo = load_zoo(str(make_zoo(tmp_path / "zoo", 3)))
    cfg = RecoveryConfig(steps=2, per_class=2, nz=8, nf=4, amp=amp, batching=batching)
    plain = recover_tasks(zoo.teachers, [0, 2], RecoveryConfig(**{**cfg.__dict__, "batching": "vmap"}), "cpu", 3,
                          chunk=1)  # an extra loss runs the vmap layout
    seen = []

    def extra(part, logits, x):  # a constant per teacher: same trajectory, loss shifted by the teacher index
        seen.append((list(part), tuple(logits.shape), tuple(x.shape)))
        dtypes.extend([logits.dtype, x.dtype])
        return torch.tensor([float(i) for i in part])

    dtypes = []
    shifted = recover_tasks(zoo.teachers, [0, 2], cfg, "cpu", 3, chunk=1, extra=extra)
    assert seen[0] == ([0], (1, 10, 5), (1, 10, 3, 16, 16)) and seen[-1][0] == [2]
    assert all(d == torch.float32 for d in dtypes)
    for a, b in zip(plain, shifted):
        assert torch.equal(a.images, b.images)
        assert b.loss == pytest.approx(a.loss + a.teacher, abs=1e-5)


# ---------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    return make_zoo(tmp_path_factory.mktemp("zoo"), 3)


def tiny(zoo: Path, out: Path, **kw) -> BiDfMKDConfig:
    base = dict(dataset="embedded", image_size=16, zoo=str(zoo), out_dir=str(out), device="cpu", epochs=4,
                val_every=2, teachers_per_epoch=2, support_per_class=2, query_per_class=2, rec_steps=2, rec_nf=4,
                kd_inner_steps=2, inner_steps=1, boundary_warmup=0.25, bank_size=3, meta_batch=2,
                replay_max_batches=2, replay_queries=1, val_episodes=3, episodes=3, shots=(1,), eval_steps=2)
    base.update(kw)
    return make(BiDfMKDConfig, base)


def run_dir(out: Path) -> Path:
    (d,) = [p for p in out.iterdir() if p.is_dir()]
    return d


def final_params(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir(out) / "checkpoint.pt", weights_only=False)["params"]


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir(out) / "metrics.jsonl").read_text().splitlines()]


def test_end_to_end_seeded_and_resumed_exactly(zoo, tmp_path):
    full = train_bidf_mkd(tiny(zoo, tmp_path / "a"))
    assert full["method"] == "bidf-mkd" and full["epochs_run"] == 4
    assert json.loads((run_dir(tmp_path / "a") / "results.json").read_text())["test"]["1"]["acc"] >= 0
    epochs = [r for r in rows(tmp_path / "a") if "epoch" in r]
    assert [r["boundary"] for r in epochs] == [False, True, True, True]       # warm-up: 1 of 4 epochs
    assert all(r["replay_batches"] > 0 and r["loss"] > 0 for r in epochs[1:])

    again = train_bidf_mkd(tiny(zoo, tmp_path / "b"))                          # same seed: identical
    assert again == full
    a, b = final_params(tmp_path / "a"), final_params(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)

    assert train_bidf_mkd(tiny(zoo, tmp_path / "c", stop_after=3)) == {"stopped_at": 3}
    resumed = train_bidf_mkd(make(BiDfMKDConfig, {"resume": str(run_dir(tmp_path / "c")), "device": "cpu"}))
    assert resumed == full
    c = final_params(tmp_path / "c")
    for k in a:
        assert torch.equal(a[k], c[k]), k
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith("t_")} for r in rs]  # noqa: E731
    assert strip(rows(tmp_path / "a")) == strip(rows(tmp_path / "c"))

    other = train_bidf_mkd(tiny(zoo, tmp_path / "d", seed=1, boundary=False, epochs=2))
    off = [r for r in rows(tmp_path / "d") if "epoch" in r]
    assert other["epochs_run"] == 2 and not any(r["boundary"] for r in off)
    d = final_params(tmp_path / "d")
    assert any(not torch.equal(a[k], d[k]) for k in a)


def test_pooled_memory_stores_dataset_classes(zoo, tmp_path):
    from dfmeta.zoo import load_zoo
    assert train_bidf_mkd(tiny(zoo, tmp_path, replay_mix="pooled", epochs=3, stop_after=2)) == {"stopped_at": 2}
    bank = torch.load(run_dir(tmp_path) / "checkpoint.pt", weights_only=False)["extra"]["bank"]
    teachers = load_zoo(zoo).teachers
    assert bank["tasks"] and all(t["names"] == teachers[t["teacher"]].class_ids for t in bank["tasks"])


def test_boundary_changes_only_the_query_set(zoo, tmp_path):
    on = tiny(zoo, tmp_path / "on", epochs=1, val_every=1, boundary_warmup=0, replay=False, boundary_weight=5.0)
    train_bidf_mkd(on)
    train_bidf_mkd(make(BiDfMKDConfig, {**on.__dict__, "out_dir": str(tmp_path / "off"), "boundary": False}))
    r_on, r_off = rows(tmp_path / "on")[0], rows(tmp_path / "off")[0]
    assert r_on["boundary"] and not r_off["boundary"]
    assert r_on["rec_loss_support"] == r_off["rec_loss_support"]
    assert r_on["rec_loss_query"] != r_off["rec_loss_query"]


def test_bad_input(zoo, tmp_path):
    with pytest.raises(DfmetaError, match="teachers_per_epoch"):
        train_bidf_mkd(tiny(zoo, tmp_path, teachers_per_epoch=9))
    with pytest.raises(DfmetaError, match="boundary_warmup"):
        tiny(zoo, tmp_path, boundary_warmup=1.5)
    with pytest.raises(DfmetaError, match="inner_loss"):
        tiny(zoo, tmp_path, inner_loss="mse")
    with pytest.raises(DfmetaError, match="support_per_class"):
        tiny(zoo, tmp_path, support_per_class=1, query_per_class=1, replay_queries=5)
    with pytest.raises(DfmetaError, match="--ways"):
        train_bidf_mkd(tiny(zoo, tmp_path, ways=3))
    with pytest.raises(DfmetaError, match="bi-level KD"):
        kd_adapt(build("conv4", 3, 16, 3, "batch"), {}, torch.zeros(6, 3, 16, 16), torch.zeros(6), torch.zeros(6, 3),
                 LR, 1)


def test_cli_command_and_presets(capsys):
    from dfmeta.cli import main
    from dfmeta.commands.bidf_mkd import PRESETS
    from dfmeta.commands.train import SETTINGS
    assert set(SETTINGS) <= set(PRESETS)
    for name, values in PRESETS.items():
        make(BiDfMKDConfig, {"zoo": "z", **values})
    with pytest.raises(SystemExit):
        main(["baseline", "bidf-mkd", "--help"])
    out = capsys.readouterr().out
    assert "--boundary-weight" in out and "Fraction of the T epochs" in out
