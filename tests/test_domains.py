"""The multi-domain scenario: dataset specs, grey to colour, episodes on each dataset, pooled results, zoo merge, and a
TGR run whose zoo mixes two datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_zoo
from dfmeta.config import make
from dfmeta.data.dataset import FewShotSplit
from dfmeta.data.domains import check_dataset_spec, dataset_names, load_domains, with_channels
from dfmeta.data.embedded import embedded_split
from dfmeta.data.registry import DATASETS, DatasetSpec
from dfmeta.errors import DfmetaError
from dfmeta.evaluate import DomainEvaluator, Evaluator
from dfmeta.meta.trainer import TrainConfig, train
from dfmeta.nets import build, params_of
from dfmeta.zoo import load_zoo
from dfmeta.zoo.format import Teacher, save_teacher, write_manifest
from dfmeta.zoo.merge import merge_zoos

pytestmark = pytest.mark.usefixtures("one_thread")


def _grey(root, split, size, use_cache) -> FewShotSplit:
    s = embedded_split(split, seed=5, per_class=20, size=size or 16)
    grey = s.images.mean(axis=3, keepdims=True).round().astype(np.uint8)
    return FewShotSplit(f"grey/{split}", grey, s.counts, [f"grey_{n}" for n in s.class_names], (0.5,), (0.2,))


@pytest.fixture(autouse=True)
def grey_dataset():
    DATASETS["grey-test"] = DatasetSpec("grey-test", _grey, 16, 1, "grey patterns (tests only)")
    yield
    DATASETS.pop("grey-test")


def test_specs_and_errors() -> None:
    assert dataset_names("cifar-fs+omniglot") == ["cifar-fs", "omniglot"]
    check_dataset_spec("embedded+grey-test")
    with pytest.raises(DfmetaError, match="unknown dataset 'nope'"):
        check_dataset_spec("embedded+nope")
    with pytest.raises(DfmetaError, match="twice"):
        check_dataset_spec("embedded+embedded")


def test_grey_becomes_colour_and_sizes_must_agree() -> None:
    g = _grey(None, "val", 16, False)
    c = with_channels(g, 3)
    assert c.channels == 3 and c.mean == (0.5,) * 3 and c.std == (0.2,) * 3
    assert np.array_equal(c.images[..., 0], c.images[..., 2]) and np.array_equal(c.images[..., :1], g.images)
    with pytest.raises(DfmetaError, match="3-channel images, cannot make 1"):
        with_channels(embedded_split("val", per_class=2, size=8), 1)
    splits = load_domains("embedded+grey-test", "val", image_size=16)
    assert [s.channels for s in splits] == [3, 3] and [s.image_size for s in splits] == [16, 16]
    with pytest.raises(DfmetaError, match="different image sizes"):
        load_domains("embedded+grey-test", "val")  # embedded is 32 px, grey-test 16 px


def test_domain_evaluator_pools_each_datasets_episodes() -> None:
    splits = load_domains("embedded+grey-test", "val", image_size=16)
    torch.manual_seed(0)
    model = build("conv4", 5, 16, 3, "batch")
    p = params_of(model)
    multi = DomainEvaluator(splits, 5, 1, 2, 4, seed=3, steps=1)(model, p)
    assert len(multi.accs) == 8 and set(multi.parts) == {"embedded/val", "grey/val"}  # 4 episodes of each
    alone = [Evaluator(s, 5, 1, 2, 4, seed=3 + i, steps=1)(model, p) for i, s in enumerate(splits)]
    np.testing.assert_allclose(multi.accs, np.concatenate([a.accs for a in alone]))
    assert multi.parts["grey/val"].mean == pytest.approx(alone[1].mean)
    assert set(multi.as_dict()["domains"]) == {"embedded/val", "grey/val"}
    single = DomainEvaluator(splits[:1], 5, 1, 2, 4, seed=3, steps=1)(model, p)
    assert single.parts == {} and single.mean == pytest.approx(alone[0].mean)


def _grey_zoo(path: Path, n: int = 3) -> Path:
    """Teachers of the grey dataset, taking 16 px colour input (as `zoo build --channels 3` makes them)."""
    entries = []
    for i in range(n):
        torch.manual_seed(200 + i)
        m = build("conv4", 5, 16, 3, "running")
        t = Teacher(str(i), "conv4", 16, 3, (0.5,) * 3, (0.2,) * 3, "grey-test",
                    [f"grey_pattern_{5 * i + j:03d}" for j in range(5)], dict(m.state_dict()))
        entries.append(save_teacher(path, t))
    write_manifest(path, entries)
    return path


def test_zoo_merge_renumbers_and_keeps_each_teacher(tmp_path) -> None:
    a, b = make_zoo(tmp_path / "a", n=2), _grey_zoo(tmp_path / "b", n=3)
    assert merge_zoos([str(a), str(b)], tmp_path / "ab") == 5
    ab = load_zoo(tmp_path / "ab")
    assert [t.id for t in ab.teachers] == ["0", "1", "2", "3", "4"]
    assert [t.dataset for t in ab.teachers] == ["embedded"] * 2 + ["grey-test"] * 3
    assert ab[3].recipe["merged_from"] == {"zoo": str(b), "id": "1"} and ab[3].std == (0.2,) * 3
    src = load_zoo(b)[1].state
    assert all(torch.equal(ab[3].state[k], v) for k, v in src.items())
    with pytest.raises(DfmetaError, match="already holds a zoo"):
        merge_zoos([str(a)], tmp_path / "ab")
    make_zoo(tmp_path / "c", n=1, size=32)
    with pytest.raises(DfmetaError, match="32px"):
        merge_zoos([str(a), str(tmp_path / "c")], tmp_path / "ac")


def test_multi_domain_training_reports_each_domain(tmp_path, capsys) -> None:
    merge_zoos([str(make_zoo(tmp_path / "a", n=3)), str(_grey_zoo(tmp_path / "b", n=3))], tmp_path / "ab")
    cfg = make(TrainConfig, dict(dataset="embedded+grey-test", image_size=16, zoo=str(tmp_path / "ab"),
                                 out_dir=str(tmp_path / "runs"), device="cpu", epochs=2, val_every=2,
                                 teachers_per_epoch=2, grouping="off", rec_steps=2, rec_per_class=2, rec_nf=8,
                                 val_episodes=4, episodes=6, shots=(1,), meta_batch=2, replay_max_batches=1,
                                 replay_queries=1, eval_steps=1))
    res = train(cfg)
    assert "warning" not in capsys.readouterr().out
    test = res["test"]["1"]
    assert test["episodes"] == 12 and set(test["domains"]) == {"embedded/test", "grey/test"}
    assert [d["episodes"] for d in test["domains"].values()] == [6, 6]  # --episodes on each, as the paper's 600
    (run,) = (tmp_path / "runs").iterdir()
    assert json.loads((run / "results.json").read_text())["dataset"] == "embedded+grey-test"


def test_zoo_build_makes_colour_teachers_of_a_grey_dataset(tmp_path) -> None:
    from dfmeta.cli import main
    args = ["zoo", "build", "--dataset", "grey-test", "--teachers", "1", "--epochs", "1", "--batch-size", "16",
            "--zoo", str(tmp_path / "z"), "--device", "cpu"]
    assert main(args + ["--channels", "3"]) == 0
    t = load_zoo(tmp_path / "z")[0]
    assert (t.in_channels, t.image_size, t.std) == (3, 16, (0.2,) * 3)
    assert main(args) == 2  # resuming with other channels is refused
    assert main(["zoo", "build", "--dataset", "embedded+grey-test", "--zoo", str(tmp_path / "y")]) == 2


def test_a_zoo_missing_a_domain_is_announced(tmp_path, capsys) -> None:
    cfg = make(TrainConfig, dict(dataset="embedded+grey-test", image_size=16, zoo=str(make_zoo(tmp_path / "a", n=3)),
                                 out_dir=str(tmp_path / "runs"), device="cpu", epochs=1, grouping="off",
                                 teachers_per_epoch=2, rec_steps=1, rec_per_class=2, rec_nf=8, val_episodes=2,
                                 episodes=2, shots=(1,), replay=False, eval_steps=1))
    train(cfg)
    assert "warning: no teacher of the zoo comes from grey-test" in capsys.readouterr().out
