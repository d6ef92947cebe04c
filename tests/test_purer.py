"""PURER (ECI) at toy scale: end to end through the CLI, determinism, exact resume, the inversion and adversarial
steps, pseudo-episode sampling, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_zoo

from dfmeta.cli import main
from dfmeta.config import make
from dfmeta.errors import DfmetaError
from dfmeta.meta.maml import maml_loss
from dfmeta.meta.purer import PseudoData, PurerConfig, sample_episodes, train_purer
from dfmeta.nets import build, params_of
from dfmeta.zoo import load_zoo

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(dataset="embedded", image_size=16, device="cpu", epochs=4, iterations=2, val_every=2, val_episodes=3,
            episodes=3, shots=(1,), eval_steps=2, meta_batch=2, train_queries=2, adv_start=1, adv_patience=2)


def tiny(zoo: Path, out: Path, **kw) -> PurerConfig:
    return make(PurerConfig, {**TINY, "zoo": str(zoo), "out_dir": str(out), **kw})


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    return make_zoo(tmp_path_factory.mktemp("zoo"), n=3)


def run_dir(out: Path) -> Path:
    (d,) = [p for p in out.iterdir() if p.is_dir()]
    return d


def checkpoint(out: Path) -> dict:
    return torch.load(run_dir(out) / "checkpoint.pt", weights_only=False)


def metrics(out: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir(out) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("t_")} for r in rows]


def test_cli_end_to_end_writes_results(zoo, tmp_path):
    args = ["baseline", "purer", "--dataset", "embedded", "--image-size", "16", "--zoo", str(zoo), "--device", "cpu",
            "--epochs", "2", "--iterations", "2", "--val-every", "1", "--val-episodes", "3", "--episodes", "3",
            "--shots", "1", "5", "--eval-steps", "2", "--meta-batch", "2", "--train-queries", "2", "--adv-start", "1",
            "--out-dir", str(tmp_path)]
    assert main(args) == 0
    res = json.loads((run_dir(tmp_path) / "results.json").read_text())
    assert res["method"] == "purer" and set(res["test"]) == {"1", "5"}
    assert all(0 <= r["acc"] <= 100 and r["episodes"] == 3 for r in res["test"].values())
    rows = [r for r in metrics(tmp_path) if "epoch" in r]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"loss", "train_acc", "inv_ce", "inv_bn", "adv_steps", "val_acc"} <= set(rows[-1])
    assert [r["adv_steps"] for r in rows][0] == 1  # the switch turned on after meta-iteration adv_start = 1


def test_same_seed_identical_and_resume_exact(zoo, tmp_path):
    full = train_purer(tiny(zoo, tmp_path / "a"))
    again = train_purer(tiny(zoo, tmp_path / "b"))
    assert train_purer(tiny(zoo, tmp_path / "c", stop_after=3)) == {"stopped_at": 3}
    resumed = train_purer(make(PurerConfig, {"resume": str(run_dir(tmp_path / "c")), "device": "cpu"}))
    assert full == again == resumed
    a, b, c = (checkpoint(tmp_path / x) for x in "abc")
    for other in (b, c):
        for k in a["params"]:
            assert torch.equal(a["params"][k], other["params"][k]), k
        assert a["extra"] == other["extra"] == {}  # a finished run's checkpoint drops the pseudo data; the
        # resumed epochs' inversion losses (metrics below) show it was restored exactly at the stop
    assert metrics(tmp_path / "a") == metrics(tmp_path / "b") == metrics(tmp_path / "c")
    assert sum(r.get("adv_steps", 0) for r in metrics(tmp_path / "a")) >= 2  # adversarial steps on both sides


def test_gradient_switch_rule(zoo, tmp_path):
    """On after meta-iteration adv_start, used once, then on again after adv_patience iterations without a new best."""
    from types import SimpleNamespace

    from dfmeta.meta.purer import PurerTrainer
    t = SimpleNamespace(cfg=tiny(zoo, tmp_path, adv_start=2, adv_patience=2),
                        switch={"on": False, "best": None, "stale": 0})
    on = []
    for it, acc in enumerate([0.1, 0.2, 0.3, 0.4, 0.35, 0.3, 0.5, 0.2, 0.2], start=1):
        if t.switch["on"]:
            on.append(it)
            t.switch["on"] = False  # consumed by the inversion step of iteration it
        PurerTrainer.feedback(t, it, acc)
    assert on == [3, 7]
    assert PurerTrainer.adversarial_weight(SimpleNamespace(cfg=t.cfg, switch={"on": True}), 1) == 10.0
    ramp = SimpleNamespace(cfg=tiny(zoo, tmp_path, adv_schedule="ramp", adv_start=2), switch={"on": False})
    assert [PurerTrainer.adversarial_weight(ramp, it) for it in (2, 5, 8)] == [0.0, 5.0, 10.0]


def test_average_init_is_the_zoo_mean(zoo, tmp_path):
    from dfmeta.meta.purer import PurerTrainer
    from dfmeta.runs import RunDir
    cfg = tiny(zoo, tmp_path)
    trainer = PurerTrainer(cfg, RunDir.new(cfg.out_dir, cfg.dataset, "purer", cfg.seed, cfg))
    teachers = load_zoo(zoo).teachers
    for k, p in trainer.params.items():
        torch.testing.assert_close(p.detach(), torch.stack([t.state[k] for t in teachers]).mean(0))


def pseudo(zoo: Path, n: int, **kw) -> PseudoData:
    cfg = make(PurerConfig, {**TINY, "zoo": str(zoo), **kw})
    return PseudoData(load_zoo(zoo).teachers[:n], cfg, torch.device("cpu"))


def inversion_losses(p: PseudoData) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return torch.cat([p.inversion_loss(m, model, s, g)[0] for m, model, s in p.groups])


def test_inversion_steps_lower_the_inversion_loss(zoo):
    p = pseudo(zoo, 2, jitter=0)
    before = inversion_losses(p)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        p.step(g)
    after = inversion_losses(p)
    assert before.shape == (2,) and bool((after < before).all()), (before, after)


def meta_loss(p: PseudoData, model, params) -> float:
    """Mean MAML query loss over fixed episodes of the pseudo data."""
    g = torch.Generator().manual_seed(5)
    xs, ys, xq, yq = sample_episodes(p.pool(detach=True), 8, 5, 1, 2, g)
    return float(maml_loss(model, params, xs, ys, xq, yq, 0.01, 1)[0]) / 8


def test_adversarial_term_makes_episodes_harder(zoo):
    """Ascent on the meta-model's episode loss (the reversed outer loss) raises it; plain inversion does not."""
    torch.manual_seed(0)
    model = build("conv4", 5, 16, 3, bn="batch")
    params = params_of(model)
    plain, adv = pseudo(zoo, 1), pseudo(zoo, 1)
    start = meta_loss(adv, model, params)
    g1, g2 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    for _ in range(3):
        plain.step(g1)
        xs, ys, xq, yq = sample_episodes(adv.pool(), 1, 5, 1, 2, g2)
        loss, _ = maml_loss(model, params, xs, ys, xq, yq, 0.01, 1)
        adv.step(g2, 1e3 * loss)
    assert adv.data.grad is not None
    hard, easy = meta_loss(adv, model, params), meta_loss(plain, model, params)
    assert hard > start and hard > easy, (start, easy, hard)


