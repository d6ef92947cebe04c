"""Run directories: distinct for runs started together, locked while a process writes into them."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from dfmeta.runs import RunDir


@dataclass(frozen=True)
class Cfg:
    seed: int = 0


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda fmt: "20260101-000000")
    runs = [RunDir.new(tmp_path, "embedded", "finetune", 0, Cfg(seed=i)) for i in range(3)]
    names = [r.path.name for r in runs]
    assert names == ["embedded__finetune__0__20260101-000000", "embedded__finetune__0__20260101-000000-2",
                     "embedded__finetune__0__20260101-000000-3"]
    assert [json.loads((r.path / "config.json").read_text())["seed"] for r in runs] == [0, 1, 2]


def test_discard_if_unused_removes_only_a_run_without_work(tmp_path):
    run = RunDir.new(tmp_path / "out", "embedded", "finetune", 0, Cfg())
    with run.locked():
        run.record_environment("cpu")
    assert run.discard_if_unused() and not (tmp_path / "out").exists()  # and the out-dir it made
    kept = RunDir.new(tmp_path, "embedded", "finetune", 0, Cfg())
    kept.log(acc=50.0)
    assert not kept.discard_if_unused() and (kept.path / "metrics.jsonl").exists()
