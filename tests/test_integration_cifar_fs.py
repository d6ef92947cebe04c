"""Integration: CIFAR-FS from ../shared/data and the reference zoo, at a scale a CI machine affords."""

from __future__ import annotations

import json

import pytest

from conftest import require_data, require_zoo
from dfmeta.baselines import BASELINES, BaselineInput
from dfmeta.config import make
from dfmeta.data import load_split
from dfmeta.evaluate import Evaluator
from dfmeta.meta.trainer import TrainConfig, train
from dfmeta.zoo import load_zoo, save_teacher, write_manifest
from dfmeta.zoo.authors import import_authors_zoo


@pytest.fixture(scope="module")
def reference_zoo(tmp_path_factory):
    require_data("cifar100")
    src = require_zoo()
    full = tmp_path_factory.mktemp("zoo-full")
    import_authors_zoo(src, full)
    return full


def test_finetune_on_cifar_fs_is_in_the_expected_range():
    root = require_data("cifar100").parent
    test = load_split("cifar-fs", "test", root)
    init = BASELINES["finetune"](BaselineInput("conv4", 5, 32, 3, 0))
    res = Evaluator(test, 5, 1, 15, 40, seed=0)(init.model, init.params)
    # 600-episode figure: 31.1 (docs/results); 40 episodes scatter around it
    assert 24 < res.mean < 40, res


def test_tgr_runs_from_the_reference_zoo(reference_zoo, tmp_path, one_thread):
    zoo = load_zoo(reference_zoo)
    small = tmp_path / "zoo"
    write_manifest(small, [save_teacher(small, t) for t in zoo.teachers[:6]])
    cfg = make(TrainConfig, dict(
        dataset="cifar-fs", data_root=str(require_data("cifar100").parent), zoo=str(small), out_dir=str(tmp_path),
        device="cpu", epochs=2, val_every=1, teachers_per_epoch=2, groups=2, small_groups="merge", rec_steps=2,
        rec_per_class=2, rec_nf=8, val_episodes=4, episodes=4, meta_batch=2, replay_max_batches=1, fisher_samples=2,
        replay_queries=1))
    res = train(cfg)
    assert set(res["test"]) == {"1", "5"} and res["epochs_run"] == 2
    run = next(p for p in tmp_path.iterdir() if p.name.startswith("cifar-fs__tgr"))
    assert json.loads((run / "results.json").read_text()) == res