def test_sample_episodes_shapes_and_distinct_draws():
    pool = torch.arange(7 * 4, dtype=torch.float).view(7, 4, 1, 1, 1).expand(7, 4, 1, 2, 2).clone()
    xs, ys, xq, yq = sample_episodes(pool, 3, 5, 1, 2, torch.Generator().manual_seed(0))
    assert xs.shape == (3, 5, 1, 2, 2) and xq.shape == (3, 10, 1, 2, 2)
    assert ys.tolist()[0] == [0, 1, 2, 3, 4] and yq.tolist()[0] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    ids_s, ids_q = xs[..., 0, 0, 0].long(), xq[..., 0, 0, 0].long()
    for t in range(3):
        cls_s = (ids_s[t] // 4).tolist()
        assert len(set(cls_s)) == 5                                            # distinct classes
        assert (ids_q[t] // 4).view(5, 2).tolist() == [[c, c] for c in cls_s]  # query of the same classes
        assert len(set(ids_s[t].tolist()) | set(ids_q[t].tolist())) == 15      # images without replacement
    with pytest.raises(DfmetaError, match="pseudo episodes"):
        sample_episodes(pool, 1, 8, 1, 2, torch.Generator())


def test_bad_input(zoo, tmp_path):
    with pytest.raises(DfmetaError, match="per_class"):
        tiny(zoo, tmp_path, per_class=2)
    for field, value in [("iterations", 0), ("adv_scale", -1.0), ("adv_patience", 0), ("inv_lr", 0.0)]:
        with pytest.raises(DfmetaError, match=field):
            tiny(zoo, tmp_path, **{field: value})
    with pytest.raises(DfmetaError, match="no resnet10 teacher"):
        train_purer(tiny(zoo, tmp_path, arch="resnet10"))
    with pytest.raises(DfmetaError, match="unknown field"):
        make(PurerConfig, {"zoo": "x", "no_such_field": 1})


def test_presets_are_valid_configs():
    from dfmeta.commands.purer import PRESETS
    for name, values in PRESETS.items():
        cfg = make(PurerConfig, {"zoo": "z", **values})
        assert cfg.images_per_class == cfg.train_shot + 15, name
    assert PRESETS["multi-arch-1shot"]["init"] == "random" and PRESETS["ei"]["adv_schedule"] == "off"
