"""Task grouping (Eq. 5-7): exact per-sample Fisher, dissimilarity W, spectral clustering, probe loading, cache, CLI."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import adjusted_rand_score
from torch import nn
from torch.func import functional_call, grad, vmap

from dfmeta.cli import main
from dfmeta.commands.group import heatmap_png
from dfmeta.data.embedded import embedded_class
from dfmeta.errors import DfmetaError
from dfmeta.grouping import (GroupingConfig, _batch_stats, _fisher_sums, dissimilarity, fisher_embeddings,
                             group_teachers, load_probe, spectral_groups)
from dfmeta.nets import build
from dfmeta.recover import RecoveredTask
from dfmeta.zoo.format import Zoo, save_teacher, write_manifest
from test_recover import random_teacher

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")


def planted(groups: list[int], inside: float, across: float) -> np.ndarray:
    g = np.array(groups)
    m = np.where(g[:, None] == g[None], inside, across)
    np.fill_diagonal(m, 0)
    return m


def test_spectral_similarity_recovers_blocks():
    truth = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    W = planted(truth, 0.1, 0.9)  # similar within blocks: S = 1 - W is block-structured
    labels = spectral_groups(W, 3, "similarity")
    assert adjusted_rand_score(truth, labels) == 1.0
    assert labels[0] == 0  # numbered by first appearance


def test_spectral_dissimilarity_groups_dissimilar_models():
    truth = [0, 1, 0, 1, 0, 1, 0, 1]
    W = planted(truth, 0.9, 0.1)  # models of a planted group are mutually dissimilar
    assert adjusted_rand_score(truth, spectral_groups(W, 2, "dissimilarity")) == 1.0
    assert adjusted_rand_score(truth, spectral_groups(W, 2, "similarity")) < 1.0
    with pytest.raises(DfmetaError, match="groups"):
        spectral_groups(W, 9)


def test_fewer_groups_takes_the_most_groups_of_enough_members():
    from dfmeta.grouping import fewer_groups
    truth = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2]  # three planted groups of 4 mutually dissimilar models
    W = planted(truth, 0.9, 0.1)
    assert adjusted_rand_score(truth, fewer_groups(W, 3, 4)) == 1.0  # c = 3 already gives groups of 4
    four = spectral_groups(W, 4)
    assert np.bincount(four).min() < 4  # c = 4 cannot give 4 members each (12 models)...
    assert adjusted_rand_score(truth, fewer_groups(W, 4, 4)) == 1.0  # ...so c = 3
    assert not fewer_groups(W, 3, 5).any()  # c = 2 keeps the planted blocks whole (8 + 4): one group
    assert not fewer_groups(W, 3, 13).any()  # even one group is too small: still one group, the zoo
    halves = [0, 1] * 6  # two planted groups of 6: c = 5, 4, 3 split one, c = 2 finds them
    assert adjusted_rand_score(halves, fewer_groups(planted(halves, 0.9, 0.1), 5, 5)) == 1.0


def test_within_group_overlap():
    from dfmeta.grouping import within_group_overlap
    ov = np.array([[5, 2, 0, 0], [2, 5, 0, 1], [0, 0, 5, 1], [0, 1, 1, 5]])  # pairs (i<j): 2 0 0 0 1 1, mean 2/3
    assert within_group_overlap(np.array([0, 1, 0, 1]), ov) == pytest.approx(0.75)  # pairs (0,2), (1,3): 0, 1
    assert within_group_overlap(np.array([0, 0, 1, 1]), ov) == pytest.approx(2.25)  # pairs (0,1), (2,3): 2, 1
    assert within_group_overlap(np.array([0, 1, 2, 3]), ov) is None  # no group of two
    assert within_group_overlap(np.array([0, 0, 1, 1]), np.eye(4) * 5) is None  # no pair shares a class
    from dfmeta.grouping import overlap_by_chance
    lo, hi = overlap_by_chance(np.array([0, 1, 0, 1]), ov, draws=200)
    assert (lo, hi) == (0, pytest.approx(2.25))  # the three ways to split 4 into 2 + 2 give 0.75, 2.25 and 0
    with pytest.raises(DfmetaError, match="undefined"):
        overlap_by_chance(np.array([0, 1, 2, 3]), ov)


def test_grouping_stability_tells_firm_groups_from_fragile_ones():
    from dfmeta.grouping import grouping_stability
    truth = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2]
    W = planted(truth, 0.9, 0.1)
    assert grouping_stability(W, spectral_groups(W, 3)) == 1.0  # planted groups: every draw finds them
    four = planted([0, 1, 2, 3] * 3, 0.9, 0.1)  # four equal groups asked into three: which two join is a toss-up
    assert grouping_stability(four, spectral_groups(four, 3)) < 0.9
    assert grouping_stability(W, np.zeros(12, np.int64)) == 1.0  # one group is always the same


def test_dissimilarity_properties():
    torch.manual_seed(0)
    e = [[torch.rand(4, 3), torch.rand(5)] for _ in range(3)]
    e.append([t.clone() for t in e[0]])
    e.append([torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]]), torch.zeros(5)])
    e.append([torch.tensor([[0.0, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]]), torch.zeros(5)])
    for cosine in ("whole", "layers"):
        W = dissimilarity(e, cosine=cosine)
        assert np.allclose(W, W.T) and np.all(np.diag(W) == 0) and W.min() >= 0 and W.max() <= 1
        assert W[0, 3] == pytest.approx(0, abs=1e-7)  # identical Fisher
        assert W[0, 1] > 0
    # disjoint support in layer 0 (cos 0), all-zero layer 1 (cos 1 on its own; nothing in the whole embedding)
    assert dissimilarity(e, cosine="layers")[4, 5] == pytest.approx(0.5)
    assert dissimilarity(e, cosine="whole")[4, 5] == pytest.approx(1.0)


def test_dissimilarity_forms_match_their_formulas():
    """whole: Eq. 6 as the paper writes it, one cosine over the concatenated embedding; layers: the authors' code,
    the mean of the per-layer cosines."""
    torch.manual_seed(1)
    e = [[torch.rand(6, 2) ** 3, torch.rand(40) ** 3, torch.rand(3) ** 3] for _ in range(4)]

    def cos(f: torch.Tensor, g: torch.Tensor) -> float:
        a, b = f / (f + g), g / (f + g)
        return float(a.double() @ b.double() / (a.double().norm() * b.double().norm()))
    whole = np.array([[0 if i == j else 1 - cos(torch.cat([t.flatten() for t in e[i]]),
                                                torch.cat([t.flatten() for t in e[j]]))
                       for j in range(4)] for i in range(4)])
    layers = np.array([[0 if i == j else 1 - np.mean([cos(e[i][k].flatten(), e[j][k].flatten()) for k in range(3)])
                        for j in range(4)] for i in range(4)])
    assert np.allclose(dissimilarity(e), whole, atol=1e-6)  # the default is the paper's
    assert np.allclose(dissimilarity(e, cosine="layers"), layers, atol=1e-6)
    assert not np.allclose(whole, layers, atol=1e-2)
    from dfmeta.grouping import cache_key
    assert "fisher_cosine" not in cache_key(GroupingConfig(fisher_cosine="layers"), ["a"])  # older caches: layers
    assert cache_key(GroupingConfig(), ["a"]) != cache_key(GroupingConfig(fisher_cosine="layers"), ["a"])
    with pytest.raises(DfmetaError, match="fisher_cosine"):
        GroupingConfig(fisher_cosine="mean")  # type: ignore[arg-type]


def tiny_probe() -> nn.Module:
    """Every layer kind and geometry of the registry's probes: 7x7 stride-2 stem, dilation, BN, biases, linear head."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 7, 2, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 5, 3, 1, 2, dilation=2), nn.BatchNorm2d(5), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 6)).eval().requires_grad_(False)


