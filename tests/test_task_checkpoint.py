"""A grouping killed while it recovers the zoo's tasks resumes after its last saved chunk, with the same result."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_zoo
from test_trainer import final_state, run_dir, tiny

from dfmeta import task_checkpoint
from dfmeta.config import make
from dfmeta.meta.trainer import TrainConfig, train
from dfmeta.recover import RecoveredTask, by_architecture

pytestmark = pytest.mark.usefixtures("one_thread")


class Killed(Exception):
    """Stands for a kill (SIGKILL cannot be caught; what matters is that the call ends there)."""


def fake(part: list[int]) -> list[RecoveredTask]:
    return [RecoveredTask(torch.full((2, 1, 2, 2), float(i)), torch.arange(2), torch.randn(2, 2), i, 0.5 * i)
            for i in part]


def test_chunks_saved_and_loaded(tmp_path):
    folder, calls, kill = tmp_path / "tasks", [], [2]

    def recover(part):
        calls.append(part)
        if len(calls) == kill[0]:
            raise Killed
        return fake(part)
    with pytest.raises(Killed):
        task_checkpoint.recover_resumably(folder, {"seed": 1}, [0, 1, 2, 3, 4], 2, recover, torch.device("cpu"))
    seen = []
    tasks = task_checkpoint.recover_resumably(folder, {"seed": 1}, [0, 1, 2, 3, 4], 2, recover,
                                              torch.device("cpu"), lambda part, loaded: seen.append((part, loaded)))
    assert calls == [[0, 1], [2, 3], [2, 3], [4]]  # the first chunk was not recovered again
    assert seen == [([0, 1], True), ([2, 3], False), ([4], False)]
    assert [t.teacher for t in tasks] == [0, 1, 2, 3, 4]
    assert all(torch.equal(t.images, torch.full((2, 1, 2, 2), float(t.teacher))) for t in tasks)
    calls.clear()
    kill[0] = 0
    task_checkpoint.recover_resumably(folder, {"seed": 2}, [0, 1, 2, 3, 4], 2, recover, torch.device("cpu"))
    assert calls == [[0, 1], [2, 3], [4]]  # other settings: nothing of the old chunks is used
    task_checkpoint.discard(folder)
    assert not folder.exists()


def test_damaged_chunk_is_recovered_again(tmp_path):
    folder, calls = tmp_path / "tasks", []
    recover = lambda part: calls.append(part) or fake(part)  # noqa: E731
    task_checkpoint.recover_resumably(folder, {}, [0, 1, 2], 2, recover, torch.device("cpu"))
    (folder / "chunk-000000.pt").write_bytes(b"cut short")
    calls.clear()
    task_checkpoint.recover_resumably(folder, {}, [0, 1, 2], 2, recover, torch.device("cpu"))
    assert calls == [[0, 1]]


def test_by_architecture_keeps_order_within_an_architecture(tmp_path):
    from types import SimpleNamespace
    t = [SimpleNamespace(arch=a, image_size=32, in_channels=3, num_classes=5) for a in "abab"]
    assert by_architecture(t, [0, 1, 2, 3]) == [0, 2, 1, 3]
    assert by_architecture(t, [3, 2, 1]) == [3, 1, 2]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return make_zoo(tmp_path_factory.mktemp("zoo"))


def killed_in_grouping(monkeypatch, module, after: int):
    """Make ``module.recover_tasks`` raise :class:`Killed` once, on its call number ``after + 1``; returns the calls
    (a list the test may clear)."""
    real, calls, armed = module.recover_tasks, [], [True]

    def spy(teachers, indices, *a, **kw):
        calls.append(list(indices))
        if armed[0] and len(calls) == after + 1:
            armed[0] = False
            raise Killed
        return real(teachers, indices, *a, **kw)
    monkeypatch.setattr(module, "recover_tasks", spy)
    return calls


def test_train_killed_in_grouping_resumes_where_it_stopped(zoo, tmp_path, monkeypatch):
    import dfmeta.meta.trainer as trainer_module
    monkeypatch.setattr(trainer_module, "teachers_per_batch", lambda *a, **kw: 2)  # three chunks of the six
    full = train(tiny(zoo, tmp_path / "a", epochs=2))
    calls = killed_in_grouping(monkeypatch, trainer_module, after=2)
    with pytest.raises(Killed):
        train(tiny(zoo, tmp_path / "b", epochs=2))
    folder = run_dir(tmp_path / "b") / task_checkpoint.FOLDER
    assert sorted(p.name for p in folder.glob("chunk-*.pt")) == ["chunk-000000.pt", "chunk-000002.pt"]
    calls.clear()
    resumed = train(make(TrainConfig, {"resume": str(run_dir(tmp_path / "b")), "device": "cpu"}))
    assert calls[0] == [4, 5]  # the grouping recovered only its last chunk; the epochs' recoveries follow
    assert not folder.exists()
    assert resumed == full
    a, b = final_state(tmp_path / "a"), final_state(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ga, gb = (json.loads((run_dir(tmp_path / x) / "groups.json").read_text()) for x in "ab")
    assert ga["labels"] == gb["labels"]


def test_group_killed_in_recovery_resumes_with_run_dir(zoo, tmp_path, monkeypatch):
    import dfmeta.commands.group as group_module
    from dfmeta.cli import main
    args = ["group", "--zoo", str(zoo), "--steps", "2", "--per-class", "2", "--nf", "8", "--groups", "2",
            "--fisher-samples", "2", "--chunk", "2", "--device", "cpu"]
    assert main(args + ["--out-dir", str(tmp_path / "a")]) == 0
    calls = killed_in_grouping(monkeypatch, group_module, after=1)
    with pytest.raises(Killed):
        main(args + ["--out-dir", str(tmp_path / "b")])
    calls.clear()
    assert main(args + ["--run-dir", str(run_dir(tmp_path / "b"))]) == 0
    assert calls == [[2, 3], [4, 5]]
    assert not (run_dir(tmp_path / "b") / task_checkpoint.FOLDER).exists()
    with np.load(run_dir(tmp_path / "a") / "fisher.npz") as za, np.load(run_dir(tmp_path / "b") / "fisher.npz") as zb:
        assert np.array_equal(za["W"], zb["W"]) and np.array_equal(za["labels"], zb["labels"])
