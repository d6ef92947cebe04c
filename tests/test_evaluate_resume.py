"""`dfmeta evaluate --resume`: a killed evaluation keeps the K values it scored and gives the uninterrupted results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_zoo

from dfmeta.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

ARGS = ["evaluate", "--dataset", "embedded", "--image-size", "16", "--method", "average", "--episodes", "4",
        "--shots", "1", "5", "--eval-steps", "1", "--device", "cpu"]


def only_run(out: Path) -> Path:
    (d,) = [p for p in out.iterdir() if p.is_dir()]
    return d


def test_a_killed_evaluation_resumes_after_its_last_scored_k(tmp_path, monkeypatch, capsys):
    zoo = make_zoo(tmp_path / "zoo", n=3)
    assert main(ARGS + ["--zoo", str(zoo), "--out-dir", str(tmp_path / "a")]) == 0
    full = json.loads((only_run(tmp_path / "a") / "results.json").read_text())

    calls = []
    from dfmeta.commands.common import EvalFields
    evaluator = EvalFields.evaluator

    def killed_at_5(self, splits, k, device, episodes=0):
        calls.append(k)
        if k == 5 and len(calls) == 2:
            raise KeyboardInterrupt
        return evaluator(self, splits, k, device, episodes)
    monkeypatch.setattr(EvalFields, "evaluator", killed_at_5)
    assert main(ARGS + ["--zoo", str(zoo), "--out-dir", str(tmp_path / "b")]) == 130
    d = only_run(tmp_path / "b")
    assert not (d / "results.json").exists() and f"dfmeta evaluate --resume {d}" in capsys.readouterr().out
    calls.clear()
    assert main(["evaluate", "--resume", str(d), "--device", "cpu"]) == 0
    assert calls == [5]  # K = 1 was kept from the killed call
    assert json.loads((d / "results.json").read_text()) == full
    assert "scored by an earlier call" in capsys.readouterr().out
    # a finished run, a setting the run fixes, and a meta-training run are refused in one line each
    assert main(["evaluate", "--resume", str(d)]) == 2
    assert "finished already" in capsys.readouterr().err
    assert main(["evaluate", "--resume", str(d), "--episodes", "9"]) == 2
    assert "--episodes given with --resume" in capsys.readouterr().err
    # a zoo moved since: named anew, checked by its teachers' checksums
    assert json.loads((d / "zoo.json").read_text())["path"] == str(zoo)
    (d / "results.json").unlink()
    moved = tmp_path / "zoo-moved"
    zoo.rename(moved)
    assert main(["evaluate", "--resume", str(d)]) == 2
    assert "the run's zoo is not there any more" in capsys.readouterr().err
    other = make_zoo(tmp_path / "other", n=2)
    assert main(["evaluate", "--resume", str(d), "--zoo", str(other)]) == 2
    assert "not the zoo" in capsys.readouterr().err
    assert main(["evaluate", "--resume", str(d), "--zoo", str(moved)]) == 0
    assert json.loads((d / "results.json").read_text()) == full
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "config.json").write_text(json.dumps({"val_every": 20, "split": "test"}))
    assert main(["evaluate", "--resume", str(tmp_path / "t")]) == 2
    assert "not a `dfmeta evaluate` run" in capsys.readouterr().err