@pytest.mark.parametrize("make", [tiny_probe, lambda: build("conv4", 1000, 16, 3, "running").eval()])
def test_fisher_is_exact_per_sample(make):
    probe = make().requires_grad_(False)
    x, y = torch.randn(5, 3, 16, 16), torch.tensor([0, 1, 2, 3, 0])
    stats, logits = _batch_stats(probe, x)
    sums = _fisher_sums(probe, x, y, stats)
    mine = [f for m in sums for f in sums[m]]
    # reference: per-sample grads (vmap) with BatchNorm fixed at the batch's statistics
    names = {m: n for n, m in probe.named_modules()}
    bufs = dict(probe.named_buffers())
    for m, (mu, var) in stats.items():
        bufs[f"{names[m]}.running_mean"], bufs[f"{names[m]}.running_var"] = mu, var
    params = dict(probe.named_parameters())

    def logp(p, xi, yi):
        return -F.cross_entropy(functional_call(probe, {**bufs, **p}, (xi[None],)), yi[None])

    ref = vmap(grad(logp), in_dims=(None, 0, 0))(params, x, y)
    assert len(mine) == len(params)
    for a, (k, g) in zip(mine, ref.items()):
        torch.testing.assert_close(a, g.pow(2).sum(0), rtol=1e-4, atol=1e-9, msg=k)
    # the fixed-statistics forward is the train-mode forward
    torch.testing.assert_close(functional_call(probe, {**bufs, **params}, (x,)), probe.train()(x), rtol=1e-4,
                               atol=1e-5)
    torch.testing.assert_close(logits, probe(x), rtol=1e-4, atol=1e-5)


