"""Task recovery (Eq. 2-4) and the generator (Table 7): batched = alone, the loss goes down, shapes, seeds."""

from __future__ import annotations

import pytest
import torch

from dfmeta.errors import DfmetaError
from dfmeta.nets import build
from dfmeta.nets.generator import Generator
from dfmeta.recover import (PAD, BNStatLoss, RecoveryConfig, augment, compiles, initial_draws, once, recover_tasks,
                            recovery_loss, teacher_rng, teachers_per_batch)
from dfmeta.zoo.format import Teacher

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
TINY = RecoveryConfig(steps=3, per_class=2, nz=8, nf=4)


def random_teacher(seed: int, arch: str = "conv4", size: int = 16, n_cls: int = 3, head: float = 30.0) -> Teacher:
    """A random teacher with non-trivial running statistics (forward passes in train mode) and a sharp head."""
    torch.manual_seed(seed)
    m = build(arch, n_cls, size, 3, "running").train()
    with torch.no_grad():
        for _ in range(2):
            m(torch.rand(8, 3, size, size) * (1 + seed * 0.5))
        for k, v in m.named_parameters():
            if k.startswith(("head", "fc")):
                v.mul_(head)
    return Teacher(str(seed), arch, size, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "test",
                   [f"class{seed}_{j}" for j in range(n_cls)], {k: v.clone() for k, v in m.state_dict().items()})




@pytest.fixture(scope="module")
def teachers() -> list[Teacher]:
    return [random_teacher(0), random_teacher(1, "resnet10"), random_teacher(2, n_cls=2)]


