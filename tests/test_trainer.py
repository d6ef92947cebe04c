"""The TGR trainer end to end at toy scale: determinism, exact resume after a stop, honest selection, bad input."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import make_zoo

from dfmeta.config import make, replace
from dfmeta.errors import DfmetaError
from dfmeta.meta.trainer import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 16


def tiny(zoo: Path, out: Path, **kw) -> TrainConfig:
    base = dict(dataset="embedded", image_size=SIZE, zoo=str(zoo), out_dir=str(out), device="cpu", epochs=4,
                val_every=2, teachers_per_epoch=2, groups=2, small_groups="merge", rec_steps=2, rec_per_class=2,
                rec_nf=8, val_episodes=3, episodes=3, shots=(1,), meta_batch=2, replay_max_batches=2,
                fisher_samples=2, replay_queries=1, eval_steps=2)
    base.update(kw)
    return make(TrainConfig, base)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    return make_zoo(tmp_path_factory.mktemp("zoo"))


def run_dir(out: Path) -> Path:
    (d,) = [p for p in out.iterdir() if p.is_dir()]
    return d


def final_state(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir(out) / "checkpoint.pt", weights_only=False)["params"]


def test_resume_after_stop_equals_uninterrupted(zoo, tmp_path):
    full = train(tiny(zoo, tmp_path / "a"))
    stopped = train(tiny(zoo, tmp_path / "b", stop_after=3))
    assert stopped == {"stopped_at": 3}
    resumed = train(make(TrainConfig, {"resume": str(run_dir(tmp_path / "b")), "device": "cpu"}))
    assert resumed == full
    a, b = final_state(tmp_path / "a"), final_state(tmp_path / "b")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows_a = [json.loads(x) for x in (run_dir(tmp_path / "a") / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (run_dir(tmp_path / "b") / "metrics.jsonl").read_text().splitlines()]
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith(("t_", "bg_"))} for r in rows]  # noqa: E731
    assert strip(rows_a) == strip(rows_b)


def test_resume_keeps_the_runs_thread_count(zoo, tmp_path):
    """A resumed call that leaves --threads at 0 keeps the run's count (CPU numbers depend on it); one that gives a
    count uses it. calls.jsonl logs the count each call ran on."""
    train(tiny(zoo, tmp_path / "a", threads=1, stop_after=1))
    d = run_dir(tmp_path / "a")
    torch.set_num_threads(2)  # the default a fresh process would start with on this machine (one_thread restores)
    for threads in (0, 2):
        train(make(TrainConfig, {"resume": str(d), "device": "cpu", "threads": threads, "stop_after": 1}))
    calls = [json.loads(x) for x in (d / "calls.jsonl").read_text().splitlines()]
    assert [c["threads"] for c in calls] == [1, 2]
    assert json.loads((d / "config.json").read_text())["threads"] == 1  # the first call's settings


def test_time_limited_run_continues_on_resume(zoo, tmp_path):
    """A run a time limit ended (after epoch 1) is meta-tested then; `--resume` continues it to its configured epochs
    with the same training as an uninterrupted run, keeping the early result as results_epoch1.json."""
    full = train(tiny(zoo, tmp_path / "a"))
    early = train(tiny(zoo, tmp_path / "b", time_limit=1e-9))
    assert early["epochs_run"] == 1 and set(early["test"]) == {"1"}
    d = run_dir(tmp_path / "b")
    resumed = train(make(TrainConfig, {"resume": str(d), "device": "cpu"}))
    assert resumed["epochs_run"] == full["epochs_run"] == 4
    assert json.loads((d / "results_epoch1.json").read_text()) == early
    a, b = final_state(tmp_path / "a"), final_state(tmp_path / "b")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert sum(bool(r.get("final_test")) for r in rows) == 1 and sum(bool(r.get("interim_test")) for r in rows) == 1
    assert train(make(TrainConfig, {"resume": str(d), "device": "cpu"})) == resumed  # finished: not run again


def test_deferred_meta_test_chain(zoo, tmp_path, monkeypatch):
    """defer_test: calls that cannot hold meta-test train in time-limited pieces without loading it (no interim
    meta-test), the finished run's checkpoint drops the memory bank, and a last --resume only meta-tests; the result
    equals an uninterrupted run's."""
    import dfmeta.meta.loop as loop
    full = train(tiny(zoo, tmp_path / "a"))
    real = loop.load_domains

    def no_test(dataset, split, *a, **kw):
        assert split != "test", "meta-test loaded by a deferred call"
        return real(dataset, split, *a, **kw)
    monkeypatch.setattr(loop, "load_domains", no_test)
    first = train(tiny(zoo, tmp_path / "b", time_limit=1e-9, defer_test=True))
    assert first == {"stopped_at": 1}
    d = run_dir(tmp_path / "b")
    assert not (d / "results.json").exists()
    chained = [train(make(TrainConfig, {"resume": str(d), "device": "cpu", "defer_test": True, "time_limit": 1e-9}))
               for _ in range(3)]
    assert chained == [{"stopped_at": 2}, {"stopped_at": 3}, {"stopped_at": 4, "meta_test": "deferred"}]
    assert torch.load(d / "checkpoint.pt", weights_only=False)["extra"] == {}  # finished: no bank carried
    monkeypatch.setattr(loop, "load_domains", real)
    assert train(make(TrainConfig, {"resume": str(d), "device": "cpu"})) == full
    a, b = final_state(tmp_path / "a"), final_state(tmp_path / "b")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert sum(bool(r.get("final_test")) for r in rows) == 1 and not any(r.get("interim_test") for r in rows)
    calls = [json.loads(x) for x in (d / "calls.jsonl").read_text().splitlines()]  # how the run was continued
    assert [(c["from_epoch"], c["defer_test"], c["time_limit"]) for c in calls] == [
        (1, True, 1e-9), (2, True, 1e-9), (3, True, 1e-9), (4, False, 0.0)]
    before = [c["train_seconds_before"] for c in calls]  # training time adds up over the calls
    assert 0 < before[0] < before[1] < before[2] < before[3]
    assert torch.load(d / "checkpoint.pt", weights_only=False)["train_seconds"] >= before[3] - 0.05  # logged rounded
    assert json.loads((d / "config.json").read_text())["defer_test"] is True  # the first call's settings
    assert not (run_dir(tmp_path / "a") / "calls.jsonl").exists()  # a run never continued has none
    envs = [json.loads(x) for x in (d / "env.jsonl").read_text().splitlines()]  # each call's machine and build
    assert len(envs) == 5 and all(e["torch"] == torch.__version__ and e["cpu"] and "gpu" not in e for e in envs)
    assert len((run_dir(tmp_path / "a") / "env.jsonl").read_text().splitlines()) == 1