def pattern_task(classes: list[int], part: int, teacher: int, per: int = 8, size: int = 16) -> RecoveredTask:
    """A stand-in recovered task: embedded-dataset images of ``classes`` (instances ``part``), labels 0..N-1."""
    imgs = np.concatenate([embedded_class(0, c, per * (part + 1), size)[per * part:] for c in classes])
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
    return RecoveredTask(x, torch.arange(len(classes)).repeat_interleave(per), torch.zeros(0), teacher, 0.0)


@pytest.fixture(scope="module")
def tasks() -> list[RecoveredTask]:
    return [pattern_task([0, 1, 2], 0, 0), pattern_task([0, 1, 2], 1, 1), pattern_task([3, 4, 5], 0, 2),
            pattern_task([6, 2, 7], 0, 3)]


def test_same_teacher_tasks_are_closer(tasks):
    probe, desc = load_probe(GroupingConfig(), CPU, 16)
    assert "fallback" in desc
    e = fisher_embeddings(tasks, probe, CPU)
    assert len(e) == 4 and all(f.dtype == torch.float32 for f in e[0])
    W = dissimilarity(e)
    assert W[0, 1] < min(W[0, 2], W[0, 3], W[1, 2], W[1, 3])
    sub = dissimilarity(fisher_embeddings(tasks, probe, CPU, samples=12, chunk=5))
    assert sub[0, 1] < min(sub[0, 2], sub[1, 2])


def test_fisher_labels_probe_ignores_the_order_of_a_teachers_classes(tasks):
    """fisher_labels=probe: y is the probe's prediction, so relabelling a task's classes leaves its embedding as it
    is; with the task's labels (the authors') the embedding changes."""
    from dfmeta.grouping import cache_key
    probe, _ = load_probe(GroupingConfig(), CPU, 16)
    t = tasks[0]
    relabelled = RecoveredTask(t.images, (t.labels + 1) % 3, t.logits, t.teacher, t.loss)
    for labels, same in (("probe", True), ("task", False)):
        a, b = (fisher_embeddings([x], probe, CPU, labels=labels)[0] for x in (t, relabelled))
        assert all(torch.equal(u, v) for u, v in zip(a, b)) == same, labels
    W = dissimilarity(fisher_embeddings(tasks, probe, CPU, labels="probe"))
    assert W.shape == (4, 4) and np.allclose(W, W.T) and (W[~np.eye(4, dtype=bool)] > 0).all()
    # the default leaves the cache key of runs written before the field existed unchanged
    assert "fisher_labels" not in cache_key(GroupingConfig(), ["a"])
    assert cache_key(GroupingConfig(fisher_labels="probe"), ["a"]) != cache_key(GroupingConfig(), ["a"])
    with pytest.raises(DfmetaError, match="fisher_labels"):
        GroupingConfig(fisher_labels="sampled")  # type: ignore[arg-type]


