"""Runs that cannot clobber each other: one process per run, a resume only by the run's own command and without
settings the run fixes, a log without the lines a killed call wrote after its checkpoint."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import make_zoo
from test_trainer import run_dir, tiny

from dfmeta.cli import main
from dfmeta.config import make
from dfmeta.errors import DfmetaError
from dfmeta.meta.trainer import TrainConfig, train
from dfmeta.runs import RunDir

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    return make_zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="module")
def finished(zoo, tmp_path_factory) -> Path:
    """A finished two-epoch TGR run (copy it before changing it)."""
    out = tmp_path_factory.mktemp("finished")
    train(tiny(zoo, out, epochs=2, val_every=1))
    return run_dir(out)


def rows(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if not k.startswith(("t_", "bg_"))} for x in lines]


def resume(run: Path, **kw) -> dict:
    return train(make(TrainConfig, {"resume": str(run), "device": "cpu", **kw}))


def test_a_killed_calls_lines_after_its_checkpoint_are_not_logged_twice(zoo, finished, tmp_path):
    train(tiny(zoo, tmp_path, epochs=2, val_every=1, stop_after=1))
    d = run_dir(tmp_path)
    (d / "checkpoint.pt").unlink()  # killed after epoch 1 was logged, before its checkpoint
    resume(d)
    assert rows(d) == rows(finished)
    (d / "results.json").unlink()  # killed in the meta-test, after its line was logged
    resume(d)
    assert rows(d) == rows(finished) and [r for r in rows(d) if r.get("final_test")] != []


def test_a_run_in_progress_is_not_trained_by_a_second_process(finished, tmp_path):
    d = Path(shutil.copytree(finished, tmp_path / "run"))
    before = {f: (d / f).read_bytes() for f in ("metrics.jsonl", "env.jsonl", "config.json")}
    with RunDir(d).locked():  # held as a training process holds it (flock: per open file, so in-process too)
        with pytest.raises(DfmetaError, match=f"^{d}: run in progress \\(another dfmeta process holds its lock\\)$"):
            resume(d)
    assert {f: (d / f).read_bytes() for f in before} == before and not (d / "calls.jsonl").exists()
    assert resume(d)["epochs_run"] == 2  # released: the next call goes ahead (a finished run: nothing to do)


def test_resume_by_another_methods_command_names_the_right_one(finished, capsys):
    assert main(["baseline", "purer", "--resume", str(finished)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"dfmeta baseline purer: error: {finished} is a tgr run; resume it with the command that started "
                   f"it (dfmeta train --resume {finished})")


def test_resume_refuses_settings_the_run_fixes(finished, capsys):
    before = (finished / "env.jsonl").read_text()
    assert main(["train", "--resume", str(finished), "--epochs", "10", "--train-shot", "5"]) == 2
    err = capsys.readouterr().err
    assert f"{finished}: --epochs, --train-shot given with --resume, but the run's config.json fixes them" in err
    assert "takes only --stop-after, --time-limit, --defer-test, --device, --threads, --data-root" in err
    assert main(["train", "--resume", str(finished), "--preset", "cifar-fs-1shot"]) == 2
    assert "--dataset, --epochs (from --preset) given with --resume" in capsys.readouterr().err
    assert (finished / "env.jsonl").read_text() == before  # refused before anything was written
    with pytest.raises(DfmetaError, match="--epochs given with --resume"):  # a config built in code too
        resume(finished, epochs=10)
    # the run's own values (the command that started it, repeated) and per-call settings are fine
    assert main(["train", "--resume", str(finished), "--epochs", "2", "--device", "cpu", "--threads", "1"]) == 0


def test_a_run_stopped_by_a_small_group_goes_on_with_a_small_groups_rule(zoo, tmp_path, monkeypatch):
    """A run that stopped on a group of fewer than m teachers keeps its grouping: a resume call may give it
    --small-groups merge (recorded in config.json), which the message names; a run under merge may not change it."""
    import numpy as np

    from dfmeta.meta.trainer import Trainer

    def small_groups(self):  # the grouping as computed and cached, with a group of 2 < m = 3
        labels = np.array([0, 0, 0, 0, 1, 1])
        self.save_groups(labels, None, 0)
        self.run.write_json("groups.json", {"labels": labels.tolist(), "sizes": [4, 2]})
        return labels
    with monkeypatch.context() as mp:
        mp.setattr(Trainer, "group", small_groups)
        with pytest.raises(DfmetaError, match=r"fewer than m = 3.*dfmeta train --resume \S+ --small-groups merge"):
            train(tiny(zoo, tmp_path, small_groups="error", groups=2, teachers_per_epoch=3, epochs=1))
    d = run_dir(tmp_path)
    assert resume(d, small_groups="merge")["epochs_run"] == 1  # the cached groups, merged
    assert json.loads((d / "config.json").read_text())["small_groups"] == "merge"
    assert json.loads((d / "groups.json").read_text())["used_sizes"] == [6]
    with pytest.raises(DfmetaError, match="--small-groups given with --resume"):
        resume(d, small_groups="fewer")


def test_group_run_dir_takes_only_a_group_run(zoo, finished, tmp_path, capsys):
    args = ["group", "--zoo", str(zoo), "--groups", "2", "--steps", "2", "--per-class", "2", "--nf", "8",
            "--fisher-samples", "2", "--device", "cpu", "--run-dir"]
    before = {f.name: f.read_bytes() for f in finished.iterdir() if f.is_file()}
    assert main(args + [str(finished)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"dfmeta group: error: {finished} is a tgr training run, not a `dfmeta group` run; --run-dir takes a "
        "`dfmeta group` run to reuse; --out-dir makes a new one")
    assert {f.name: f.read_bytes() for f in finished.iterdir() if f.is_file()} == before
    assert main(args + [str(tmp_path / "nowhere")]) == 2
    assert "nowhere: not found; --run-dir takes" in capsys.readouterr().err and not (tmp_path / "nowhere").exists()
    assert main(args + [str(tmp_path)]) == 2
    assert "not a run directory (no config.json)" in capsys.readouterr().err
    grun = tmp_path / "g"  # a group run (its config's fields are all the command's)
    grun.mkdir()
    (grun / "config.json").write_text(json.dumps({"zoo": str(zoo), "seed": 42}))
    with RunDir(grun).locked():
        assert main(args + [str(grun)]) == 2
    assert capsys.readouterr().err.strip() == f"dfmeta group: error: {grun}: run in progress (another dfmeta " \
        "process holds its lock)"
    assert json.loads((grun / "config.json").read_text()) == {"zoo": str(zoo), "seed": 42}


@pytest.mark.parametrize("bad, match", [(["--ways", "200"], "200-way episodes need 200 classes"),
                                        (["--shots", "1", "1000"], "fewer than K \\+ Q = 1000 \\+ 15")])
def test_a_failed_evaluate_leaves_no_run_directory(bad, match, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["evaluate", "--device", "cpu", "--episodes", "2", "--eval-steps", "1", "--out-dir", str(out)] + bad) == 2
    assert re.search(match, capsys.readouterr().err) and not out.exists()


def test_a_train_whose_meta_test_cannot_run_fails_before_training(zoo, tmp_path):
    with pytest.raises(DfmetaError, match="fewer than K \\+ Q = 1000 \\+ 15"):
        train(tiny(zoo, tmp_path / "runs", epochs=2, shots=(1, 1000)))
    assert not (tmp_path / "runs").exists()


def test_igr_vs_erm_run_dir_is_locked_and_logs_each_epoch_once(zoo, tmp_path):
    from dfmeta.analysis.igr_vs_erm import IGRvsERMConfig, run_igr_vs_erm
    base = dict(zoo=str(zoo), out_dir=str(tmp_path), device="cpu", epochs=1, teachers_per_epoch=2, steps=1,
                per_class=2, nf=8)
    cfg = lambda **kw: make(IGRvsERMConfig, {**base, **kw})  # noqa: E731
    run_igr_vs_erm(cfg())
    d = run_dir(tmp_path)
    shutil.copy(d / "checkpoint.pt", tmp_path / "epoch1.pt")
    run_igr_vs_erm(cfg(epochs=2, run_dir=str(d)))
    shutil.copy(tmp_path / "epoch1.pt", d / "checkpoint.pt")  # killed after epoch 2 was logged, before its checkpoint
    with RunDir(d).locked(), pytest.raises(DfmetaError, match="run in progress"):
        run_igr_vs_erm(cfg(epochs=3, run_dir=str(d)))
    run_igr_vs_erm(cfg(epochs=3, run_dir=str(d)))
    assert [r["epoch"] for r in rows(d)] == [1, 2, 3]


def test_a_new_group_run_that_fails_leaves_nothing_and_igr_run_dir_must_exist(zoo, tmp_path, monkeypatch, capsys):
    import dfmeta.commands.group as group_cmd

    def fails(*args, **kwargs):
        raise DfmetaError("the grouping failed")
    monkeypatch.setattr(group_cmd, "group_into", fails)
    out = tmp_path / "runs"
    assert main(["group", "--zoo", str(zoo), "--groups", "2", "--device", "cpu", "--out-dir", str(out)]) == 2
    assert "the grouping failed" in capsys.readouterr().err and not out.exists()
    assert main(["analyse", "igr", "--zoo", str(zoo), "--run-dir", str(tmp_path / "typo")]) == 2
    assert "typo: not found (it continues a run" in capsys.readouterr().err and not (tmp_path / "typo").exists()


def test_a_resume_call_may_say_where_the_data_is(zoo, tmp_path):
    """--data-root on a resume call (the run continued on another machine) is used and logged; left out, the run's
    own root stays; a --zoo that does not exist is an error."""
    train(tiny(zoo, tmp_path, stop_after=1, epochs=3))
    d = run_dir(tmp_path)
    stored = json.loads((d / "config.json").read_text())["data_root"]
    elsewhere = str(tmp_path / "data-elsewhere")
    assert main(["train", "--resume", str(d), "--data-root", elsewhere, "--stop-after", "1", "--device", "cpu"]) == 0
    resume(d, stop_after=1)
    calls = [json.loads(x) for x in (d / "calls.jsonl").read_text().splitlines()]
    assert [c["data_root"] for c in calls] == [elsewhere, stored]
    with pytest.raises(DfmetaError, match="other-zoo: zoo directory not found"):
        resume(d, zoo=str(tmp_path / "other-zoo"))


def test_a_resume_call_may_name_the_zoo_where_it_lies_now(zoo, tmp_path):
    """A zoo moved after the run started is named anew with --zoo: checked by its teachers' checksums, used and
    logged, and the run goes on as the uninterrupted one; a zoo with other teachers is refused."""
    full = train(tiny(zoo, tmp_path / "full", epochs=3))
    moved = tmp_path / "zoo-before"
    shutil.copytree(zoo, moved)
    train(tiny(moved, tmp_path / "run", stop_after=1, epochs=3))
    d = run_dir(tmp_path / "run")
    assert json.loads((d / "zoo.json").read_text())["path"] == str(moved)
    now = tmp_path / "zoo-now"
    moved.rename(now)
    with pytest.raises(DfmetaError, match="zoo-before: the run's zoo is not there any more; if it was moved, name"):
        resume(d)
    other = make_zoo(tmp_path / "other", n=5)
    with pytest.raises(DfmetaError, match="not the zoo .* was started with"):
        resume(d, zoo=str(other))
    assert resume(d, zoo=str(now)) == full
    assert json.loads((d / "calls.jsonl").read_text().splitlines()[0])["zoo"] == str(now)
    (d / "zoo.json").unlink()  # a run started before zoo.json existed, whose zoo is gone: nothing to check against
    with pytest.raises(DfmetaError, match="cannot be checked"):
        resume(d, zoo=str(now))


def test_a_run_older_than_fisher_cosine_resumes_with_the_form_it_began_with(zoo, tmp_path, monkeypatch):
    """A run whose config.json predates --fisher-cosine grouped (or would have) with the authors' per-layer form: a
    resume that still has to group uses that form, not today's default."""
    import dfmeta.grouping as grouping
    train(tiny(zoo, tmp_path, stop_after=1, epochs=2))
    d = run_dir(tmp_path)
    config = json.loads((d / "config.json").read_text())
    assert config.pop("fisher_cosine") == "whole"
    (d / "config.json").write_text(json.dumps(config))
    for name in ("groups.npz", "groups.json", "checkpoint.pt", "metrics.jsonl"):  # as if killed in its grouping
        (d / name).unlink(missing_ok=True)
    real, seen = grouping.dissimilarity, []
    monkeypatch.setattr(grouping, "dissimilarity", lambda e, device="cpu", cosine="whole": seen.append(cosine)
                        or real(e, device, cosine))
    resume(d, stop_after=1)
    assert seen == ["layers"]