def test_prefetched_recovery_equals_per_epoch(zoo, tmp_path):
    """rec_prefetch: the tasks of 3 epochs recovered in one batched computation give the same run, also when a stop
    and resume falls inside a prefetched window. Float32 tolerance on the logged losses (1e-4 relative); parameters
    are not compared elementwise: Adam turns 1e-7 gradient differences of near-zero gradients into lr-sized steps.
    For the same reason the meta-test accuracy may differ by one of its 225 queries (3 episodes of 75): seen on a
    machine with AVX-512, where the losses still agreed to 1e-6."""
    ref = train(tiny(zoo, tmp_path / "a", rec_prefetch=1))
    ahead = train(tiny(zoo, tmp_path / "b", rec_prefetch=3))
    stopped = train(tiny(zoo, tmp_path / "c", rec_prefetch=3, stop_after=2))
    assert stopped == {"stopped_at": 2}
    resumed = train(make(TrainConfig, {"resume": str(run_dir(tmp_path / "c")), "device": "cpu"}))
    keys = ("rec_loss", "loss", "replay_loss", "val_acc")
    rows = lambda d: [json.loads(x) for x in (run_dir(d) / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    want = rows(tmp_path / "a")
    assert [r.get("epoch") for r in want[:4]] == [1, 2, 3, 4]
    for other, res in ((tmp_path / "b", ahead), (tmp_path / "c", resumed)):
        got = rows(other)
        assert [r.get("teachers") for r in got] == [r.get("teachers") for r in want]
        for r, w in zip(got, want):
            for k in keys:
                assert r.get(k) == pytest.approx(w.get(k), rel=1e-4), (r.get("epoch"), k)
        one_query = 100 / (3 * 5 * 15)
        assert res["test"]["1"]["acc"] == pytest.approx(ref["test"]["1"]["acc"], abs=one_query + 1e-3)


def test_background_recovery_equals_serial(zoo, tmp_path):
    """rec_overlap: the next batch of epochs' tasks recovered in a background thread while the current ones train
    gives the same run bit for bit (one torch thread each); the batches it handed over are logged with the worker's
    seconds, and no worker outlives the run."""
    serial = train(tiny(zoo, tmp_path / "a", epochs=5, rec_prefetch=2, rec_overlap="off"))
    overlapped = train(tiny(zoo, tmp_path / "b", epochs=5, rec_prefetch=2, rec_overlap="on"))
    assert overlapped == serial
    a, b = final_state(tmp_path / "a"), final_state(tmp_path / "b")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = lambda d: [json.loads(x) for x in (run_dir(d) / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith(("t_", "bg_"))} for r in rs]  # noqa: E731
    assert strip(rows(tmp_path / "b")) == strip(rows(tmp_path / "a"))
    assert [r["epoch"] for r in rows(tmp_path / "b") if "bg_recover" in r] == [3, 5]  # batches [1, 2], [3, 4], [5]
    assert not any("bg_recover" in r for r in rows(tmp_path / "a"))
    assert not any(t.name == "dfmeta-recover-ahead" for t in threading.enumerate())


@pytest.mark.parametrize("overlap, device, threads, cores, want", [
    ("auto", "cpu", 1, 2, True), ("auto", "cpu", 2, 2, False), ("auto", "cpu", 1, 1, False),
    ("auto", "cuda", 1, 2, False), ("on", "cpu", 4, 1, True), ("off", "cpu", 1, 2, False)])
def test_when_recovery_runs_in_the_background(monkeypatch, overlap, device, threads, cores, want):
    """rec_overlap auto: only a CPU run on one torch thread with a second usable core; on and off are obeyed."""
    import dfmeta.meta.trainer as trainer
    monkeypatch.setattr(trainer.torch, "get_num_threads", lambda: threads)
    monkeypatch.setattr(trainer, "usable_cores", lambda: cores)
    fake = SimpleNamespace(cfg=SimpleNamespace(rec_overlap=overlap), device=torch.device(device))
    assert trainer.Trainer.overlaps(fake) is want


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_background_recovery_on_cuda(zoo, tmp_path):
    """rec_overlap on CUDA: the worker recovers on its own stream (capturing its CUDA graphs and compiling while the
    training thread replays and synchronises) and the run matches the serial one: the same teachers, the losses and
    meta-val to float tolerance (cuDNN may pick other kernels in another process)."""
    kw = dict(device="cuda", epochs=6, rec_prefetch=1)
    serial = train(tiny(zoo, tmp_path / "a", rec_overlap="off", **kw))
    overlapped = train(tiny(zoo, tmp_path / "b", rec_overlap="on", **kw))
    rows = lambda d: [json.loads(x) for x in (run_dir(d) / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    want, got = rows(tmp_path / "a"), rows(tmp_path / "b")
    assert [r.get("teachers") for r in got] == [r.get("teachers") for r in want]
    assert any("bg_recover" in r for r in got)
    for r, w in zip(got, want):
        for k in ("rec_loss", "loss", "replay_loss", "val_acc"):
            assert r.get(k) == pytest.approx(w.get(k), rel=1e-3, abs=1e-3), (r.get("epoch"), k)
    assert overlapped["test"]["1"]["acc"] == pytest.approx(serial["test"]["1"]["acc"], abs=100 / 225 + 1e-3)


def test_a_stopped_run_cancels_its_background_recovery(zoo, tmp_path, monkeypatch):
    """stop_after ends the run while the worker recovers the next epoch: it is stopped, not left running."""
    import dfmeta.meta.trainer as trainer
    cancelled = []
    real = trainer.Ahead.cancel

    def cancel(self):
        cancelled.append(self.busy)
        real(self)
    monkeypatch.setattr(trainer.Ahead, "cancel", cancel)
    assert train(tiny(zoo, tmp_path, stop_after=1, rec_overlap="on")) == {"stopped_at": 1}
    assert cancelled == [True]
    assert not any(t.name == "dfmeta-recover-ahead" for t in threading.enumerate())


def test_metrics_and_honest_selection(zoo, tmp_path):
    res = train(tiny(zoo, tmp_path, epochs=2, val_every=1))
    d = run_dir(tmp_path)
    rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if "epoch" in r]
    assert [r["epoch"] for r in epochs] == [1, 2]
    for key in ("loss", "regulariser", "cosine", "t_recover", "t_igr", "t_replay", "val_acc", "t_val"):
        assert key in epochs[-1]
    tests = [r for r in rows if r.get("final_test")]
    assert len(tests) == 1  # meta-test touched once, after training
    best = max(epochs, key=lambda r: r["val_acc"])
    assert res["selected_epoch"] == best["epoch"]
    assert (d / "best.pt").exists() and (d / "config.json").exists() and (d / "groups.json").exists()


def test_bad_input_before_compute(zoo, tmp_path):
    with pytest.raises(DfmetaError, match="teachers_per_epoch"):
        train(tiny(zoo, tmp_path, teachers_per_epoch=50))
    assert not any(tmp_path.iterdir())  # no empty run directory left behind
    with pytest.raises(DfmetaError, match="groups"):
        train(tiny(zoo, tmp_path, groups=50))
    with pytest.raises(DfmetaError, match="--ways"):
        train(tiny(zoo, tmp_path, ways=3))
    with pytest.raises(DfmetaError, match="32px|px"):
        train(tiny(zoo, tmp_path, image_size=32))
    with pytest.raises(DfmetaError, match="unknown field"):
        make(TrainConfig, {"zoo": "x", "no_such_field": 1})
    # groups that may come out smaller than m fail after the grouping; a zoo too small for c groups of m, before it
    from types import SimpleNamespace

    import numpy as np

    from dfmeta.meta.trainer import Trainer
    with pytest.raises(DfmetaError, match="a task group has 2 teachers, fewer than m = 4"):
        Trainer.usable_groups(SimpleNamespace(cfg=SimpleNamespace(teachers_per_epoch=4, small_groups="error"),
                                              run=SimpleNamespace(path="R")),
                              np.array([0, 0, 0, 0, 1, 1]))
    with pytest.raises(DfmetaError, match="'probe'"):
        make(TrainConfig, {"zoo": "z", "probe": "vgg16"})
    # a missing probe weights file fails before any task is recovered
    import dfmeta.meta.trainer as trainer_module

    def no_recovery(*args, **kwargs):
        raise AssertionError("tasks recovered before the probe weights were checked")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_module, "recover_tasks", no_recovery)
        with pytest.raises(DfmetaError, match="probe weights file not found"):
            train(tiny(zoo, tmp_path / "pw", probe_weights=str(tmp_path / "none.pth")))
        with pytest.raises(DfmetaError, match="6 teachers cannot fill c = 3 groups of m = 4"):
            train(tiny(zoo, tmp_path / "pw", small_groups="error", groups=3, teachers_per_epoch=4))
    with pytest.raises(DfmetaError, match="'groups_from'.*groups.json not found"):
        train(tiny(zoo, tmp_path / "gf", groups_from=str(tmp_path / "nowhere")))
    # caught in setup, after the run directory was made: it is removed again, and so is
    # the out-dir the run created for it
    assert not (tmp_path / "pw").exists() and not (tmp_path / "gf").exists()
    # a replay task takes train_shot + replay_queries images of one recovered class
    with pytest.raises(DfmetaError, match="'rec_per_class'.*train_shot \\+ replay_queries = 16"):
        make(TrainConfig, {"zoo": "z", "rec_per_class": 10})
    assert make(TrainConfig, {"zoo": "z", "rec_per_class": 10, "replay": False}).rec_per_class == 10
    assert make(TrainConfig, {"zoo": "z", "train_shot": 5}).rec_per_class == 30  # the paper's 5-shot setting fits


def test_conv4_probe_for_the_grouping(zoo, tmp_path):
    """--probe conv4 --probe-weights FILE: the groups come from that Conv4 (its description in groups.json)."""
    from safetensors.torch import save_file
    from dfmeta.nets import build
    torch.manual_seed(5)
    save_file(build("conv4", 160, SIZE, 3, "running").state_dict(), str(tmp_path / "probe.safetensors"))
    train(tiny(zoo, tmp_path / "r", epochs=1, probe="conv4", probe_weights=str(tmp_path / "probe.safetensors")))
    info = json.loads((run_dir(tmp_path / "r") / "groups.json").read_text())["info"]
    assert "conv4 probe" in info["probe"] and "160-way" in info["probe"]


def test_recovery_settings_reach_the_recovery(zoo, tmp_path):
    from dfmeta.meta.trainer import Trainer
    from dfmeta.runs import RunDir
    cfg = tiny(zoo, tmp_path, rec_augment=False, rec_bn_weight=0.5, rec_compile="on", replay_mix="within")
    trainer = Trainer(cfg, RunDir.new(str(tmp_path), "embedded", "tgr", 0, cfg))
    rc = trainer.recovery_config()
    assert (rc.augment, rc.bn_weight, rc.compile, rc.steps, rc.nf) == (False, 0.5, "on", 2, 8)
    assert trainer.bank.mix == "within"


def test_pooled_replay_keys_the_bank_by_dataset_class(zoo, tmp_path):
    from dfmeta.meta.trainer import Trainer
    from dfmeta.runs import RunDir
    from dfmeta.zoo import load_zoo
    cfg = tiny(zoo, tmp_path, replay_mix="pooled", epochs=3, stop_after=2)          # a stopped run keeps its bank
    assert train(cfg) == {"stopped_at": 2}
    state = torch.load(run_dir(tmp_path) / "checkpoint.pt", weights_only=False)
    teachers = load_zoo(zoo).teachers
    for t in state["extra"]["bank"]["tasks"]:
        te = teachers[t["teacher"]]
        assert t["names"] == [f"{te.dataset}/{n}" for n in te.class_names]
    trainer = Trainer(cfg, RunDir.new(str(tmp_path / "x"), "embedded", "tgr", 0, cfg))
    trainer.bank.load_state_dict(state["extra"]["bank"])
    assert trainer.bank.mix == "pooled" and all(c.startswith("embedded/") for c in trainer.bank.classes)


@pytest.mark.parametrize("mix", ["distinct", "one-copy", "distinct-pooled"])
def test_ablation_replay_mixes_train(zoo, tmp_path, mix):
    """The ablation replay mixes run end to end: their replay meta-batches are drawn and trained on."""
    train(tiny(zoo, tmp_path, replay_mix=mix, epochs=3))
    rows = [json.loads(line) for line in (run_dir(tmp_path) / "metrics.jsonl").read_text().splitlines()]
    assert sum(r.get("replay_batches", 0) for r in rows) > 0


def test_presets_are_valid_configs():
    from dfmeta.commands.train import PRESETS
    for name, values in PRESETS.items():
        cfg = make(TrainConfig, {"zoo": "z", **values})
        assert replace(cfg, seed=1).seed == 1, name


def test_time_limit_ends_the_run_with_selection_and_one_test(zoo, tmp_path):
    res = train(tiny(zoo, tmp_path, epochs=50, val_every=25, time_limit=1e-9))
    assert res["epochs_run"] == 1 and res["selected_epoch"] == 1
    rows = [json.loads(x) for x in (run_dir(tmp_path) / "metrics.jsonl").read_text().splitlines()]
    assert sum(1 for r in rows if r.get("final_test")) == 1


def test_mixed_architecture_zoo_and_zoo_size(tmp_path):
    """The multi-architecture scenario: Conv4 and ResNet-10 teachers, a Conv4 meta-model, every teacher used;
    zoo_size draws a seeded subset (Fig. 6)."""
    from dfmeta.nets import build
    from dfmeta.zoo.format import Teacher, save_teacher, write_manifest
    entries = []
    for i, arch in enumerate(["conv4", "resnet10", "conv4", "resnet10"]):
        torch.manual_seed(i)
        m = build(arch, 5, SIZE, 3, "running")
        t = Teacher(str(i), arch, SIZE, 3, (0.5,) * 3, (0.25,) * 3, "embedded",
                    [f"pattern_{5 * i + j:03d}" for j in range(5)], dict(m.state_dict()))
        entries.append(save_teacher(tmp_path / "zoo", t))
    write_manifest(tmp_path / "zoo", entries)
    res = train(tiny(tmp_path / "zoo", tmp_path / "runs", epochs=3, val_every=3, grouping="off",
                     teachers_per_epoch=4))
    assert res["epochs_run"] == 3
    rows = [json.loads(x) for x in (run_dir(tmp_path / "runs") / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["teachers"] == ["0", "1", "2", "3"]  # both architectures in one epoch
    assert res["zoo_archs"] == ["conv4", "resnet10", "conv4", "resnet10"]  # the report needs no copy of the zoo
    sub = train(tiny(tmp_path / "zoo", tmp_path / "sub", epochs=1, grouping="off", zoo_size=2, teachers_per_epoch=2))
    rows = [json.loads(x) for x in (run_dir(tmp_path / "sub") / "metrics.jsonl").read_text().splitlines()]
    assert sub["epochs_run"] == 1 and len(rows[0]["teachers"]) == 2 and len(sub["zoo_archs"]) == 2  # the subset
    with pytest.raises(DfmetaError, match="zoo_size"):
        train(tiny(tmp_path / "zoo", tmp_path / "bad", zoo_size=9))


def test_groups_from_a_group_run(zoo, tmp_path):
    """Same teachers, mode and c: the labels as they are; another c or a teacher subset: the cached W regrouped."""
    from dfmeta.cli import main
    from dfmeta.grouping import spectral_groups
    from dfmeta.zoo.format import load_zoo, save_teacher, write_manifest
    args = ["group", "--steps", "2", "--per-class", "2", "--nf", "8", "--fisher-samples", "2", "--device", "cpu"]
    assert main(args + ["--zoo", str(zoo), "--groups", "2", "--out-dir", str(tmp_path / "g")]) == 0
    (grun,) = (tmp_path / "g").iterdir()
    labels = json.loads((grun / "groups.json").read_text())["labels"]
    train(tiny(zoo, tmp_path / "t", epochs=1, groups_from=str(grun)))
    got = json.loads((run_dir(tmp_path / "t") / "groups.json").read_text())
    assert got["labels"] == labels and not got["regrouped"]
    assert got["within_group_overlap"] == json.loads((grun / "groups.json").read_text())["within_group_overlap"]
    with pytest.raises(DfmetaError, match="grouped with 'task'"):  # groups of the other Fisher labels: refused
        train(tiny(zoo, tmp_path / "fl", epochs=1, groups_from=str(grun), fisher_labels="probe"))
    with pytest.raises(DfmetaError, match="grouped with 'whole'"):  # nor groups of the other Eq. 6 form
        train(tiny(zoo, tmp_path / "fc", epochs=1, groups_from=str(grun), fisher_cosine="layers"))

    # another c: the labels `dfmeta group --groups 3` gives on the same W
    shutil.copytree(grun, tmp_path / "g3")
    assert main(args + ["--zoo", str(zoo), "--groups", "3", "--run-dir", str(tmp_path / "g3")]) == 0
    train(tiny(zoo, tmp_path / "c3", epochs=1, groups=3, groups_from=str(grun)))
    got = json.loads((run_dir(tmp_path / "c3") / "groups.json").read_text())
    assert got["regrouped"] and got["labels"] == json.loads((tmp_path / "g3" / "groups.json").read_text())["labels"]

    # a --zoo-size subset: W's rows and columns of its teachers, clustered again
    train(tiny(zoo, tmp_path / "sub", epochs=1, zoo_size=4, groups_from=str(grun)))
    got = json.loads((run_dir(tmp_path / "sub") / "groups.json").read_text())
    with np.load(grun / "fisher.npz") as z:
        where = {str(t): k for k, t in enumerate(z["teacher_ids"])}
        idx = [where[t] for t in got["teacher_ids"]]
        w_sub = z["W"][np.ix_(idx, idx)]
    assert len(idx) == 4 and got["regrouped"] and sorted(idx) != list(range(4))
    assert got["labels"] == spectral_groups(w_sub, 2, "dissimilarity", 42).tolist()
    teachers = {t.id: t for t in load_zoo(zoo).teachers}
    write_manifest(tmp_path / "subzoo", [save_teacher(tmp_path / "subzoo", teachers[t]) for t in got["teacher_ids"]])
    assert main(args + ["--zoo", str(tmp_path / "subzoo"), "--groups", "2", "--out-dir", str(tmp_path / "gs")]) == 0
    (gsub,) = (tmp_path / "gs").iterdir()

    with pytest.raises(DfmetaError, match="not found"):
        train(tiny(zoo, tmp_path / "bad2", groups_from=str(tmp_path)))
    with pytest.raises(DfmetaError, match="W has no row for teacher"):
        train(tiny(zoo, tmp_path / "bad3", groups_from=str(gsub)))  # grouped 4 of the zoo's 6 teachers
    (tmp_path / "g3" / "fisher.npz").unlink()
    with pytest.raises(DfmetaError, match="fisher.npz: not found; regrouping"):
        train(tiny(zoo, tmp_path / "bad4", groups=2, groups_from=str(tmp_path / "g3")))


def test_small_groups_fewer_clusters_again(zoo, tmp_path):
    """A zoo too small for c groups of m teachers: W clustered into the most groups that each have m teachers; the
    run records both groupings, and a resumed run finds the same groups again from its cache."""
    from dfmeta.grouping import fewer_groups
    from dfmeta.zoo import load_zoo
    cfg = tiny(zoo, tmp_path / "f", epochs=2, val_every=2, groups=3, teachers_per_epoch=3, small_groups="fewer")
    full = train(cfg)
    g = json.loads((run_dir(tmp_path / "f") / "groups.json").read_text())
    assert min(g["sizes"]) < 3 and g["small_groups"] == "fewer"  # c = 3 on 6 teachers left a group too small
    with np.load(run_dir(tmp_path / "f") / "groups.npz") as z:
        assert g["used_labels"] == fewer_groups(z["W"], 3, 3, "dissimilarity", int(z["seed"])).tolist()
    assert min(g["used_sizes"]) >= 3
    rows = [json.loads(x) for x in (run_dir(tmp_path / "f") / "metrics.jsonl").read_text().splitlines()]
    used = dict(zip([t.id for t in load_zoo(zoo).teachers], g["used_labels"]))
    assert all(len({used[t] for t in r["teachers"]}) == 1 for r in rows if "teachers" in r)  # one group per epoch
    stopped = train(replace(cfg, out_dir=str(tmp_path / "s"), stop_after=1))
    resumed = train(make(TrainConfig, {"resume": str(run_dir(tmp_path / "s")), "device": "cpu"}))
    assert stopped == {"stopped_at": 1} and resumed == full


def test_small_groups_fewer_needs_w(zoo, tmp_path):
    from dfmeta.cli import main
    assert main(["group", "--zoo", str(zoo), "--steps", "2", "--per-class", "2", "--nf", "8", "--groups", "3",
                 "--fisher-samples", "2", "--out-dir", str(tmp_path / "g"), "--device", "cpu"]) == 0
    (grun,) = (tmp_path / "g").iterdir()
    (grun / "fisher.npz").unlink()
    with pytest.raises(DfmetaError, match="--small-groups fewer needs W"):
        train(tiny(zoo, tmp_path / "t", groups=3, teachers_per_epoch=3, small_groups="fewer",
                   groups_from=str(grun)))


def test_grouping_recovers_in_the_epochs_padded_batches_when_compiling(zoo, tmp_path, monkeypatch):
    """Where the recovery compiles (CUDA under auto, faked here), the grouping recovers in the epochs' batch size
    (m x prefetch), its last batch padded, with compile kept: the epochs' one compilation serves it. Elsewhere it
    recovers in :func:`teachers_per_batch` chunks, unpadded."""
    import dfmeta.meta.trainer as trainer_module
    recover, seen = trainer_module.recover_tasks, []

    def spy(teachers, indices, cfg, *a, chunk=0, pad=False, **kw):
        seen.append((len(indices), cfg.compile, chunk, pad))
        return recover(teachers, indices, cfg, *a, chunk=chunk, pad=pad, **kw)
    monkeypatch.setattr(trainer_module, "recover_tasks", spy)
    train(tiny(zoo, tmp_path / "cpu", epochs=1, groups=2))
    n_zoo = len(json.loads((run_dir(tmp_path / "cpu") / "groups.json").read_text())["labels"])
    assert seen[:-1] == [(n_zoo, "auto", 8, False)]  # 8: teachers_per_batch on the CPU, more than the zoo
    seen.clear()
    monkeypatch.setattr(trainer_module, "compiles", lambda cfg, device: True)
    train(tiny(zoo, tmp_path / "compiled", epochs=1, groups=2, rec_prefetch=2, rec_batching="grouped"))
    chunk = 2 * 2  # m x prefetch
    assert seen[:-1] == [(min(chunk, n_zoo - lo), "auto", chunk, True) for lo in range(0, n_zoo, chunk)]
    assert n_zoo % chunk  # the last batch is padded
