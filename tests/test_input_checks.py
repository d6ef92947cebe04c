"""User mistakes in flags and files: one-line errors before any work (no traceback, no run directory)."""

from __future__ import annotations

import io
import json

import pytest
import torch

from dfmeta.cli import main
from dfmeta.errors import DfmetaError, reason
from dfmeta.runs import resolve_device
from conftest import make_zoo


@pytest.fixture
def tiny_zoo_dir(tmp_path):
    return make_zoo(tmp_path / "zoo", n=4)


def run_cli(argv: list[str], capsys) -> str:
    """Run the CLI; assert a usage error (exit 2) and return its one-line message."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("flags,field", [
    (["--queries", "0"], "queries"), (["--queries", "-1"], "queries"), (["--episodes", "0"], "episodes"),
    (["--episodes", "-5"], "episodes"), (["--ways", "0"], "ways"), (["--ways", "1"], "ways"),
    (["--image-size", "-1"], "image_size"), (["--episode-batch", "-1"], "episode_batch"),
    (["--shots", "0"], "shots"), (["--shots", "1", "-5"], "shots"), (["--eval-steps", "-1"], "eval_steps"),
    (["--eval-lr", "nan"], "eval_lr"), (["--eval-lr", "0"], "eval_lr"), (["--eval-lr", "inf"], "eval_lr"),
])
def test_bad_protocol_numbers_fail_up_front(flags, field, tmp_path, capsys) -> None:
    for cmd in (["evaluate"], ["train", "--zoo", str(tmp_path / "zoo")]):
        err = run_cli([*cmd, "--out-dir", str(tmp_path / "runs"), *flags], capsys)
        assert f"field {field!r}: expected" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv,field", [
    (["train", "--zoo", "Z", "--meta-lr", "-1", "--grouping", "off"], "meta_lr"),
    (["train", "--zoo", "Z", "--rec-lr", "nan"], "rec_lr"),
    (["train", "--zoo", "Z", "--inner-lr", "0"], "inner_lr"),
    (["train", "--zoo", "Z", "--time-limit", "-5"], "time_limit"),
    (["train", "--zoo", "Z", "--stop-after", "-1"], "stop_after"),
    (["train", "--zoo", "Z", "--val-episodes", "-1"], "val_episodes"),
    (["zoo", "build", "--lr", "-1"], "lr"),
    (["analyse", "igr", "--zoo", "Z", "--meta-lr", "-1"], "meta_lr"),
    (["analyse", "igr", "--zoo", "Z", "--lr", "inf"], "lr"),
    (["baseline", "purer", "--zoo", "Z", "--inv-lr", "-1"], "inv_lr"),
    (["baseline", "bidf-mkd", "--zoo", "Z", "--inner-lr", "nan"], "inner_lr"),
    (["baseline", "dro", "--zoo", "Z", "--flow-lr", "inf"], "flow_lr"),
])
def test_bad_learning_rates_and_limits_fail_up_front(argv, field, capsys) -> None:
    assert f"field {field!r}: expected" in run_cli(argv, capsys)


@pytest.mark.parametrize("device,says", [("gpu", "expected auto, cpu, cuda, cuda:N or mps"),
                                         ("cuda", "CUDA is not available"), ("cuda:1", "CUDA is not available"),
                                         ("cuda:x", "expected auto")])
def test_a_device_this_machine_lacks_fails_before_any_directory(device, says, tmp_path, capsys, monkeypatch,
                                                                tiny_zoo_dir) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out, zoo = tmp_path / "runs", tmp_path / "new-zoo"
    for argv in (["evaluate", "--out-dir", str(out)], ["train", "--zoo", str(tiny_zoo_dir), "--out-dir", str(out)],
                 ["zoo", "build", "--zoo", str(zoo)], ["group", "--zoo", str(tiny_zoo_dir), "--out-dir", str(out)],
                 ["analyse", "igr", "--zoo", str(tiny_zoo_dir), "--out-dir", str(out)]):
        err = run_cli([*argv, "--device", device], capsys)
        assert "field 'device'" in err and says in err
    assert not out.exists() and not zoo.exists()


def test_a_cuda_index_beyond_the_device_count_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DfmetaError, match="has 2 CUDA device"):
        resolve_device("cuda:2")


def test_a_file_where_a_directory_is_expected(tmp_path, capsys, tiny_zoo_dir, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "text.txt").write_text("not a folder\n")
    cases = [
        (["zoo", "import", "--src", "authors", "--dst", "text.txt"], "--dst text.txt"),
        (["zoo", "build", "--zoo", "text.txt"], "--zoo text.txt"),
        (["zoo", "merge", "--src", str(tiny_zoo_dir), str(tiny_zoo_dir), "--dst", "text.txt"], "--dst text.txt"),
        (["data", "prepare", "--out", "text.txt"], "--out text.txt"),
        (["train", "--zoo", str(tiny_zoo_dir), "--out-dir", "text.txt"], "--out-dir text.txt"),
        (["evaluate", "--out-dir", "text.txt/sub"], "--out-dir text.txt/sub"),
        (["group", "--zoo", str(tiny_zoo_dir), "--out-dir", "text.txt"], "--out-dir text.txt"),
        (["demo", "--out-dir", "text.txt"], "--out-dir text.txt"),
        (["report", "runs", "--out", "text.txt/r.md"], "--out text.txt"),
    ]
    for argv, says in cases:
        err = run_cli(argv, capsys)
        assert f"{says}: expected a directory, found a file" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text.txt", "zoo"]


def tgr_run(path, zoo):
    """A TGR run directory with a whole config.json and a checkpoint.pt cut short by a kill."""
    from dfmeta.config import make, to_dict
    from dfmeta.meta.trainer import TrainConfig
    path.mkdir()
    cfg = to_dict(make(TrainConfig, dict(zoo=str(zoo), image_size=16, device="cpu")))
    (path / "config.json").write_text(json.dumps(cfg))
    buf = io.BytesIO()
    torch.save({"epoch": 1, "params": {"w": torch.zeros(100)}}, buf)
    (path / "checkpoint.pt").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def test_a_truncated_authors_manifest_is_a_one_line_error(tmp_path, capsys) -> None:
    authors = tmp_path / "authors"
    (authors / "model").mkdir(parents=True)
    (authors / "manifest.json").write_text('{"classes": ["a", "b"')  # cut short
    err = run_cli(["zoo", "import", "--src", str(authors), "--dst", str(tmp_path / "imported")], capsys)
    assert "manifest.json: not valid JSON" in err and not (tmp_path / "imported").exists()


def test_a_manifest_that_is_no_object_is_a_one_line_error(tmp_path, capsys) -> None:
    listed = make_zoo(tmp_path / "listed", n=1)
    (listed / "manifest.json").write_text("[]\n")
    assert "manifest.json: expected a JSON object" in run_cli(["zoo", "info", "--zoo", str(listed)], capsys)


def test_resuming_a_run_with_files_cut_short_is_a_one_line_error(tmp_path, capsys, tiny_zoo_dir) -> None:
    run = tgr_run(tmp_path / "run", tiny_zoo_dir)
    err = run_cli(["train", "--resume", str(run)], capsys)
    assert "checkpoint.pt: not a readable checkpoint (truncated or corrupt)" in err
    (run / "config.json").write_text((run / "config.json").read_text()[:50])
    assert "config.json: not valid JSON" in run_cli(["train", "--resume", str(run)], capsys)


def test_analyse_igr_refuses_to_continue_another_commands_run(tmp_path, capsys, tiny_zoo_dir) -> None:
    run = tgr_run(tmp_path / "run", tiny_zoo_dir)
    before = sorted(p.name for p in run.iterdir())
    err = run_cli(["analyse", "igr", "--zoo", str(tiny_zoo_dir), "--run-dir", str(run)], capsys)
    assert "not an `analyse igr` run" in err and sorted(p.name for p in run.iterdir()) == before


def test_a_wrapped_error_is_cut_at_a_sentence_or_word_not_mid_word() -> None:
    long = ("PytorchStreamReader failed reading zip archive: failed finding central directory. " * 3
            + "This is an internal miniz error. If you see this, please report it")
    text = reason(RuntimeError(long + "\nsecond line"))
    assert text.startswith("RuntimeError: PytorchStreamReader") and "second line" not in text
    assert text.endswith("directory.") and len(text) <= 260
    assert reason(OSError("short message\nmore")) == "OSError: short message"
    assert reason(ValueError("word " * 100)).endswith("word ...")


@pytest.mark.parametrize("argv,says", [
    (["data", "prepare", "--max-per-class", "-5"], "field 'max_per_class': expected >= 0"),
    (["zoo", "import", "--src", "A", "--dst", "B", "--dataset", "cifar-fss"], "unknown dataset 'cifar-fss'"),
    (["zoo", "import", "--src", "A", "--dst", "B", "--dataset", "cifar-fs+omniglot"], "one dataset expected"),
    (["data", "prepare", "--dataset", "cifar-fs+omniglot"], "one dataset expected"),
])
def test_nonsense_values_are_refused(argv, says, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert says in run_cli(argv, capsys)
    assert not any(tmp_path.iterdir())


def test_zoo_merge_refuses_a_zoo_twice_and_leaves_nothing_when_refused(tmp_path, capsys, tiny_zoo_dir) -> None:
    dst = tmp_path / "merged"
    alias = tmp_path / "alias"
    alias.symlink_to(tiny_zoo_dir)
    for src in ([str(tiny_zoo_dir), str(tiny_zoo_dir)], [str(tiny_zoo_dir), str(alias)],
                [str(tiny_zoo_dir), str(tiny_zoo_dir) + "/"]):
        err = run_cli(["zoo", "merge", "--src", *src, "--dst", str(dst)], capsys)
        assert "is given twice" in err
    assert not dst.exists()
    other = make_zoo(tmp_path / "big", n=2, size=20)  # another image size: refused after the first zoo's teachers
    err = run_cli(["zoo", "merge", "--src", str(tiny_zoo_dir), str(other), "--dst", str(dst)], capsys)
    assert "20px" in err and not (dst.exists() and any(dst.iterdir()))
