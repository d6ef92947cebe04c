"""`dfmeta evaluate --meta-model RUN`: the selected meta-model of a meta-training run, scored again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_trainer import SIZE, run_dir, tiny, zoo  # noqa: F401 - zoo is a fixture

from dfmeta.cli import main
from dfmeta.meta.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")

EVAL = ["evaluate", "--episodes", "3", "--eval-steps", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(zoo, tmp_path_factory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("trained")
    train(tiny(zoo, out))
    return run_dir(out)


def only_run(out: Path) -> Path:
    (d,) = [p for p in out.iterdir() if p.is_dir()]
    return d


def test_scores_what_the_run_scored_and_more(trained, tmp_path, capsys):
    own = json.loads((trained / "results.json").read_text())
    # no protocol flags: the run's own (3 episodes, 2 fine-tuning steps) is kept
    assert main(["evaluate", "--device", "cpu", "--meta-model", str(trained), "--shots", "1", "5",
                 "--out-dir", str(tmp_path)]) == 0
    d = only_run(tmp_path)
    res = json.loads((d / "results.json").read_text())
    cfg = json.loads((d / "config.json").read_text())
    # the run's own method, data and image size; the same episodes give the run's own meta-test number
    assert (res["method"], cfg["dataset"], cfg["image_size"], cfg["arch"]) == ("tgr", "embedded", SIZE, "conv4")
    assert res["results"]["1"]["acc"] == pytest.approx(own["test"]["1"]["acc"], abs=1e-9)
    assert set(res["results"]) == {"1", "5"}
    source = json.loads((d / "meta_model.json").read_text())
    assert source["run"] == str(trained) and source["selected_epoch"] == own["selected_epoch"]
    assert "the meta-model of" in capsys.readouterr().out
    assert (cfg["episodes"], cfg["eval_steps"]) == (3, 2)
    # a flag overrides the run's protocol
    assert main(["evaluate", "--device", "cpu", "--meta-model", str(trained), "--shots", "1", "--eval-steps", "0",
                 "--out-dir", str(tmp_path / "b")]) == 0
    other = json.loads((only_run(tmp_path / "b") / "results.json").read_text())["results"]["1"]
    assert other["episodes"] == 3 and other["acc"] != res["results"]["1"]["acc"]


def test_flags_that_contradict_the_run_are_refused(trained, tmp_path, capsys):
    cases = [(["--arch", "resnet10"], "--arch resnet10 with --meta-model"),
             (["--ways", "3"], "--ways 3 with --meta-model"),
             (["--method", "average"], "--method average with --meta-model"),
             (["--image-size", "20"], "--image-size 20 with --meta-model"),
             (["--zoo", str(tmp_path)], "--zoo with --meta-model")]
    for flags, msg in cases:
        assert main([*EVAL, "--meta-model", str(trained), *flags, "--out-dir", str(tmp_path / "o")]) == 2
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_a_run_without_a_selected_model_is_refused(trained, tmp_path, capsys):
    assert main([*EVAL, "--meta-model", str(tmp_path), "--out-dir", str(tmp_path / "o")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    early = tmp_path / "early"
    early.mkdir()
    (early / "config.json").write_text((trained / "config.json").read_text())
    assert main([*EVAL, "--meta-model", str(early), "--out-dir", str(tmp_path / "o")]) == 2
    assert "best.pt: missing; the run has not validated yet" in capsys.readouterr().err
    (early / "best.pt").write_bytes(b"cut")
    assert main([*EVAL, "--meta-model", str(early), "--out-dir", str(tmp_path / "o")]) == 2
    assert "best.pt: not a whole torch file" in capsys.readouterr().err
    best = torch.load(trained / "best.pt", weights_only=True)
    torch.save({k: v[:1] if "head" in k else v for k, v in best.items()} | {"extra": torch.zeros(1)}, early / "best.pt")
    assert main([*EVAL, "--meta-model", str(early), "--out-dir", str(tmp_path / "o")]) == 2
    assert "do not fit a 1-way conv4" in capsys.readouterr().err


def test_resume_checks_the_meta_model_and_report_keeps_it_apart(trained, tmp_path, capsys, monkeypatch):
    from dfmeta.commands.common import EvalFields
    evaluator = EvalFields.evaluator

    def killed_at_5(self, splits, k, device, episodes=0):
        if k == 5:
            raise KeyboardInterrupt
        return evaluator(self, splits, k, device, episodes)
    monkeypatch.setattr(EvalFields, "evaluator", killed_at_5)
    assert main([*EVAL, "--meta-model", str(trained), "--shots", "1", "5", "--out-dir", str(tmp_path)]) == 130
    monkeypatch.setattr(EvalFields, "evaluator", evaluator)
    d = only_run(tmp_path)
    # the source run's best.pt changed since (it went on): the resume is refused
    original = (trained / "best.pt").read_bytes()
    best = torch.load(trained / "best.pt", weights_only=True)
    torch.save({k: v + 1 for k, v in best.items()}, trained / "best.pt")
    try:
        assert main(["evaluate", "--resume", str(d), "--device", "cpu"]) == 2
        assert "not the meta-model" in capsys.readouterr().err
    finally:
        (trained / "best.pt").write_bytes(original)
    assert main(["evaluate", "--resume", str(d), "--device", "cpu"]) == 0
    assert set(json.loads((d / "results.json").read_text())["results"]) == {"1", "5"}

    from dfmeta.report.collect import collect
    from dfmeta.report.tables import placement
    runs = {r.path: r for r in collect([str(d), str(trained)]).runs}
    # a meta-model scored again is never a table's row of its method: it goes to "Other runs", named by its source
    assert "meta_model" in runs[d].deviations() and placement(runs[d]) == "other"
    assert runs[d].method == "tgr" and "meta_model" not in runs[trained].deviations()
