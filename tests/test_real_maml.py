"""MAML on the real meta-train split (`dfmeta baseline maml-real`): its task draws, and the run on the shared loop
(CLI end to end, learning, determinism, exact resume, bad input)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dfmeta.cli import main
from dfmeta.config import make
from dfmeta.data.dataset import FewShotSplit
from dfmeta.data.episodes import to_input
from dfmeta.errors import DfmetaError
from dfmeta.meta.real_maml import RealMAMLConfig, RealTasks, train_real_maml

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 16
TINY = dict(dataset="embedded", image_size=SIZE, device="cpu", epochs=4, val_every=2, val_episodes=4, episodes=4,
            shots=(1,), eval_steps=2, batches_per_epoch=2, meta_batch=2, train_queries=3, inner_steps=2)


def tiny(out: Path, **kw) -> RealMAMLConfig:
    return make(RealMAMLConfig, {**TINY, "out_dir": str(out), **kw})


def run_dir(out: Path) -> Path:
    (d,) = [p for p in out.iterdir() if p.is_dir()]
    return d


def split(name: str, n_classes: int, per_class: int, mean: float, std: float, seed: int) -> FewShotSplit:
    """A split whose every pixel of class c equals its class's code (so a drawn image tells its class)."""
    rng = np.random.default_rng(seed)
    codes = rng.choice(256, n_classes, replace=False).astype(np.uint8)
    images = np.repeat(codes, per_class)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    return FewShotSplit(name, images, np.full(n_classes, per_class), [f"{name}{c}" for c in range(n_classes)],
                        (mean,) * 3, (std,) * 3)


# ---------------------------------------------------------------------- task draws
def test_real_tasks_draw_distinct_classes_and_normalise_per_domain():
    a, b = split("a", 4, 6, 0.5, 0.25, 0), split("b", 3, 6, 0.2, 0.5, 1)
    tasks = RealTasks([a, b], torch.device("cpu"))
    g = torch.Generator().manual_seed(3)
    xs, ys, xq, yq = tasks.sample_tasks(50, 3, 2, 4, g)
    assert xs.shape == (50, 6, 3, 4, 4) and xq.shape == (50, 12, 3, 4, 4) and ys.shape == (50, 6)
    assert torch.equal(ys[0], torch.tensor([0, 0, 1, 1, 2, 2])) and torch.equal(yq[0], torch.arange(3).repeat_interleave(4))
    # each normalised image is one of the 7 classes' codes under its own dataset's normalisation
    refs = torch.stack([to_input(torch.from_numpy(s.images[s.starts[c]]), s.mean, s.std)
                        for s in (a, b) for c in range(s.n_classes)])                    # [7, 3, 4, 4]
    def classes(x: torch.Tensor) -> torch.Tensor:
        d = (x.unsqueeze(-4) - refs).abs().flatten(-3).amax(-1)                          # [..., 7]
        assert bool((d.min(-1).values < 1e-5).all())
        return d.argmin(-1)
    cs, cq = classes(xs).view(50, 3, 2), classes(xq).view(50, 3, 4)
    assert bool((cs == cs[..., :1]).all()) and bool((cq == cs[..., :1]).all())       # one class per label
    per_task = cs[..., 0]
    assert all(len(set(t.tolist())) == 3 for t in per_task)                            # distinct classes
    assert set(per_task.flatten().tolist()) == set(range(7))                           # both domains drawn
    again = tasks.sample_tasks(50, 3, 2, 4, torch.Generator().manual_seed(3))
    assert all(torch.equal(u, v) for u, v in zip((xs, ys, xq, yq), again))
    with pytest.raises(DfmetaError, match="a \\+ b.*K \\+ Q = 7"):
        tasks.sample_tasks(1, 3, 2, 5, g)


# ---------------------------------------------------------------------- the run
def test_cli_end_to_end_learns_on_real_tasks(tmp_path):
    args = ["baseline", "maml-real", "--dataset", "embedded", "--image-size", str(SIZE), "--out-dir", str(tmp_path),
            "--device", "cpu", "--epochs", "6", "--val-every", "3", "--val-episodes", "20", "--episodes", "20",
            "--shots", "1", "--batches-per-epoch", "3", "--meta-batch", "4", "--threads", "1"]
    assert main(args) == 0
    d = run_dir(tmp_path)
    res = json.loads((d / "results.json").read_text())
    assert res["method"] == "maml-real" and res["epochs_run"] == 6
    rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if "epoch" in r]
    assert [r["batches"] for r in epochs] == [3] * 6
    for key in ("loss", "train_acc_best", "t_train"):
        assert key in epochs[-1], key
    # MAML on the real tasks learns: the query loss of the last epoch is well below the first's
    assert epochs[-1]["loss"] < 0.85 * epochs[0]["loss"], [r["loss"] for r in epochs]
    assert not (d / "groups.json").exists() and json.loads((d / "config.json").read_text()).get("zoo") is None


def test_same_seed_identical_and_resume_equals_uninterrupted(tmp_path):
    full = train_real_maml(tiny(tmp_path / "a"))
    assert train_real_maml(tiny(tmp_path / "c")) == full
    assert train_real_maml(tiny(tmp_path / "b", stop_after=3)) == {"stopped_at": 3}
    resumed = train_real_maml(make(RealMAMLConfig, {"resume": str(run_dir(tmp_path / "b")), "device": "cpu"}))
    assert resumed == full
    a, b, c = (torch.load(run_dir(tmp_path / x) / "checkpoint.pt", weights_only=False) for x in "abc")
    for other in (b, c):
        for k in a["params"]:
            assert torch.equal(a["params"][k], other["params"][k]), k
    other_seed = torch.load(run_dir(tmp_path / "a") / "best.pt", weights_only=True)
    train_real_maml(tiny(tmp_path / "d", seed=1))
    assert not torch.equal(torch.load(run_dir(tmp_path / "d") / "best.pt", weights_only=True)["head.weight"],
                           other_seed["head.weight"])


def test_bad_input_before_compute(tmp_path):
    for field, value in (("batches_per_epoch", 0), ("meta_batch", 0), ("train_queries", 0), ("inner_steps", -1)):
        with pytest.raises(DfmetaError, match=field):
            tiny(tmp_path, **{field: value})
    with pytest.raises(DfmetaError, match="K \\+ Q"):
        train_real_maml(tiny(tmp_path / "big", train_queries=10_000))
    assert not (tmp_path / "big").exists()  # neither the run directory nor the out-dir it made is left


def test_presets_are_valid_configs():
    from dfmeta.commands.maml_real import PRESETS
    assert PRESETS and not any(name.startswith("multi-arch") for name in PRESETS)
    for name, values in PRESETS.items():
        assert make(RealMAMLConfig, values).epochs >= 1, name