def test_batched_equals_alone(teachers):
    together = recover_tasks(teachers, [2, 0, 1], TINY, CPU, seed=7)
    assert [t.teacher for t in together] == [2, 0, 1]
    for task in together:
        alone = recover_tasks(teachers, [task.teacher], TINY, CPU, seed=7)[0]
        torch.testing.assert_close(task.images, alone.images, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(task.logits, alone.logits, atol=1e-4, rtol=1e-4)
        assert task.loss == pytest.approx(alone.loss, rel=1e-5)


def test_chunks_and_seeds(teachers):
    same = [random_teacher(0), random_teacher(3), random_teacher(4)]
    full = recover_tasks(same, [0, 1, 2], TINY, CPU, seed=1)
    chunked = recover_tasks(same, [0, 1, 2], TINY, CPU, seed=1, chunk=2)
    for a, b in zip(full, chunked):
        torch.testing.assert_close(a.images, b.images, atol=1e-5, rtol=1e-4)
    other = recover_tasks(same, [0], TINY, CPU, seed=2)[0]
    assert not torch.allclose(other.images, full[0].images)


@pytest.mark.parametrize("batching", ["vmap", "grouped"])
def test_padded_batches_equal_unpadded(batching):
    """pad fills the last batch up to chunk with repeats (one shape for a compiled step); their tasks are dropped."""
    same = [random_teacher(0), random_teacher(3), random_teacher(4)]
    sizes, cfg = {True: [], False: []}, RecoveryConfig(**{**TINY.__dict__, "batching": batching})
    out = {p: recover_tasks(same, [2, 0, 1], cfg, CPU, seed=1, chunk=2, pad=p, on_step=sizes[p].append)
           for p in (True, False)}
    assert set(sizes[True]) == {2} and set(sizes[False]) == {1, 2}
    assert [t.teacher for t in out[True]] == [2, 0, 1]
    for a, b in zip(out[True], out[False]):
        torch.testing.assert_close(a.images, b.images, atol=1e-5, rtol=1e-4)
        assert a.loss == pytest.approx(b.loss, rel=1e-5)


def test_initial_draws_are_each_teachers_stream_whatever_the_threads():
    """The up-front draws are, per teacher and in order, its generator init, Z and each step's crops and flips from
    its own stream: the same numbers drawn one teacher after another or in parallel threads."""
    cfg, n, k = RecoveryConfig(steps=3, per_class=2, nz=8, nf=4), 10, 3
    gen = Generator(16, 3, cfg.nz, cfg.nf)
    ref = {"z": [], "dy": [], "dx": [], "flip": []}
    params = []
    for i in range(k):
        r = teacher_rng(5, i)
        gen.reset_parameters(r)
        params.append({name: p.detach().clone() for name, p in gen.named_parameters()})
        ref["z"].append(torch.randn(n, cfg.nz, generator=r))
        for key in ("dy", "dx", "flip"):
            ref[key].append([])
        for _ in range(cfg.steps):
            ref["dy"][i].append(torch.randint(0, 2 * PAD + 1, (n,), generator=r))
            ref["dx"][i].append(torch.randint(0, 2 * PAD + 1, (n,), generator=r))
            ref["flip"][i].append(torch.rand(n, generator=r) < 0.5)
    threads = torch.get_num_threads()
    try:
        for th in (1, 3):
            torch.set_num_threads(th)
            gp, z, (dy, dx, flip) = initial_draws(Generator(16, 3, cfg.nz, cfg.nf),
                                                  [teacher_rng(5, i) for i in range(k)], n, cfg, CPU)
            assert z.requires_grad and all(v.requires_grad for v in gp.values())
            for i in range(k):
                assert all(torch.equal(gp[name][i], v) for name, v in params[i].items())
                assert torch.equal(z[i].detach(), ref["z"][i])
                for got, key in ((dy, "dy"), (dx, "dx"), (flip, "flip")):
                    assert torch.equal(got[:, i * n:(i + 1) * n], torch.stack(ref[key][i]))
    finally:
        torch.set_num_threads(threads)


def test_recovery_lowers_ce_and_bn_term():
    t = random_teacher(5)  # bn_weight 0.1: for a random teacher the BN term would otherwise swamp the CE
    cfg = RecoveryConfig(steps=30, lr=0.05, per_class=8, nz=16, nf=8, bn_weight=0.1)
    start = recover_tasks([t], [0], RecoveryConfig(**{**cfg.__dict__, "steps": 1}), CPU, seed=0)[0]
    end = recover_tasks([t], [0], cfg, CPU, seed=0)[0]
    ce0, bn0 = recovery_loss(t, start.images, start.labels)
    ce1, bn1 = recovery_loss(t, end.images, end.labels)
    assert ce1 < ce0 and bn1 < bn0
    assert end.loss < start.loss


def test_shapes_labels_logits(teachers):
    cfg = RecoveryConfig(steps=2, per_class=5, nz=8, nf=4, augment=False)
    task = recover_tasks(teachers, [2], cfg, CPU, seed=0)[0]
    assert task.images.shape == (10, 3, 16, 16) and task.images.dtype == torch.float32
    assert task.labels.tolist() == [0] * 5 + [1] * 5 and task.labels.dtype == torch.long
    assert task.logits.shape == (10, 2) and task.teacher == 2
    assert 0 <= task.images.min() and task.images.max() <= 1
    t = teachers[2]
    x = (task.images - torch.tensor(t.mean).view(3, 1, 1)) / torch.tensor(t.std).view(3, 1, 1)
    torch.testing.assert_close(task.logits, t.model()(x), atol=1e-5, rtol=1e-4)
    ce, bn = recovery_loss(t, task.images, task.labels)  # no augmentation: the kept batch's own loss
    assert task.loss == pytest.approx(ce + bn, rel=1e-4)


@pytest.mark.parametrize("size", [32, 84])
def test_generator_shapes_and_range(size):
    g = Generator(size, 3, nz=16, nf=8)
    x = g(torch.randn(5, 16) * 10)
    assert x.shape == (5, 3, size, size)
    assert 0 <= x.min() and x.max() <= 1
    assert g.fc.out_features == 16 * (size // 4) ** 2


def test_generator_init_and_errors():
    g = Generator(32, 1, nz=16, nf=8)
    a = dict(g.named_parameters())
    g.reset_parameters(torch.Generator().manual_seed(3))
    b = {k: v.detach().clone() for k, v in g.named_parameters()}
    g.reset_parameters(torch.Generator().manual_seed(3))
    assert all(torch.equal(b[k], v) for k, v in g.named_parameters())
    assert abs(float(b["bn1.weight"].mean()) - 1) < 0.05 and float(b["conv1.weight"].detach().std()) < 0.03
    assert float(b["bn1.bias"].abs().sum()) == 0 and a["conv3.weight"].shape == (1, 8, 3, 3)
    with pytest.raises(DfmetaError, match="multiple of 4"):
        Generator(30)


def test_augment_crop_and_flip():
    x = torch.rand(2, 3, 8, 8)
    centre = torch.full((2,), 4)
    torch.testing.assert_close(augment(x, centre, centre, torch.tensor([False, True])),
                               torch.stack([x[0], x[1].flip(-1)]))
    shifted = augment(x, torch.zeros(2, dtype=torch.long), centre, torch.tensor([False, False]))
    torch.testing.assert_close(shifted[:, :, 4:], x[:, :, :4])
    assert float(shifted[:, :, :4].abs().sum()) == 0


def test_bn_hooks_removed(teachers):
    m = teachers[0].model()
    with BNStatLoss(m) as bn:
        m(torch.rand(4, 3, 16, 16))
        assert float(bn.pop().detach()) > 0
    assert all(not mod._forward_pre_hooks for mod in m.modules())


def test_bad_config_and_index(teachers):
    with pytest.raises(DfmetaError, match="steps"):
        RecoveryConfig(steps=0)
    with pytest.raises(DfmetaError, match="out of range"):
        recover_tasks(teachers, [3], TINY, CPU, seed=0)
    assert teachers_per_batch(TINY, 32, CPU) == 8


# ---------------------------------------------------------------- fast paths against the plain reference path
def _close_tasks(a, b, atol: float, rtol: float) -> None:
    for x, y in zip(a, b):
        assert x.teacher == y.teacher
        torch.testing.assert_close(x.images, y.images, atol=atol, rtol=rtol)
        torch.testing.assert_close(x.logits, y.logits, atol=atol * 10, rtol=rtol)
        assert x.loss == pytest.approx(y.loss, rel=rtol, abs=atol)


def test_per_index_seeds_equal_separate_calls():
    """Several epochs' tasks recovered together (a teacher twice, two seeds) = each epoch's own call."""
    same = [random_teacher(0), random_teacher(3)]
    together = recover_tasks(same, [0, 1, 0], TINY, CPU, seed=[5, 5, 9])
    first = recover_tasks(same, [0, 1], TINY, CPU, seed=5)
    second = recover_tasks(same, [0], TINY, CPU, seed=9)
    _close_tasks(together, first + second, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(together[0].images, together[2].images)
    with pytest.raises(DfmetaError, match="2 seeds for 3 teachers"):
        recover_tasks(same, [0, 1, 0], TINY, CPU, seed=[1, 2])


@pytest.mark.parametrize("batching,channels_last", [("loop", "off"), ("grouped", "off"), ("grouped", "on")])
def test_batching_modes_equal_vmap(batching, channels_last, teachers):
    """Tolerance float32: the same arithmetic, vmapped, one pass per teacher (loop), or one network of grouped
    convolutions (grouped, in either memory order; a ResNet teacher among them runs under vmap)."""
    same = [random_teacher(0), random_teacher(3), random_teacher(4)]
    cfg = RecoveryConfig(steps=4, per_class=2, nz=8, nf=4)
    fast = RecoveryConfig(**{**cfg.__dict__, "batching": batching, "channels_last": channels_last})
    _close_tasks(recover_tasks(same, [0, 1, 2], fast, CPU, seed=3), recover_tasks(same, [0, 1, 2], cfg, CPU, seed=3),
                 atol=1e-5, rtol=1e-4)
    _close_tasks(recover_tasks(teachers, [1, 0], fast, CPU, seed=3), recover_tasks(teachers, [1, 0], cfg, CPU, seed=3),
                 atol=1e-5, rtol=1e-4)


def test_bf16_autocast_close_to_float32():
    """bf16 autocast of the generator and teacher passes against float32. Stated tolerance: after one step images
    within 5e-3 and the loss within 0.5% (measured: 7e-4, 2e-5); after 20 steps the best loss within 5% of float32's
    (measured 0.4%; the trajectories then drift apart, as any two float orders do) and lower than after one step."""
    t = random_teacher(0)
    one = RecoveryConfig(steps=1, per_class=3, nz=16, nf=8)
    ref = recover_tasks([t], [0], one, CPU, seed=0)[0]
    low = recover_tasks([t], [0], RecoveryConfig(**{**one.__dict__, "amp": "bf16"}), CPU, seed=0)[0]
    torch.testing.assert_close(low.images, ref.images, atol=5e-3, rtol=0)
    assert low.loss == pytest.approx(ref.loss, rel=5e-3)
    many = RecoveryConfig(steps=20, per_class=3, nz=16, nf=8)
    ref20 = recover_tasks([t], [0], many, CPU, seed=0)[0]
    low20 = recover_tasks([t], [0], RecoveryConfig(**{**many.__dict__, "amp": "bf16"}), CPU, seed=0)[0]
    assert low20.loss == pytest.approx(ref20.loss, rel=0.05)
    assert low20.loss < low.loss


def test_fast_settings_defaults():
    from dfmeta.recover import fast_settings
    cfg, gpu = RecoveryConfig(steps=10), torch.device("cuda")
    assert fast_settings(cfg, CPU) == (None, False, "vmap")  # the CPU path is the plain float32 reference
    assert fast_settings(cfg, gpu) == (torch.bfloat16, True, "grouped")
    assert fast_settings(cfg, gpu, extra=True) == (torch.bfloat16, False, "grouped")
    plain = RecoveryConfig(steps=10, amp="off", graph="off", batching="vmap")
    assert fast_settings(plain, gpu) == (None, False, "vmap")
    with pytest.raises(DfmetaError, match="field 'amp'"):
        RecoveryConfig(amp="fp16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a CUDA device")
def test_cuda_graph_equals_eager_on_cuda():
    """On a GPU: the graph-replayed steps give the eager steps' result (float32, TF32 off)."""
    same = [random_teacher(0), random_teacher(3)]
    dev = torch.device("cuda")
    cfg = RecoveryConfig(steps=8, per_class=3, nz=16, nf=8, amp="off", compile="off")  # compiled: the next tests
    torch.backends.cudnn.allow_tf32 = False
    eager = recover_tasks(same, [0, 1], RecoveryConfig(**{**cfg.__dict__, "graph": "off"}), dev, seed=2)
    graph = recover_tasks(same, [0, 1], RecoveryConfig(**{**cfg.__dict__, "graph": "on"}), dev, seed=2)
    _close_tasks(graph, eager, atol=1e-4, rtol=1e-3)


def test_grouped_upsample_keeps_channels_last():
    from dfmeta.nets.grouped import _upsample2
    x = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    up = _upsample2(x)
    assert torch.equal(up, torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest"))
    assert up.is_contiguous(memory_format=torch.channels_last) and not up.is_contiguous()


def test_upsample2_is_nearest_interpolation():
    from torch.func import vmap

    from dfmeta.nets.generator import upsample2
    x = torch.randn(2, 3, 4, 5, 6, requires_grad=True)
    want = torch.stack([torch.nn.functional.interpolate(xi, scale_factor=2, mode="nearest") for xi in x])
    got = vmap(upsample2)(x)
    assert torch.equal(got, want)
    w = torch.randn_like(want)
    (g_want,) = torch.autograd.grad((want * w).sum(), x)
    (g_got,) = torch.autograd.grad((got * w).sum(), x)
    torch.testing.assert_close(g_got, g_want)


def _compiled_vs_eager(dev: torch.device, **kw) -> tuple[list, list]:
    same = [random_teacher(0), random_teacher(3), random_teacher(4)]
    cfg = RecoveryConfig(steps=4, per_class=2, nz=8, nf=4, batching="grouped", compile="off", **kw)
    eager = recover_tasks(same, [0, 1, 2], cfg, dev, seed=3)
    compiled = recover_tasks(same, [0, 1, 2], RecoveryConfig(**{**cfg.__dict__, "compile": "on"}), dev, seed=3)
    return compiled, eager


def test_compiled_step_equals_eager(monkeypatch):
    """compile on: the grouped forward pass under torch.compile gives the eager grouped result (float32 tolerance, as
    the batching modes); it really ran compiled (no fallback), and a second call with other teachers reuses it."""
    import torch._dynamo.utils as dynamo_utils

    import dfmeta.recover as rec
    monkeypatch.setattr(rec, "_COMPILED", {})
    compiled, eager = _compiled_vs_eager(CPU)
    _close_tasks(compiled, eager, atol=1e-5, rtol=1e-4)
    assert rec._COMPILED["fn"] is not rec._step_loss
    graphs = dynamo_utils.counters["stats"]["unique_graphs"]
    again = recover_tasks([random_teacher(5), random_teacher(6), random_teacher(7)], [2, 1, 0],
                          RecoveryConfig(steps=4, per_class=2, nz=8, nf=4, batching="grouped", compile="on"), CPU, 1)
    assert len(again) == 3 and dynamo_utils.counters["stats"]["unique_graphs"] == graphs  # no recompilation


def test_compiled_channels_last_equals_eager(monkeypatch):
    """compile on with channels_last activations: the eager channels_last grouped result (float32 tolerance)."""
    import dfmeta.recover as rec
    monkeypatch.setattr(rec, "_COMPILED", {})
    compiled, eager = _compiled_vs_eager(CPU, channels_last="on")
    assert rec._COMPILED["fn"] is not rec._step_loss
    _close_tasks(compiled, eager, atol=1e-5, rtol=1e-4)


def test_compile_failure_falls_back_to_eager(monkeypatch, capsys):
    import dfmeta.recover as rec

    def broken(fn, **kw):
        def fail(*a, **k):
            raise RuntimeError("no compiler here")
        return fail
    monkeypatch.setattr(rec, "_COMPILED", {})
    monkeypatch.setattr(torch, "compile", broken)
    compiled, eager = _compiled_vs_eager(CPU)
    _close_tasks(compiled, eager, atol=0, rtol=0)
    assert "torch.compile of the recovery step failed (RuntimeError: no compiler here)" in capsys.readouterr().out
    with pytest.raises(DfmetaError, match="field 'compile'"):
        RecoveryConfig(compile="max")


def test_compile_auto_is_on_for_cuda_and_off_for_a_one_off_recovery():
    """compile auto: compiled on CUDA (measured faster there), never on the CPU; a recovery run once (the grouping's)
    does not compile under auto, while an explicit choice is kept."""
    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    assert compiles(RecoveryConfig(), cuda) and not compiles(RecoveryConfig(), CPU)
    assert compiles(RecoveryConfig(compile="on"), CPU) and not compiles(RecoveryConfig(compile="off"), cuda)
    assert not compiles(once(RecoveryConfig()), cuda)
    assert [once(RecoveryConfig(compile=c)).compile for c in ("auto", "on", "off")] == ["off", "on", "off"]
    assert once(RecoveryConfig(steps=7, nf=5)) == RecoveryConfig(steps=7, nf=5, compile="off")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_bf16_graph_on_cuda(monkeypatch):
    """On a GPU: compiled + bf16 + CUDA-graph steps against the eager bf16 graph steps (bf16 tolerance)."""
    import dfmeta.recover as rec
    monkeypatch.setattr(rec, "_COMPILED", {})
    compiled, eager = _compiled_vs_eager(torch.device("cuda"), amp="bf16", graph="on")
    assert rec._COMPILED["fn"] is not rec._step_loss
    _close_tasks(compiled, eager, atol=2e-2, rtol=2e-2)
