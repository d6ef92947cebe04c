"""Mistakes a first-time user makes (found by a walk through the CLI): each ends in one line, before long work."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import make_zoo
from test_trainer import tiny

from dfmeta.cli import main
from dfmeta.config import make
from dfmeta.errors import DfmetaError
from dfmeta.meta.trainer import TrainConfig, Trainer, train
from dfmeta.zoo.format import MANIFEST, load_zoo

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    return make_zoo(tmp_path_factory.mktemp("zoo"), n=4)


def one_line(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def test_non_finite_numbers_are_refused(zoo, tmp_path, capsys):
    with pytest.raises(DfmetaError, match="field 'beta': expected a finite number, got inf"):
        tiny(zoo, tmp_path, beta=math.inf)
    assert "expected a finite number" in one_line(["train", "--zoo", str(zoo), "--beta", "nan"], capsys)


def test_presets_that_disagree_are_refused(zoo, capsys):
    err = one_line(["train", "--zoo", str(zoo), "--preset", "cifar-fs-1shot", "cifar-fs-5shot"], capsys)
    assert "--preset cifar-fs-1shot cifar-fs-5shot: both set" in err


def test_settings_that_would_be_ignored_are_refused(zoo, tmp_path):
    with pytest.raises(DfmetaError, match="groups_from"):
        tiny(zoo, tmp_path, grouping="off", groups_from=str(tmp_path))
    with pytest.raises(DfmetaError, match="'replay_mix': set, but replay is off"):
        tiny(zoo, tmp_path, replay=False, replay_mix="within")
    tiny(zoo, tmp_path, replay=False, replay_max_batches=3)  # a size without meaning here is harmless


def test_a_forgotten_dataset_flag_is_refused_before_work(tmp_path, capsys):
    z = make_zoo(tmp_path / "zoo", n=4)
    doc = json.loads((z / MANIFEST).read_text())
    for m in doc["models"]:
        m["dataset"] = "cifar-fs"
    (z / MANIFEST).write_text(json.dumps(doc))
    err = one_line(["train", "--zoo", str(z), "--out-dir", str(tmp_path / "runs"), "--device", "cpu"], capsys)
    assert "--dataset not given (default embedded), but the zoo's teachers come from cifar-fs" in err
    assert not (tmp_path / "runs").exists()
    err = one_line(["evaluate", "--method", "average", "--zoo", str(z), "--out-dir", str(tmp_path / "runs")], capsys)
    assert "pass --dataset cifar-fs" in err


def test_unwritable_paths_and_memory_give_one_line(zoo, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for argv in (["report", str(tmp_path), "--out", str(blocker / "r.md")],
                 ["zoo", "merge", "--src", str(zoo), "--dst", str(blocker / "z")]):
        err = one_line(argv, capsys)
        assert str(blocker) in err
    import dataclasses

    import dfmeta.cli
    commands = dfmeta.cli.discover()

    def no_memory(cfg):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
    monkeypatch.setattr(dfmeta.cli, "discover", lambda: [
        dataclasses.replace(c, run=no_memory) if c.name == "evaluate" else c for c in commands])
    assert "error: out of memory" in one_line(["evaluate"], capsys)


def test_a_teacher_with_non_finite_weights_is_refused(tmp_path):
    z = make_zoo(tmp_path / "zoo", n=2)
    from safetensors.torch import load_file, save_file
    from dfmeta.zoo.format import sha256
    doc = json.loads((z / MANIFEST).read_text())
    f = z / doc["models"][1]["file"]
    state = load_file(f)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, f)
    doc["models"][1]["sha256"] = sha256(f.read_bytes())
    (z / MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(DfmetaError, match="NaN or infinite values"):
        load_zoo(z)
    assert len(load_zoo(z, skip_bad=True)) == 1


def test_a_diverged_run_stops_instead_of_reporting_chance(zoo, tmp_path, monkeypatch):
    real = Trainer.train_epoch

    def diverging(self, epoch):
        stats = real(self, epoch)
        if epoch == 3:
            with torch.no_grad():
                next(iter(self.params.values())).fill_(float("nan"))
        return stats
    monkeypatch.setattr(Trainer, "train_epoch", diverging)
    with pytest.raises(DfmetaError, match="meta-training diverged at epoch 3: .* is not finite; lower the step sizes"):
        train(tiny(zoo, tmp_path))
    (run,) = tmp_path.iterdir()
    assert not (run / "results.json").exists()  # no chance-level "result"


def test_a_part_that_did_not_run_is_no_divergence(zoo, tmp_path, monkeypatch):
    real = Trainer.train_epoch
    # an epoch without replay logs replay_loss = nan by design
    monkeypatch.setattr(Trainer, "train_epoch", lambda self, epoch: {**real(self, epoch), "replay_loss": float("nan")})
    assert "test" in train(tiny(zoo, tmp_path))


def test_an_interrupted_training_says_what_it_keeps(zoo, tmp_path, monkeypatch, capsys):
    real = Trainer.train_epoch

    def interrupted(self, epoch):
        if epoch == 3:
            raise KeyboardInterrupt
        return real(self, epoch)
    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(zoo, tmp_path))
    (run,) = tmp_path.iterdir()
    out = capsys.readouterr().out
    assert f"the run keeps its checkpoint of epoch 2 (later epochs are trained again); continue with: dfmeta train " \
           f"--resume {run}" in out


def test_zoo_import_never_overwrites(tmp_path, capsys):
    dst = make_zoo(tmp_path / "built", n=2)
    before = (dst / MANIFEST).read_text()
    src = tmp_path / "authors"
    (src / "model").mkdir(parents=True)
    (src / "manifest.json").write_text(json.dumps({"classes": ["a", "b"]}))
    err = one_line(["zoo", "import", "--src", str(src), "--dst", str(dst)], capsys)
    assert "exists and is not an empty directory" in err and (dst / MANIFEST).read_text() == before
    # a failed import (no model file) leaves no destination behind
    assert "no model_specific" in one_line(["zoo", "import", "--src", str(src), "--dst", str(tmp_path / "new")],
                                           capsys)
    assert not (tmp_path / "new").exists()


def test_small_slips(zoo, tmp_path, capsys):
    assert "each K once" in one_line(["evaluate", "--shots", "1", "1"], capsys)
    assert "--out-dir: expected a directory, got an empty path" in one_line(["evaluate", "--out-dir", ""], capsys)
    f = tmp_path / "afile"
    f.write_text("x")
    assert "a file, not a zoo directory" in one_line(["zoo", "info", "--zoo", str(f)], capsys)


def test_a_cut_split_says_so(tmp_path):
    from dfmeta.data.registry import load_split
    assert main(["data", "prepare", "--dataset", "embedded", "--splits", "val", "--out", str(tmp_path),
                 "--max-per-class", "20"]) == 0
    split = load_split("embedded", "val", tmp_path)
    assert split.name.endswith("(first 20/class)") and set(split.counts.tolist()) == {20}
