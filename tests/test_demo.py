"""`dfmeta demo`, the quick start's main job: end to end at toy size, and bad input refused before any work."""

from __future__ import annotations

import pytest

from dfmeta.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

TOY = ["--teachers", "4", "--teacher-epochs", "1", "--epochs", "2", "--groups", "2", "--rec-steps", "2",
       "--rec-per-class", "3", "--rec-nf", "8", "--image-size", "16", "--episodes", "4", "--val-every", "1",
       "--eval-steps", "2", "--device", "cpu"]


def test_demo_end_to_end(tmp_path, capsys):
    assert main(["demo", *TOY, "--out-dir", str(tmp_path)]) == 0
    (run,) = tmp_path.iterdir()
    table = (run / "results.md").read_text()
    for method in ("finetune", "best-model", "average", "ota", "tgr"):
        assert f"| {method} | " in table, method
    assert (run / "tgr" / "results.json").is_file() and len(list((run / "zoo").glob("*.safetensors"))) == 4
    rows = (run / "tgr" / "metrics.jsonl").read_text()
    assert '"replay_batches": 2' in rows  # replay runs on the recovered images alone (replay_queries fits them)


@pytest.mark.parametrize("flags, field", [(["--rec-per-class", "1"], "rec_per_class"),
                                          (["--teachers", "3"], "teachers"),
                                          (["--groups", "5"], "groups"),
                                          (["--epochs", "0"], "epochs")])
def test_demo_bad_input_before_any_work(tmp_path, capsys, flags, field):
    assert main(["demo", *TOY, *flags, "--out-dir", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert f"field '{field}'" in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())
