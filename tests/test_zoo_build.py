"""Zoo build: the batched trainer against plain PyTorch, seeded plans, resume, shards, determinism, the CLI."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch
import torch.nn.functional as F

from dfmeta.cli import main
from dfmeta.data.dataset import FewShotSplit
from dfmeta.data.embedded import EMBEDDED_MEAN, EMBEDDED_STD, embedded_class
from dfmeta.data.episodes import to_input
from dfmeta.errors import DfmetaError
from dfmeta.nets import build
from dfmeta.zoo import load_zoo
from dfmeta.zoo.build import (ZooRecipe, build_zoo, epoch_order, initial_state, parse_shard, plan_blocks, plan_zoo,
                              split_rows, train_group)

TINY = ZooRecipe(teachers=3, ways=3, epochs=2, batch_size=24)


def tiny_split(per_class: int = 20, size: int = 16) -> FewShotSplit:
    per = [embedded_class(0, c, per_class, size) for c in range(8)]
    return FewShotSplit.from_classes("tiny/train", per, [f"c{c}" for c in range(8)], EMBEDDED_MEAN, EMBEDDED_STD)


@pytest.fixture(scope="module")
def split() -> FewShotSplit:
    return tiny_split()


def reference(plan, split, recipe, seed):
    """One teacher trained alone the ordinary way: nn.Module in train mode, torch.optim, clip_grad_norm_."""
    m = build(plan.arch, recipe.ways, split.image_size, split.channels, "running")
    m.load_state_dict(initial_state(plan.arch, recipe.ways, split.image_size, split.channels, seed, plan.index))
    sched = None
    if recipe.optimizer_for(plan.arch) == "adam":
        opt = torch.optim.Adam(m.parameters(), lr=recipe.lr)
    else:
        opt = torch.optim.SGD(m.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(recipe.milestones), recipe.gamma)
    tr, trl, ho, hol = split_rows(split, plan.classes, recipe.heldout_fraction)
    images = torch.from_numpy(split.images)

    def x(rows):
        return to_input(images[torch.from_numpy(rows)], split.mean, split.std)

    best, best_acc = None, -1.0
    for epoch in range(recipe.epochs):
        m.train()
        order = epoch_order(seed, plan.index, epoch, len(tr))
        for lo in range(0, len(tr), recipe.batch_size):
            s = order[lo: lo + recipe.batch_size]
            loss = F.cross_entropy(m(x(tr[s])), torch.from_numpy(trl[s]))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), recipe.grad_clip)
            opt.step()
        if sched is not None:
            sched.step()
        m.eval()
        with torch.no_grad():
            acc = (m(x(ho)).argmax(-1) == torch.from_numpy(hol)).float().mean().item() * 100
        if acc > best_acc:
            best_acc, best = acc, {k: v.clone() for k, v in m.state_dict().items()}
    return best, best_acc


def assert_close_state(a, b, skip=(), atol=2e-5):
    for k in a:
        if not any(s in k for s in skip):
            torch.testing.assert_close(a[k].double(), b[k].double(), atol=atol, rtol=1e-4, msg=k)


def test_batched_equals_alone_sgd(split):
    recipe = dataclasses.replace(TINY, optimizer="sgd", milestones=(1,))
    plans = plan_zoo(split.n_classes, recipe, 0)
    out = train_group(plans, split, recipe, 0)
    for i in (0, 2):
        ref, acc = reference(plans[i], split, recipe, 0)
        assert out[i].heldout_acc == pytest.approx(acc, abs=0.01)
        assert_close_state(ref, out[i].state)


def test_batched_equals_alone_adam(split):
    # The conv bias before BN gets a pure round-off gradient, which Adam normalises into lr-sized steps; it and the
    # running mean it shifts are checked only loosely. Every other tensor matches plain PyTorch.
    plans = plan_zoo(split.n_classes, TINY, 0)
    out = train_group(plans, split, TINY, 0)
    ref, acc = reference(plans[1], split, TINY, 0)
    assert out[1].best_epoch == 0  # an earlier epoch is kept: a copy, not the live (last-epoch) weights
    assert out[1].heldout_acc == pytest.approx(acc, abs=0.01)
    assert_close_state(ref, out[1].state, skip=("conv.bias", "running_mean"))
    assert_close_state(ref, out[1].state, atol=0.2)


def test_resnet_teachers_sgd_milestones():
    split = tiny_split(10, 8)
    recipe = dataclasses.replace(TINY, teachers=2, epochs=2, archs=("resnet10",), milestones=(1,), batch_size=64,
                                 optimizer="auto")
    plans = plan_zoo(split.n_classes, recipe, 0)
    assert recipe.optimizer_for("resnet10") == "sgd"  # auto: the authors' code
    assert TINY.optimizer_for("resnet10") == TINY.optimizer_for("conv4") == "adam"  # the default: the paper
    out = train_group(plans, split, recipe, 0)
    ref, _ = reference(plans[1], split, recipe, 0)
    assert_close_state(ref, out[1].state, atol=1e-4)


def test_plans_are_seeded_per_teacher(split):
    multi = dataclasses.replace(TINY, teachers=12, archs=("conv4", "resnet10", "resnet18"))
    a = plan_zoo(split.n_classes, multi, 5)
    b = plan_zoo(split.n_classes, dataclasses.replace(multi, teachers=20), 5)
    assert a == b[:12]
    assert {p.arch for p in b} == {"conv4", "resnet10", "resnet18"}
    assert all(len(set(p.classes)) == 3 for p in a)
    assert a != plan_zoo(split.n_classes, multi, 6)
    blocks = plan_blocks(split, multi, 5, 2)
    assert all(len({p.arch for p in blk}) == 1 and len(blk) <= 2 for blk in blocks)
    assert sorted(p.index for blk in blocks for p in blk) == list(range(12))


def _states(zoo_dir):
    return {t.id: t.state for t in load_zoo(zoo_dir).teachers}


def test_build_resume_shards_determinism(split, tmp_path):
    recipe = dataclasses.replace(TINY, epochs=1)
    kw = dict(split=split, dataset="tiny", recipe=recipe, seed=0, teachers_at_once=2, progress=False)
    rep = build_zoo(tmp_path / "one", **kw)
    assert sorted(rep.trained) == ["0", "1", "2"] and rep.skipped == []
    zoo = load_zoo(tmp_path / "one")
    assert [t.id for t in zoo.teachers] == ["0", "1", "2"]
    assert all(t.heldout_acc is not None and len(t.class_names) == 3 for t in zoo.teachers)
    one = _states(tmp_path / "one")
    # shards: each writes its own teachers; together they equal one process, bit for bit
    r0 = build_zoo(tmp_path / "sh", shard=(0, 2), **kw)
    r1 = build_zoo(tmp_path / "sh", shard=(1, 2), **kw)
    assert sorted(r0.trained + r1.trained) == ["0", "1", "2"] and not set(r0.trained) & set(r1.trained)
    sharded = _states(tmp_path / "sh")
    assert sharded.keys() == one.keys()
    for tid in one:
        for k in one[tid]:
            assert torch.equal(one[tid][k], sharded[tid][k]), (tid, k)
    # resume: finished teachers are skipped, a removed one is retrained identically
    (tmp_path / "one" / "model_2.json").unlink()
    before = (tmp_path / "one" / "model_0.safetensors").stat().st_mtime_ns
    rep = build_zoo(tmp_path / "one", **kw)
    assert rep.trained == ["2"] and rep.skipped == ["0", "1"]
    assert (tmp_path / "one" / "model_0.safetensors").stat().st_mtime_ns == before
    again = _states(tmp_path / "one")
    assert all(torch.equal(again["2"][k], one["2"][k]) for k in one["2"])
    assert build_zoo(tmp_path / "one", **kw).trained == []


def test_build_refuses_other_settings(split, tmp_path):
    kw = dict(split=split, dataset="tiny", seed=0, teachers_at_once=2, progress=False)
    build_zoo(tmp_path, recipe=dataclasses.replace(TINY, teachers=1, epochs=1), **kw)
    with pytest.raises(DfmetaError, match="epochs=1, now 2"):
        build_zoo(tmp_path, recipe=dataclasses.replace(TINY, teachers=1), **kw)
    grown = build_zoo(tmp_path, recipe=dataclasses.replace(TINY, teachers=2, epochs=1), **kw)
    assert grown.skipped == ["0"] and grown.trained == ["1"]


def test_build_logs_a_line_per_teacher(split, tmp_path, capsys):
    """Outside a terminal (no progress bar) a build still says what it finished: one line per teacher."""
    kw = dict(split=split, dataset="tiny", recipe=dataclasses.replace(TINY, epochs=1), seed=0, teachers_at_once=2)
    build_zoo(tmp_path, shard=(0, 2), **kw)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("teacher ")]
    assert [ln.split()[1] for ln in lines] == ["0", "1"]  # block 0 of this tiny zoo holds teachers 0 and 1
    assert all(re.search(r"held-out \d+\.\d%, epoch 1 of 1 kept \[\d/2, \d+ s\]", ln) for ln in lines), lines
    build_zoo(tmp_path, **kw)  # resume: the rest of the zoo
    err = capsys.readouterr().err
    assert "2 teachers of this shard already done, 1 to train" in err
    assert [ln.split()[1] for ln in err.splitlines() if ln.startswith("teacher ")] == ["2"]
    build_zoo(tmp_path, progress=False, **kw)
    assert capsys.readouterr().err == ""


def test_parse_shard(monkeypatch):
    assert parse_shard("1/4") == (1, 4)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert parse_shard("") == (2, 3)
    for bad in ("4/4", "x", "1/0"):
        with pytest.raises(DfmetaError, match="shard"):
            parse_shard(bad)


def test_cli_build_on_embedded(tmp_path, capsys):
    args = ["zoo", "build", "--zoo", str(tmp_path), "--teachers", "2", "--epochs", "1", "--image-size", "16",
            "--device", "cpu"]
    assert main(args) == 0
    assert "trained 2 teachers" in capsys.readouterr().out
    man = json.loads((tmp_path / "manifest.json").read_text())
    assert [m["id"] for m in man["models"]] == ["0", "1"] and man["dataset"] == "embedded"
    assert main(args) == 0
    assert "trained 0 teachers, 2 already done" in capsys.readouterr().out
    assert main(args[:-2] + ["--archs", "vgg"]) == 2
    assert "unknown architecture 'vgg'" in capsys.readouterr().err


def test_an_older_build_of_conv4_teachers_resumes_under_the_new_optimizer_default(split, tmp_path):
    """A zoo built when the default was auto (Adam for Conv4) resumes under today's adam default; a ResNet zoo built
    under auto (SGD) does not, and says which setting differs."""
    kw = dict(split=split, dataset="tiny", seed=0, teachers_at_once=2, progress=False)
    build_zoo(tmp_path / "c", recipe=dataclasses.replace(TINY, teachers=1, epochs=1, optimizer="auto"), **kw)
    assert build_zoo(tmp_path / "c", recipe=dataclasses.replace(TINY, teachers=2, epochs=1), **kw).trained == ["1"]
    resnets = dataclasses.replace(TINY, teachers=1, epochs=1, archs=("resnet10",), batch_size=64)
    build_zoo(tmp_path / "r", recipe=dataclasses.replace(resnets, optimizer="auto"), **kw)
    with pytest.raises(DfmetaError, match="optimizer='auto', now 'adam'"):
        build_zoo(tmp_path / "r", recipe=resnets, **kw)


def test_a_shard_without_blocks_is_refused_up_front(split, tmp_path):
    kw = dict(split=split, dataset="tiny", recipe=dataclasses.replace(TINY, epochs=1), seed=0, progress=False)
    with pytest.raises(DfmetaError, match="shard 2/3: no teachers to train: 3 teachers in blocks of at most 2 "
                                          "\\(--teachers-at-once\\) make 2 block\\(s\\)"):
        build_zoo(tmp_path, shard=(2, 3), teachers_at_once=2, **kw)
    assert not list(tmp_path.glob("model_*"))


def test_cli_build_takes_its_thread_count(tmp_path, monkeypatch):
    import dfmeta.commands.zoo as zoo_cmd
    seen = []
    monkeypatch.setattr(zoo_cmd, "set_threads", seen.append)
    assert main(["zoo", "build", "--zoo", str(tmp_path), "--teachers", "1", "--epochs", "1", "--image-size", "16",
                 "--device", "cpu", "--threads", "1"]) == 0
    assert seen == [1]