def test_probe_weights(tmp_path):
    ref = build("resnet10", 7, 32, 3, "running")
    state = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pth")
    cfg = GroupingConfig(probe="resnet10", probe_weights=str(tmp_path / "w.pth"))
    probe, desc = load_probe(cfg, CPU)
    assert "w.pth" in desc and probe.fc.out_features == 7
    assert torch.equal(probe.conv1.weight, ref.conv1.weight)
    torch.save({k: v for k, v in state.items() if k != "fc.bias"}, tmp_path / "missing.pth")
    with pytest.raises(DfmetaError, match="missing.*fc.bias"):
        load_probe(GroupingConfig(probe="resnet10", probe_weights=str(tmp_path / "missing.pth")), CPU)
    torch.save({**state, "conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "shape.pth")
    with pytest.raises(DfmetaError, match="conv1.weight has shape"):
        load_probe(GroupingConfig(probe="resnet10", probe_weights=str(tmp_path / "shape.pth")), CPU)
    conv4 = build("conv4", 160, 32, 3, "running")  # e.g. a dfmeta teacher trained on the embedded dataset
    from safetensors.torch import save_file
    save_file(conv4.state_dict(), str(tmp_path / "conv4.safetensors"))
    probe, desc = load_probe(GroupingConfig(probe="conv4", probe_weights=str(tmp_path / "conv4.safetensors")), CPU)
    assert "160-way" in desc and probe.head.out_features == 160
    assert torch.equal(probe.head.weight, conv4.head.weight)
    (tmp_path / "junk.pth").write_bytes(b"junk")
    for bad in ("junk.pth", "absent.pth"):
        with pytest.raises(DfmetaError):
            load_probe(GroupingConfig(probe_weights=str(tmp_path / bad)), CPU)
    with pytest.raises(DfmetaError, match="mode"):
        GroupingConfig(mode="random")


def fake_zoo(n: int) -> Zoo:
    return Zoo(None, [random_teacher(i, size=16) for i in range(n)])  # type: ignore[arg-type]


def test_group_teachers_and_cache(tasks, tmp_path):
    zoo = fake_zoo(4)
    cfg = GroupingConfig(groups=2)
    labels, W, info = group_teachers(zoo, tasks[::-1], cfg, CPU, cache=tmp_path)
    assert labels.shape == (4,) and W.shape == (4, 4) and not info["cached"] and info["embeddings_saved"]

    def boom():
        raise AssertionError("the cache should have been used")

    again, W2, info2 = group_teachers(zoo, boom, GroupingConfig(groups=2, mode="similarity"),
                                      CPU, cache=tmp_path)
    assert info2["cached"] and np.array_equal(W, W2) and info2["probe"] == info["probe"]
    assert again[0] == again[1]  # the two tasks of one teacher's classes land together by similarity
    with np.load(tmp_path / "fisher.npz") as z:
        assert z["fisher"].shape[0] == 4 and z["W"].shape == (4, 4)
    with pytest.raises(DfmetaError, match="larger than the zoo"):
        group_teachers(zoo, tasks, GroupingConfig(groups=5), CPU)
    with pytest.raises(DfmetaError, match="one recovered task per teacher"):
        group_teachers(zoo, tasks[:3], cfg, CPU)


def test_heatmap_png():
    W = planted([0, 1, 0, 1], 0.9, 0.1)
    img = Image.open(io.BytesIO(heatmap_png(W, np.array([0, 1, 0, 1]), cell=5)))
    assert img.size == (20, 20) and img.mode == "RGB"
    assert img.getpixel((9, 2)) == (255, 255, 255)  # the border between the two groups


def test_group_command(tmp_path, capsys, monkeypatch):
    import dfmeta.commands.group as group_command
    recover, compile_settings = group_command.recover_tasks, []

    def spy(teachers, indices, cfg, *a, **kw):
        compile_settings.append(cfg.compile)
        return recover(teachers, indices, cfg, *a, **kw)
    monkeypatch.setattr(group_command, "recover_tasks", spy)
    zoo_dir = tmp_path / "zoo"
    write_manifest(zoo_dir, [save_teacher(zoo_dir, random_teacher(i, size=16)) for i in range(3)])
    args = ["group", "--zoo", str(zoo_dir), "--groups", "2", "--steps", "2", "--per-class", "2", "--nz", "8",
            "--nf", "4", "--device", "cpu", "--out-dir", str(tmp_path / "runs")]
    assert main(args) == 0
    run = next((tmp_path / "runs").iterdir())
    doc = json.loads((run / "groups.json").read_text())
    assert set(doc["labels"]) == {0, 1} and doc["teacher_ids"] == ["0", "1", "2"]
    assert sum(len(g) for g in doc["members"]) == 3 and "fallback" in doc["probe"]
    assert (run / "W.png").is_file() and (run / "fisher.npz").is_file()
    assert compile_settings == ["off"]  # a one-off recovery: compile auto does not compile it (recover.once)
    out = capsys.readouterr().out
    assert "group 0" in out and "class0_0" in out and "stability: adjusted Rand index" in out
    assert -0.5 <= doc["stability"] <= 1.0  # an adjusted Rand index
    assert doc["fisher_labels"] == "task" and doc["within_group_overlap"] is None  # the teachers share no class
    assert main(args + ["--run-dir", str(run), "--mode", "similarity"]) == 0
    assert "(cached W)" in capsys.readouterr().out
    assert main(args + ["--run-dir", str(run), "--fisher-labels", "probe"]) == 0  # another W: not the cached one
    assert "(cached W)" not in capsys.readouterr().out
    assert json.loads((run / "groups.json").read_text())["fisher_labels"] == "probe"
    assert main(args[:3] + ["--groups", "4"]) == 2
    assert "larger than the zoo" in capsys.readouterr().err
    assert main(args + ["--probe-weights", str(tmp_path / "none.pth")]) == 2
    assert "not found" in capsys.readouterr().err
