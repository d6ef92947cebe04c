"""dfmeta report: run directories fabricated in tmp_path -> tables (numbers, CI, the paper's rows), plots, errors."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from dfmeta.cli import main
from dfmeta.errors import DfmetaError
from dfmeta.report import build_report
from dfmeta.zoo.format import write_manifest


def _write(d: Path, name: str, obj) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(json.dumps(obj))


def train_run(root: Path, name: str, accs: dict[int, tuple[float, float]] | None, *, method: str = "tgr",
              dataset: str = "cifar-fs", train_shot: int = 1, epochs: int = 100, epochs_run: int = 100,
              selected: int = 80, domains: dict[int, dict[str, tuple[float, float]]] | None = None,
              zoo_archs: list[str] | None = None, **cfg) -> Path:
    """A meta-training run directory; ``accs=None``: unfinished (no results.json)."""
    d = root / name
    config = dict(dataset=dataset, seed=0, zoo="", zoo_size=0, train_shot=train_shot, epochs=epochs, val_every=20,
                  episodes=600, rec_nf=64)
    if method == "tgr":
        config.update(grouping="dissimilarity", igr="first", groups=5, kd=True, ce=True, replay=True,
                      fisher_cosine="whole")
    config.update(cfg)
    _write(d, "config.json", config)
    rows = [{"epoch": e, "loss": 1.0, "t_recover": 0.1} for e in range(1, epochs_run + 1)]
    if accs is not None:
        test = {str(k): {"acc": a, "ci95": c, "episodes": 600} for k, (a, c) in accs.items()}
        for k, parts in (domains or {}).items():
            test[str(k)]["domains"] = {n: {"acc": a, "ci95": c, "episodes": 300} for n, (a, c) in parts.items()}
        _write(d, "results.json", {"method": method, "dataset": dataset, "epochs_run": epochs_run,
                                   "selected_epoch": selected, "val_acc": 33.33, "test": test,
                                   **({"zoo_archs": zoo_archs} if zoo_archs else {})})
    else:
        rows[-1]["val_acc"] = 33.33
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def eval_run(root: Path, name: str, method: str, accs: dict[int, tuple[float, float]], dataset: str = "cifar-fs",
             split: str = "test") -> Path:
    d = root / name
    _write(d, "config.json", dict(dataset=dataset, seed=0, method=method, split=split, zoo=""))
    _write(d, "results.json", {"method": method, "split": split,
                               "results": {str(k): {"acc": a, "ci95": c, "episodes": 600} for k, (a, c) in accs.items()}})
    return d


def table(text: str, title: str) -> str:
    """The section of ``text`` under the heading that starts with ``title`` (up to the next heading)."""
    m = re.search(rf"^## {re.escape(title)}.*?(?=^## |\Z)", text, re.S | re.M)
    assert m, f"no section {title!r} in:\n{text}"
    return m.group(0)


def test_main_table_seeds_ci_paper_rows_and_sources(tmp_path) -> None:
    runs = tmp_path / "runs"
    train_run(runs / "a", "cifar-fs__tgr__0__x", {1: (40.0, 0.6), 5: (50.0, 0.7)})
    train_run(runs / "b", "cifar-fs__tgr__1__x", {1: (42.0, 0.8), 5: (52.0, 0.9)}, epochs_run=60, selected=40)
    train_run(runs, "cifar-fs__tgr5__0__x", {1: (39.0, 0.5), 5: (56.5, 0.75)}, train_shot=5)
    eval_run(runs, "cifar-fs__finetune__0__x", "finetune", {1: (31.13, 0.63), 5: (43.14, 0.72)})
    train_run(runs, "cifar-fs__purer__0__x", {1: (37.0, 0.5)}, method="purer", zoo_size=0, adv_scale=1.0)
    train_run(runs, "cifar-fs__maml-real__0__x", {1: (50.0, 0.7)}, method="maml-real", batches_per_epoch=8)
    text = build_report([str(runs)])
    main_t = table(text, "Main results")
    # 1-shot: two seeds meta-trained at K=1 (mean, mean CI, sd); 5-shot: the run meta-trained at K=5 only
    assert re.search(r"\| TGR \| ours \| 41\.00 ± 0\.70 \(n=2, sd 1\.41\)\* \[\d+\] \| 56\.50 ± 0\.75 \[\d+\] \|", main_t)
    assert "| TGR | *paper* (Wei et al., ICML 2024) | 43.58 | 57.49 |" in main_t
    assert re.search(r"\| Finetune \| ours \| 31\.13 ± 0\.63 \[\d+\] \| 43\.14 ± 0\.72 \[\d+\] \|", main_t)
    assert "| Finetune | *paper* (Wei et al., ICML 2024) | 28.59 | 34.77 |" in main_t
    # our cells and the paper's never share a row
    for line in main_t.splitlines():
        assert not ("ours" in line and "paper" in line)
    # the footnote names both seeds, their own numbers, epochs run and the selected epoch
    assert ("`cifar-fs__tgr__0__x` 40.00 ± 0.60: epochs 100/100, selected epoch 80, 600 episodes; "
            "`cifar-fs__tgr__1__x` 42.00 ± 0.80: epochs 60/100 (ended early), selected epoch 40") in main_t
    assert "`cifar-fs__finetune__0__x`: finetune evaluated on split test" in main_t
    assert re.search(r"\| PURER \| ours \| 37\.00 ± 0\.50 \[\d+\] \| — \|", main_t)
    assert "BiDf-MKD | *paper* (Wei et al., ICML 2024) | 37.66 | 51.16 |" in main_t  # reference rows without ours
    # the data-based reference point is named as not data-free, below the paper's methods
    rows = [line.split(" | ")[0] for line in main_t.splitlines() if line.startswith("| ")]
    assert rows[-1] == "| MAML on real data (not data-free)" and re.search(
        r"\| MAML on real data \(not data-free\) \| ours \| 50\.00 ± 0\.70 \[\d+\] \| — \|", main_t)


def test_other_shot_runs_marked(tmp_path) -> None:
    train_run(tmp_path, "cifar-fs__tgr__0__x", {1: (40.0, 0.6), 5: (50.0, 0.7)})
    main_t = table(build_report([str(tmp_path)]), "Main results")
    assert re.search(r"\| TGR \| ours \| 40\.00 ± 0\.60 \[1\] \| 50\.00 ± 0\.70† \[2\] \|", main_t)
    assert "[2] `cifar-fs__tgr__0__x`: epochs 100/100, selected epoch 80, meta-trained at K=1" in main_t


def test_unfinished_listed_without_numbers(tmp_path) -> None:
    train_run(tmp_path, "cifar-fs__tgr__0__done", {1: (40.0, 0.6)})
    train_run(tmp_path, "cifar-fs__purer__0__running", None, method="purer", epochs_run=7)
    text = build_report([str(tmp_path)])
    assert ": 1 finished run, 0 analysis runs, 1 unfinished." in text.splitlines()[2]
    unf = table(text, "Unfinished runs")
    assert "| `cifar-fs__purer__0__running` | train | PURER | CIFAR-FS | epoch 7 of 100 | no results.json |" in unf
    # its meta-val so far (33.33 at epoch 7: best and last) is under Meta-validation only, never a result
    assert "| PURER | ours" not in text and text.count("33.33") == 2 == table(text, "Meta-validation").count("33.33")


def test_variants_get_their_own_rows(tmp_path) -> None:
    train_run(tmp_path, "a", {1: (40.0, 0.6)}, rec_nf=64)
    train_run(tmp_path, "b", {1: (30.0, 0.6)}, rec_nf=16)
    # fields that differ only between datasets (T = 1000 / 1200) split nothing
    train_run(tmp_path, "c", {1: (36.0, 0.6)}, dataset="miniimagenet", epochs=1200, epochs_run=1200)
    main_t = table(build_report([str(tmp_path)]), "Main results")
    assert "epochs=" not in main_t and re.search(r"\| 36\.00 ± 0\.60 \[\d\] \|", main_t)
    assert re.search(r"\| TGR \[rec_nf=16\] \| ours \| 30\.00 ± 0\.60 \[\d\] \|", main_t)
    assert re.search(r"\| TGR \[rec_nf=64\] \| ours \| 40\.00 ± 0\.60 \[\d\] \|", main_t)
    assert "n=2" not in main_t


def test_fast_paths_never_split_rows_but_are_footnoted(tmp_path) -> None:
    """Runs that differ only in a fast path (the same computation up to rounding) are seeds of one row, also where
    an older record lacks a newer fast path's field (rec_overlap)."""
    train_run(tmp_path, "gpu", {1: (44.0, 0.6)}, seed=1, rec_amp="bf16", rec_batching="grouped", rec_prefetch=8,
              rec_overlap="on")
    train_run(tmp_path, "cpu", {1: (42.0, 0.6)}, rec_amp="off", rec_batching="vmap", rec_prefetch=1)
    main_t = table(build_report([str(tmp_path)]), "Main results")
    assert re.search(r"\| TGR \| ours \| 43\.00 ± 0\.60 \(n=2", main_t) and "TGR [" not in main_t
    gpu = [ln for ln in main_t.splitlines() if "`gpu`" in ln]
    assert len(gpu) == 1 and "rec_amp=bf16" in gpu[0] and "rec_batching=grouped" in gpu[0]


def test_fast_path_set_covers_the_speed_settings() -> None:
    from dataclasses import fields

    from dfmeta.recover import FastRecoveryFields
    from dfmeta.report.collect import SPEED
    assert {f.name for f in fields(FastRecoveryFields)} | {"rec_prefetch", "rec_overlap", "replay_graph"} == SPEED


def test_footnotes_name_settings_away_from_the_defaults(tmp_path) -> None:
    """A reduced-size run says so beside its number; the source of its groups (a path) neither shows nor splits."""
    train_run(tmp_path, "cifar-fs__tgr__0__small", {1: (35.0, 0.7)}, rec_nf=16, rec_steps=30, val_episodes=300,
              groups_from="/x/g5")
    train_run(tmp_path, "cifar-fs__tgr__1__small", {1: (36.0, 0.7)}, seed=1, rec_nf=16, rec_steps=30,
              val_episodes=300, groups_from="/x/other")
    train_run(tmp_path, "cifar-fs__tgr__0__paper", {1: (44.0, 0.7)}, epochs=1000, epochs_run=1000)
    main_t = table(build_report([str(tmp_path)]), "Main results")
    small = [ln for ln in main_t.splitlines() if "__small" in ln]
    assert len(small) == 1 and small[0].count("(set away from the defaults: rec_nf=16, rec_steps=30, "
                                              "val_episodes=300)") == 2
    paper = [ln for ln in main_t.splitlines() if "__paper" in ln]
    assert len(paper) == 1 and "set away" not in paper[0] and "groups_from" not in main_t
    assert re.search(r"\| TGR \[epochs=100, rec_nf=16, rec_steps=30, val_episodes=300\] \| ours \| 35\.50 ± 0\.70 \(n=2",
                     main_t)  # one row: the two runs differ only in seed and where their groups came from


def test_ablation_tables(tmp_path) -> None:
    train_run(tmp_path, "tgr", {1: (44.0, 0.6)})
    train_run(tmp_path, "vanilla", {1: (41.0, 0.6)}, grouping="off", igr="off")
    train_run(tmp_path, "grouping", {1: (42.0, 0.6)}, igr="off")
    train_run(tmp_path, "kd", {1: (38.0, 0.6)}, ce=False)
    train_run(tmp_path, "sim", {1: (40.5, 0.6)}, grouping="similarity")
    train_run(tmp_path, "c3", {5: (48.5, 0.7)}, dataset="miniimagenet", train_shot=5, groups=3)
    train_run(tmp_path, "mini", {5: (49.5, 0.7)}, dataset="miniimagenet", train_shot=5)
    train_run(tmp_path, "z10", {1: (35.0, 0.6)}, zoo_size=10)
    train_run(tmp_path, "several", {1: (30.0, 0.6)}, replay=False, kd=False)
    eval_run(tmp_path, "ft", "finetune", {1: (31.0, 0.6)})  # a main-table run without TGR's switches
    text = build_report([str(tmp_path)])
    t4 = table(text, "Ablation: task grouping and IGR")
    assert re.search(r"\| vanilla \| ours \| 41\.00 ± 0\.60 \[\d\] \|", t4)
    assert "| vanilla | *paper* (Wei et al., ICML 2024) | 41.84 |" in t4
    assert re.search(r"\| \+ grouping \| ours \| 42\.00 ± 0\.60 \[\d\] \|", t4)
    assert re.search(r"\| TGR \| ours \| 44\.00 ± 0\.60 \[\d\] \|", t4)  # the default run as reference
    assert "miniImageNet" not in t4  # only the datasets of the ablation runs
    assert re.search(r"\| KD only \| ours \| 38\.00 ± 0\.60 \[\d\] \|", table(text, "Loss components"))
    t8 = table(text, "Similarity against dissimilarity")
    assert re.search(r"\| similarity grouping \| ours \| 40\.50", t8) and "dissimilarity grouping (TGR) | ours | 44.00" in t8
    t6 = table(text, "Number of groups")
    assert re.search(r"\| miniImageNet \| 5 \| ours \| 48\.50 ± 0\.70 \[\d\] \| 49\.50 ± 0\.70 \[\d\] \|", t6)
    assert "| miniImageNet | 5 | *paper* (Wei et al., ICML 2024) | 48.20 | 49.00 |" in t6
    f6 = table(text, "Accuracy against the number of teachers")
    assert "| 10 teachers | all |" in f6 and re.search(r"\| TGR \| CIFAR-FS \| 1 \| ours \| 35\.00 ± 0\.60 \[\d\] \| 44\.00", f6)
    other = table(text, "Other runs")
    assert "| `several` | TGR | CIFAR-FS | single | kd=false, replay=false | 1 | 100/100, selected 80 | 30.00 ± 0.60 |" in other
    assert "several" not in text.split("## Other runs")[0]


def test_scenarios(tmp_path) -> None:
    zoo = tmp_path / "zoo"
    write_manifest(zoo, [{"arch": "conv4"}, {"arch": "resnet10"}, {"arch": "resnet18"}])
    train_run(tmp_path / "runs", "arch", {1: (44.0, 0.6)}, zoo=str(zoo))
    # real runs name a domain by its test split
    train_run(tmp_path / "runs", "md", {1: (30.0, 0.5)}, dataset="cifar-fs+omniglot",
              domains={1: {"cifar-fs/test": (28.0, 0.7), "omniglot/test": (32.0, 0.7)}})
    train_run(tmp_path / "runs", "lost", {1: (40.0, 0.6)}, zoo="/nowhere/zoo")
    # a run that names its teachers' architectures in results.json needs no copy of its zoo (a run fetched back
    # from another machine); those names win over a manifest found at the zoo path
    train_run(tmp_path / "runs", "fetched", {5: (56.0, 0.6)}, zoo="/nowhere/zoo", zoo_archs=["conv4", "resnet18"],
              train_shot=5)
    train_run(tmp_path / "runs", "subset", {5: (38.0, 0.6)}, zoo=str(zoo), zoo_archs=["conv4", "conv4"],
              train_shot=5)
    text = build_report([str(tmp_path / "runs")])
    md = table(text, "Multi-domain scenario")
    assert ("| method | source | CIFAR-FS+Omniglot 1-shot: all domains | CIFAR-FS+Omniglot 1-shot: CIFAR-FS | "
            "CIFAR-FS+Omniglot 1-shot: Omniglot |") in md
    assert re.search(r"\| TGR \| ours \| 30\.00 ± 0\.50 \[1\] \| 28\.00 ± 0\.70 \[2\] \| 32\.00 ± 0\.70 \[2\] \|", md)
    assert "[2] `md`: epochs 100/100, selected epoch 80, 300 episodes" in md
    # the paper's multi-domain benchmark (CIFAR-FS+miniImageNet+CUB) is not this one: quoted, not put beside it
    assert "*paper*" not in md and "32.04 (1-shot)" in md and "which no run here used" in md
    ma = table(text, "Multi-architecture scenario")
    # two mixes: each row names its own; the paper's row sits beside the run of its mix on CIFAR-FS
    assert "each row names its zoo's mix" in ma
    assert re.search(r"\| TGR \[conv4\+resnet10\+resnet18\] \| ours \| 44\.00 ± 0\.60 \[\d\] \| — \|", ma)
    assert re.search(r"\| TGR \[conv4\+resnet18\] \| ours \| — \| 56\.00 ± 0\.60 \[\d\] \|", ma)
    assert "| TGR | *paper* (Wei et al., ICML 2024; Conv4/ResNet-10/ResNet-18, CIFAR-FS) | 44.18 | 57.15 |" in ma
    # a mix other than the paper's alone: one plain row per method, the paper's numbers quoted in the caption only
    alone = table(build_report([str(tmp_path / "runs" / "fetched")]), "Multi-architecture scenario")
    assert "A zoo mixing conv4, resnet18." in alone and "*paper*" not in alone and "44.18 (1-shot)" in alone
    assert re.search(r"\| TGR \| ours \| 56\.00 ± 0\.60 \[\d\] \|", alone)
    main = table(text, "Main results")
    assert re.search(r"\| TGR \| ours \| 40\.00 ± 0\.60 \[\d\] \| 38\.00 ± 0\.60 \[\d\] \|", main)
    unknown = table(text, "Zoo architectures unknown")
    assert "`lost`: zoo /nowhere/zoo not found here" in unknown and "fetched" not in unknown


def _analyses(root: Path) -> None:
    W = [[0, .1, .5, .6], [.1, 0, .5, .7], [.5, .5, 0, .6], [.6, .7, .6, 0]]
    ov = [[5, 3, 0, 0], [3, 5, 0, 0], [0, 0, 5, 0], [0, 0, 0, 5]]
    _write(root / "zoo__group__42__x", "config.json", {"seed": 42, "zoo": "zoo"})
    _write(root / "zoo__group__42__x", "analysis.json", {
        "analysis": "dissimilarity", "teacher_ids": list("abcd"), "archs": ["conv4"] * 3 + ["resnet10"],
        "datasets": ["cifar-fs"] * 4, "W": W, "overlap": ov})
    _write(root / "zoo__igr-vs-erm__0__x", "config.json", {"seed": 0, "zoo": "zoo", "epochs": 4})
    series = lambda r: {"regulariser": r, "cosine": [.1, .2, .3, .4], "loss": [2, 1.5, 1.2, 1.0]}  # noqa: E731
    _write(root / "zoo__igr-vs-erm__0__x", "analysis.json", {
        "analysis": "igr-vs-erm", "beta": 0.001, "teachers_per_epoch": 4, "epochs": [1, 2, 3, 4],
        "runs": {"igr": series([4, 3, 2, 1]), "erm": series([4, 5, 6, 8])}})


def test_analyses_and_plots(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    _analyses(tmp_path / "runs")
    train_run(tmp_path / "runs", "z10", {1: (35.0, 0.6)}, zoo_size=10)
    train_run(tmp_path / "runs", "z20", {1: (38.0, 0.6)}, zoo_size=20)
    out = tmp_path / "rep" / "report.md"
    text = build_report([str(tmp_path / "runs")], str(out))
    assert out.read_text() == text
    f4 = table(text, "Task dissimilarity (Fig. 4)")
    assert "| 3 shared classes | 1 | 0.1000 |" in f4
    assert "| 0 shared classes | 5 | 0.5800 | 0.0837 |" in f4  # pairs (i<j) sharing none: .5 .6 .5 .7 .6
    assert "| same arch | 3 | 0.3667 |" in f4 and "| different arch | 3 | 0.6333 |" in f4
    assert "dataset" not in f4.split("|---|")[1]  # one dataset: no same/different dataset rows
    assert "rho of W against the number of shared classes: -0.674." in f4  # ranks of (W, overlap) over the 6 pairs
    f5 = table(text, "IGR against ERM (Fig. 5)")
    assert "| IGR | 1.5 | 0.35 | 1.1 |" in f5 and "| ERM | 7 | 0.35 | 1.1 |" in f5
    plots = sorted(p.name for p in (tmp_path / "rep" / "report_plots").iterdir())
    assert plots == ["fig4_zoo__group__42__x.png", "fig5_zoo__igr-vs-erm__0__x.png", "fig6_teachers.png"]
    for name in plots:
        assert (tmp_path / "rep" / "report_plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(report_plots/{name})" in text


def test_without_matplotlib_still_writes_markdown(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    _analyses(tmp_path / "runs")
    out = tmp_path / "report.md"
    text = build_report([str(tmp_path / "runs")], str(out), str(tmp_path / "plots"))
    assert "matplotlib is not installed" in capsys.readouterr().err and "matplotlib is not installed" in text
    assert "Task dissimilarity (Fig. 4)" in out.read_text() and not (tmp_path / "plots").exists()


def test_a_run_cut_short_by_a_kill_does_not_stop_the_report(tmp_path) -> None:
    """A truncated results.json leaves that run out (with the reason); a truncated last line of metrics.jsonl is
    skipped with a note; the other runs are reported."""
    runs = tmp_path / "runs"
    cut = train_run(runs, "cifar-fs__tgr__0__cut", {1: (40.0, 0.6)})
    (cut / "results.json").write_text((cut / "results.json").read_text()[:20])
    tail = train_run(runs, "cifar-fs__tgr__1__tail", {1: (42.0, 0.8)})
    with open(tail / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 101, "lo')
    text = build_report([str(runs)])
    assert "cifar-fs__tgr__0__cut/results.json: not valid JSON" in table(text, "Left out")
    assert "42.00" in text
    assert "metrics.jsonl: line 101, the last, is cut short" in table(text, "Read with a note")


def test_malformed_and_left_out_inputs(tmp_path) -> None:
    # a broken run is left out with the reason; the others are reported
    bad = train_run(tmp_path / "a", "bad", {1: (40.0, 0.6)})
    (bad / "results.json").write_text("{not json")
    train_run(tmp_path / "a", "fine", {1: (41.0, 0.6)})
    text = build_report([str(tmp_path / "a")])
    assert re.search(re.escape(str(bad / "results.json")) + ": not valid JSON", table(text, "Left out"))
    assert "41.00" in text
    lines = train_run(tmp_path / "b", "lines", None)
    with open(lines / "metrics.jsonl", "a") as fh:
        fh.write("{oops\n{\"epoch\": 1}\n")
    assert re.search(re.escape(str(lines / "metrics.jsonl")) + r":101: not valid JSON",
                     table(build_report([str(tmp_path / "b")]), "Left out"))
    shape = train_run(tmp_path / "c", "shape", {1: (40.0, 0.6)})
    _write(shape, "results.json", {"method": "tgr", "test": {"1": {"acc": "high"}}})
    assert "needs numbers 'acc' and 'ci95'" in table(build_report([str(tmp_path / "c")]), "Left out")
    _analyses(tmp_path / "w")
    _write(tmp_path / "w" / "zoo__group__42__x", "analysis.json", {"analysis": "dissimilarity", "W": [[0, 1], [1, 0]],
                                                                    "overlap": [[5, 0, 0]]})
    with pytest.raises(DfmetaError, match=r"zoo__group__42__x/analysis.json: 'W' \(2, 2\) and 'overlap' \(1, 3\)"):
        build_report([str(tmp_path / "w")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DfmetaError, match="no run directories below it"):
        build_report([str(tmp_path / "empty")])
    with pytest.raises(DfmetaError, match="no such run directory"):
        build_report([str(tmp_path / "missing")])
    ok = tmp_path / "d"
    eval_run(ok, "val", "finetune", {1: (30.0, 0.6)}, split="val")
    _write(ok / "probe", "config.json", {"architectures": ["ResNet"]})
    train_run(ok, "good", {1: (40.0, 0.6)})
    left = table(build_report([str(ok)]), "Left out")
    assert "split 'val' (only 'test' is reported)" in left and "probe`: config.json is not a dfmeta run's" in left


def test_cli(tmp_path, capsys) -> None:
    train_run(tmp_path / "runs", "one", {1: (40.0, 0.6)})
    out = tmp_path / "r.md"
    assert main(["report", str(tmp_path / "runs"), "--out", str(out), "--plots", str(tmp_path / "p")]) == 0
    assert "40.00 ± 0.60" in out.read_text()
    assert main(["report", "--runs", str(tmp_path / "runs" / "one")]) == 0
    assert "| TGR | ours | 40.00 ± 0.60 [1] |" in capsys.readouterr().out
    assert main(["report"]) == 2
    assert "field 'runs'" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "r.txt")]) == 2


def test_a_field_a_run_predates_counts_as_its_default(tmp_path) -> None:
    """A run written before a config field existed had that field's default: it shares a cell with a newer run
    that states the default, and only a run that sets another value gets a row of its own."""
    train_run(tmp_path, "cifar-fs__tgr__0__old", {1: (40.0, 0.6)})                       # no replay_mix field
    train_run(tmp_path, "cifar-fs__tgr__1__new", {1: (42.0, 0.8)}, seed=1, replay_mix="across")
    train_run(tmp_path, "cifar-fs__tgr__0__within", {1: (45.0, 0.7)}, replay_mix="within")
    text = build_report([str(tmp_path)])
    main_t = table(text, "Main results")
    assert re.search(r"\| TGR \| ours \| 41\.00 ± 0\.70 \(n=2, sd 1\.41\) \[\d+\] \|", main_t)
    assert "within" not in main_t and "None" not in main_t


def test_settings_outside_the_paper_are_other_runs(tmp_path) -> None:
    """Replay or recovery outside the paper is never the main table's method, nor an ablation of Table 4 (a lone run
    there would carry no label saying so): it is listed under other runs with the setting named."""
    train_run(tmp_path, "cifar-fs__tgr__0__within", {1: (45.0, 0.7)}, replay_mix="within")
    train_run(tmp_path, "cifar-fs__tgr__0__within_nogroup", {1: (46.0, 0.7)}, replay_mix="within", grouping="off")
    train_run(tmp_path, "cifar-fs__bidf-mkd__0__pooled", {1: (39.0, 0.7)}, method="bidf-mkd", replay_mix="pooled")
    train_run(tmp_path, "cifar-fs__tgr__0__noaug", {1: (43.0, 0.7)}, rec_augment=False)
    text = build_report([str(tmp_path)])
    other = table(text, "Other runs")
    assert "| `cifar-fs__tgr__0__within` | TGR | CIFAR-FS | single | replay_mix=within | 1 |" in other
    assert "| `cifar-fs__tgr__0__within_nogroup` | TGR | CIFAR-FS | single | grouping=off, replay_mix=within |" in other
    assert "| `cifar-fs__bidf-mkd__0__pooled` | BiDf-MKD | CIFAR-FS | single | replay_mix=pooled |" in other
    assert "| `cifar-fs__tgr__0__noaug` | TGR | CIFAR-FS | single | rec_augment=false |" in other
    assert not re.search(r"4[356]\.00", text.split("## Other runs")[0])


def test_meta_val_curves(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    runs = tmp_path / "runs"
    done = train_run(runs, "cifar-fs__tgr__0__x", {1: (40.0, 0.6)}, epochs=10, epochs_run=10, selected=4,
                     zoo="/z/zoo-mixed")
    val = {2: 30.0, 4: 33.5, 6: 33.5, 8: 31.0, 10: 32.0}  # a tie at 4 and 6: the earlier is the loop's pick
    rows = [json.loads(line) for line in (done / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        if row["epoch"] in val:
            row["val_acc"] = val[row["epoch"]]
    (done / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train_run(runs, "cifar-fs__tgr__1__x", None, epochs=10, epochs_run=3)  # unfinished: no numbers reported
    train_run(runs, "cifar-fs__tgr__2__x", {1: (39.0, 0.6)}, epochs=10, epochs_run=10)  # no validation logged
    for parent in ("a", "b"):  # one directory name under two parents: two rows, told apart by the parent
        twin = train_run(runs / parent, "cifar-fs__tgr__3__x", {1: (38.0, 0.6)}, epochs=2, epochs_run=2, selected=2,
                         zoo=f"/z/zoo-{parent}")  # and the zoo each learned from
        (twin / "metrics.jsonl").write_text(json.dumps({"epoch": 2, "val_acc": {"a": 31.0, "b": 32.0}[parent]}) + "\n")
    # a time limit ended this run after epoch 5: its last validation is a row of its own (the loop's format)
    cut = train_run(runs, "cifar-fs__tgr__4__x", {1: (37.0, 0.6)}, epochs=10, epochs_run=5, selected=5)
    (cut / "metrics.jsonl").write_text(json.dumps({"epoch": 4, "val_acc": 30.0}) + "\n" + json.dumps({"epoch": 5})
                                       + "\n" + json.dumps({"validated_epoch": 5, "time_limit_end": True,
                                                            "val_acc": 30.5}) + "\n")
    out = tmp_path / "report.md"
    section = table(build_report([str(runs)], str(out)), "Meta-validation")
    assert "| `cifar-fs__tgr__0__x` | TGR | `zoo-mixed` | 10/10 | 5 | 4 (33.50) | 4 (33.50) | 10 (32.00) |" in section
    assert "| `cifar-fs__tgr__4__x` | TGR | — | 5/10 | 2 | 5 (30.50) | 5 (30.50) | 5 (30.50) |" in section
    # an unfinished run shows its curve so far and no selection
    assert "| `cifar-fs__tgr__1__x` | TGR | — | 3/10, unfinished | 1 | 3 (33.33) | — | 3 (33.33) |" in section
    assert "cifar-fs__tgr__2__x" not in section
    assert "| `a/cifar-fs__tgr__3__x` | TGR | `zoo-a` | 2/2 | 1 | 2 (31.00) | 2 (31.00) | 2 (31.00) |" in section
    assert "| `b/cifar-fs__tgr__3__x` | TGR | `zoo-b` | 2/2 | 1 | 2 (32.00) | 2 (32.00) | 2 (32.00) |" in section
    png = tmp_path / "report_plots" / "meta_val_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "(report_plots/meta_val_curves.png)" in section


def test_meta_val_curve_legend_names_the_switches(tmp_path, monkeypatch) -> None:
    """A run set away from the paper's defaults (here the replay mix) is labelled so in the plot's legend too."""
    pytest.importorskip("matplotlib")
    import dfmeta.report.curves as curves
    drawn = {}
    monkeypatch.setattr(curves, "val_curves_png", lambda series, selected, path: drawn.update(series=series,
                                                                                             selected=selected))
    for name, mix in (("paper", "across"), ("mixed", "within")):
        run = train_run(tmp_path, name, {1: (40.0, 0.6)}, epochs=4, epochs_run=4, selected=2, replay_mix=mix)
        (run / "metrics.jsonl").write_text(json.dumps({"epoch": 2, "val_acc": 31.0}) + "\n")
    section = table(build_report([str(tmp_path)], str(tmp_path / "report.md")), "Meta-validation")
    assert "| `mixed` | TGR [replay_mix=within] |" in section
    assert sorted(drawn["series"]) == ["mixed [replay_mix=within]", "paper"]
    assert drawn["selected"] == {"mixed [replay_mix=within]": 2, "paper": 2}


def test_head_to_head_pairs_runs_on_the_same_episodes(tmp_path, monkeypatch) -> None:
    """Runs that met the same meta-val episodes are compared at the epochs both validated (whatever their seeds); a
    run validated on other episodes is paired with none; too many runs on one episode set are named, not paired."""
    import dfmeta.report.curves as curves
    monkeypatch.setattr(curves, "val_curves_png", lambda series, selected, path: None)

    def run(name: str, val: dict[int, float], **cfg) -> None:
        d = train_run(tmp_path, name, {1: (40.0, 0.6)}, epochs=8, epochs_run=len(val) * 2, selected=2, **cfg)
        (d / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "val_acc": v}) + "\n"
                                                 for e, v in val.items()))

    run("a", {2: 31.0, 4: 32.0, 6: 33.0, 8: 30.0}, seed=0, val_episodes=300)
    run("b", {2: 30.0, 4: 32.5, 6: 31.0}, seed=1, val_episodes=300, replay_mix="pooled")
    run("c", {2: 50.0, 4: 50.0}, val_episodes=600)  # other episodes: never paired
    section = table(build_report([str(tmp_path)], str(tmp_path / "r.md")), "Meta-validation")
    head = section.split("### Head to head")[1].split("### Over the common epochs")[0]
    # common epochs 2, 4, 6: differences +1.0, -0.5, +2.0
    assert "| `a` | `b` | 3 | 2 | 1 | +0.83 | — |" in head  # neither recorded its machine
    assert "`c`" not in head
    monkeypatch.setattr(curves, "MAX_PAIRED", 1)
    head = table(build_report([str(tmp_path)], str(tmp_path / "r.md")), "Meta-validation").split("### Head to head")[1]
    head = head.split("### Over the common epochs")[0]
    assert "| `a` |" not in head and "2 runs met one set of episodes: too many to pair (at most 1)" in head


def test_common_window_averages_each_run_over_the_epochs_all_validated(tmp_path, monkeypatch) -> None:
    """Runs on one episode set are averaged up to the last epoch every one of them validated (here 6), and over the
    later half of that window (epochs 4 and 6); a run alone on its episodes gets no row."""
    import dfmeta.report.curves as curves
    monkeypatch.setattr(curves, "val_curves_png", lambda series, selected, path: None)

    def run(name: str, val: dict[int, float], **cfg) -> None:
        d = train_run(tmp_path, name, {1: (40.0, 0.6)}, epochs=8, epochs_run=max(val), selected=2, **cfg)
        (d / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "val_acc": v}) + "\n"
                                                 for e, v in val.items()))

    run("a", {2: 31.0, 4: 32.0, 6: 33.0, 8: 40.0}, val_episodes=300)
    run("b", {2: 30.0, 4: 32.5, 6: 31.0}, val_episodes=300, replay_mix="pooled")
    run("c", {2: 50.0, 4: 50.0}, val_episodes=600)
    section = table(build_report([str(tmp_path)], str(tmp_path / "r.md")), "Meta-validation")
    window = section.split("### Over the common epochs")[1]
    assert "| `a` | TGR | 1-6 | 3 | 32.00 | 32.50 | 33.00 |" in window  # epoch 8 is past the window
    assert "| `b` | TGR [replay_mix=pooled] | 1-6 | 3 | 31.17 | 31.75 | 32.50 |" in window
    assert "`c`" not in window
    run("b", {2: 30.0}, val_episodes=300)  # the window shrinks to epoch 2: no later half but epoch 2 itself
    window = table(build_report([str(tmp_path)], str(tmp_path / "r.md")), "Meta-validation").split(
        "### Over the common epochs")[1]
    assert "| `a` | TGR | 1-2 | 1 | 31.00 | 31.00 | 31.00 |" in window
    run("b", {1: 30.0}, val_episodes=300)  # a run that first validated after the window: counted, no numbers
    window = table(build_report([str(tmp_path)], str(tmp_path / "r.md")), "Meta-validation").split(
        "### Over the common epochs")[1]
    assert "| `a` | TGR | 1-1 | 0 | — | — | — |" in window


def test_same_named_runs_are_told_apart_everywhere(tmp_path) -> None:
    """Run directories of one name under different parents (as the ablation grid writes them) are named with as many
    parent folders as tell them apart, in the footnotes as in every other section; a unique name stays bare."""
    from dfmeta.report.collect import Run, label_runs
    runs = tmp_path / "runs"
    made = [train_run(runs / "groups-3", "cifar-fs__tgr__0__t", {1: (35.0, 0.7)}, groups=3),
            train_run(runs / "similarity", "cifar-fs__tgr__0__t", {1: (34.0, 0.7)}, grouping="similarity"),
            train_run(runs / "tgr", "cifar-fs__tgr__0__u", {1: (36.0, 0.7)})]
    for d in made:  # one logged validation each, for the meta-validation section
        (d / "metrics.jsonl").write_text(json.dumps({"epoch": 80, "val_acc": 31.0}) + "\n")
    text = build_report([str(runs)])
    assert "`groups-3/cifar-fs__tgr__0__t`: epochs" in table(text, "Number of groups")
    assert "`similarity/cifar-fs__tgr__0__t`: epochs" in table(text, "Similarity against")
    assert "`cifar-fs__tgr__0__u`: epochs" in table(text, "Main results") and "tgr/cifar-fs" not in text
    assert "| `cifar-fs__tgr__0__t` |" not in text and "`cifar-fs__tgr__0__t`:" not in text
    curves = table(text, "Meta-validation")  # its rows name the switches a run set away from the paper's defaults
    assert "| `groups-3/cifar-fs__tgr__0__t` | TGR [groups=3] |" in curves
    assert "| `similarity/cifar-fs__tgr__0__t` | TGR [grouping=similarity] |" in curves
    assert "| `cifar-fs__tgr__0__u` | TGR |" in curves
    # deeper clashes take more folders; a run alone keeps its name
    found = [Run(Path(p), "train", {}) for p in ("/r/x/a/n", "/r/y/a/n", "/r/z/b/n", "/r/m")]
    label_runs(found)
    assert [r.shown for r in found] == ["x/a/n", "y/a/n", "b/n", "m"]


def test_small_groups_splits_rows_only_where_it_acted(tmp_path) -> None:
    """Fig. 6's small zoos need --small-groups: a run whose groups were all large enough ran as the default would, so
    it shares a row with default runs; runs where merge and fewer changed the groups keep rows of their own."""
    runs = tmp_path / "runs"

    def run(name: str, size: int, how: str, sizes: list[int] | None, acc: float) -> None:
        d = train_run(runs, name, {1: (acc, 0.7)}, zoo_size=size, small_groups=how, teachers_per_epoch=4)
        if sizes is not None:
            _write(d, "groups.json", {"labels": [], "sizes": sizes})

    run("z81", 0, "error", [21, 21, 17, 16, 6], 34.0)
    run("z40", 40, "fewer", [11, 9, 11, 5, 4], 36.5)  # no group below m = 4: fewer did nothing
    run("z20", 20, "fewer", [4, 3, 4, 7, 2], 36.0)
    run("z10", 10, "fewer", [3, 3, 2, 1, 1], 35.4)
    text = table(build_report([str(runs)]), "Accuracy against the number")
    rows = [ln for ln in text.splitlines() if ln.startswith("| TGR")]
    assert len(rows) == 1 and "small_groups" not in rows[0], text  # one curve: fewer acted only where it had to
    assert "small_groups=fewer" in text.split("`z10`")[1].splitlines()[0]  # the footnote says where it acted
    assert "small_groups" not in text.split("`z40`")[1].splitlines()[0]
    run("m10", 10, "merge", [3, 3, 2, 1, 1], 35.2)  # another way of handling small groups: a row of its own
    run("old", 20, "merge", None, 36.1)  # no groups.json: taken as configured
    rows = [ln for ln in table(build_report([str(runs)]), "Accuracy against the number").splitlines() if ln.startswith("| TGR")]
    assert len(rows) == 3 and sum("small_groups=merge" in r for r in rows) == 1, rows


def test_task_groups_section(tmp_path) -> None:
    """Each grouped run's groups.json: sizes (those used, where small groups were changed), where the groups came
    from, stability and class overlap within groups; a run without groups.json gets no row; bad JSON names the file."""
    runs = tmp_path / "runs"
    a = train_run(runs, "cifar-fs__tgr__0__a", {1: (35.0, 0.7)})
    _write(a, "groups.json", {"labels": [0, 1, 0, 1, 2], "sizes": [2, 2, 1], "stability": 0.52,
                              "within_group_overlap": 0.8731})
    b = train_run(runs, "cifar-fs__tgr__1__b", {1: (35.0, 0.7)}, groups=3)
    _write(b, "groups.json", {"labels": [0, 1, 2, 0], "sizes": [2, 1, 1], "used_sizes": [4], "from": "g/groups.json",
                              "regrouped": True})
    train_run(runs, "cifar-fs__tgr__2__c", {1: (35.0, 0.7)}, grouping="off")
    section = table(build_report([str(runs)]), "Task groups")
    assert "| `cifar-fs__tgr__0__a` | TGR | 5 | 2 2 1 | grouped in the run | 0.52 | 0.87 |" in section
    assert "| `cifar-fs__tgr__1__b` | TGR [groups=3] | 4 | 4 | regrouped from the W of `g/groups.json` | — | — |" \
        in section
    assert "cifar-fs__tgr__2__c" not in section
    (b / "groups.json").write_text("{")  # a broken run is left out, with the reason
    assert re.search(r"cifar-fs__tgr__1__b/groups.json: not valid JSON", table(build_report([str(runs)]), "Left out"))


def test_training_diagnostics_average_the_same_epochs(tmp_path) -> None:
    """Per-epoch logs averaged over the first 10 epochs and the last 10 that every run on the same meta-val episodes
    reached (finished or not); fields a run never logged (or logged as NaN) read '—'; validation time is left out."""
    def run(name: str, n: int, accs, **cfg) -> Path:
        d = train_run(tmp_path, name, accs, epochs=100, epochs_run=n, **cfg)
        rows = [{"epoch": e, "loss": float(e), "replay_acc": float("nan") if e == 1 else 0.5 + (e > 10) * 0.25,
                 "replay_batches": 4 + e % 2, "t_recover": 1.0, "t_replay": 2.0, "t_val": 50.0} for e in range(1, n + 1)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return d

    run("long", 40, {1: (40.0, 0.6)}, val_episodes=300)
    run("short", 25, None, val_episodes=300)  # unfinished: its 25 epochs bound the set's last window (16-25)
    run("alone", 12, {1: (40.0, 0.6)}, val_episodes=600)  # another episode set: its own windows, one of them
    legacy = train_run(tmp_path, "legacy", {1: (40.0, 0.6)}, epochs=100, epochs_run=3, val_episodes=600)
    section = table(build_report([str(tmp_path)]), "Training diagnostics")
    # loss e averages to 5.5 over 1-10 and 20.5 over 16-25; replay accuracy 0.5 over 2-10 (epoch 1 NaN), 0.75 later
    assert "| `long` | TGR | 40 | 1-10 / 16-25 | 5.50 / 20.50 | 0.50 / 0.75 | 4.5 | 3.0 |" in section
    assert "| `short` | TGR | 25 | 1-10 / 16-25 | 5.50 / 20.50 | 0.50 / 0.75 | 4.5 | 3.0 |" in section
    assert "| `alone` | TGR | 12 | 1-3 | 2.00 | 0.50 | 4.5 | 3.0 |" in section  # the legacy run ends its set at 3
    assert "| `legacy` | TGR | 3 | 1-3 | 1.00 | — | — | 0.1 |" in section
    assert legacy.is_dir()


def test_unfinished_record_named_by_its_config(tmp_path) -> None:
    """A record of an unfinished run (files renamed, no results.json to name the method) is named by its config:
    the one method whose config has all its fields; none where that is ambiguous."""
    from dfmeta.report.collect import config_defaults, method_of_config
    for method in ("tgr", "purer", "bidf-mkd", "dro", "maml-real"):
        assert method_of_config(config_defaults(method)) == method
    assert method_of_config({**config_defaults("tgr"), "grouping": "off", "igr": "off"}) == "vanilla"
    assert method_of_config({"seed": 0}) is None and method_of_config({**config_defaults("tgr"), "odd": 1}) is None
    flatten(train_run(tmp_path / "runs", "cifar-fs__vanilla__0__x", None, epochs_run=4, grouping="off", igr="off"),
            tmp_path / "rec", "plain")
    assert "| `plain` | train | vanilla |" in table(build_report([str(tmp_path / "rec")]), "Unfinished runs")


def flatten(run: Path, folder: Path, prefix: str) -> None:
    """Copy a run directory's files into ``folder`` as a record: ``PREFIX_config.json``, ``PREFIX_results.json``..."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in run.iterdir():
        (folder / f"{prefix}_{f.name}").write_bytes(f.read_bytes())


def test_records_read_as_the_runs_they_were_copied_from(tmp_path) -> None:
    """A record (a run's files under one prefix, as docs/results keeps them) reports exactly as its run directory:
    found below a folder or named as FOLDER/PREFIX; records of one prefix in two folders are told apart; a record
    without results is unfinished; a missing record is a one-line error."""
    runs = tmp_path / "runs"
    a = train_run(runs, "cifar-fs__tgr__0__a", {1: (35.0, 0.7), 5: (48.0, 0.7)})
    _write(a, "groups.json", {"labels": [0, 1, 0, 1], "sizes": [2, 2], "stability": 0.5,
                              "within_group_overlap": 0.9})
    b = train_run(runs, "cifar-fs__tgr__0__b", {1: (34.0, 0.7), 5: (47.0, 0.7)}, grouping="similarity")
    e = eval_run(runs, "cifar-fs__ota__0__c", "ota", {1: (36.03, 0.8), 5: (46.26, 0.78)})
    flatten(a, tmp_path / "rec1", "tgr")
    flatten(b, tmp_path / "rec1", "similarity")
    flatten(e, tmp_path / "rec2", "ota")
    flatten(a, tmp_path / "rec2", "tgr")
    from_runs = build_report([str(runs)])
    from_records = build_report([str(tmp_path / "rec1"), str(tmp_path / "rec2" / "ota")])
    for title in ("Main results", "Similarity against"):
        strip = lambda t: re.sub(r"^- \[\d+\].*$", "", table(t, title), flags=re.M)  # noqa: E731 (names differ)
        assert strip(from_runs).split("\n", 1)[1] == strip(from_records).split("\n", 1)[1]
    assert re.search(r"\| OTA \| ours \| 36\.03 ± 0\.80 \[\d+\] \| 46\.26 ± 0\.78 \[\d+\] \|",
                     table(from_records, "Main results"))
    assert "`tgr`: epochs" in from_records and "| `tgr` | TGR | 4 | 2 2 | grouped in the run | 0.50 | 0.90 |" \
        in table(from_records, "Task groups")
    both = build_report([str(tmp_path / "rec1"), str(tmp_path / "rec2")])
    assert "`rec1/tgr`" in both and "`rec2/tgr`" in both
    (tmp_path / "rec1" / "similarity_results.json").unlink()
    assert "`similarity`" in table(build_report([str(tmp_path / "rec1")]), "Unfinished")
    with pytest.raises(DfmetaError, match=r"rec1/nothing: no such run directory, record or folder"):
        build_report([str(tmp_path / "rec1" / "nothing")])


def test_every_committed_record_is_reported() -> None:
    """docs/results stays readable: each record's config found there is a finished run of the report, or an
    unfinished one recorded on purpose (meta-val only, ``defer_test``, not yet continued), none left out."""
    results = Path(__file__).resolve().parents[1] / "docs" / "results"
    configs = list(results.rglob("*config.json"))
    deferred = [c for c in configs if json.loads(c.read_text()).get("defer_test")  # and not meta-tested later
                and not c.with_name(c.name.replace("config.json", "results.json")).exists()]
    analyses = list(results.rglob("*analysis.json"))  # as recorded: without their configs
    text = build_report([str(results)])
    head = text.splitlines()[2]
    assert configs and (f"{len(configs) - len(deferred)} finished runs, {len(analyses)} analysis runs, "
                        f"{len(deferred)} unfinished") in head
    fig4 = [a for a in analyses if json.loads(a.read_text()).get("analysis") == "dissimilarity"]
    assert "## Left out" not in text and text.count("## Task dissimilarity (Fig. 4)") == len(fig4) >= 1


def test_a_baselines_ablation_is_not_its_main_row(tmp_path) -> None:
    """A baseline run that switches off what makes it its paper's method (PURER's curriculum, BiDf-MKD's boundary
    queries, DRO's worst case) is an other run, named by the switch; the defaults stay the main row, and PURER's
    random init is the default in the multi-arch scenario only."""
    train_run(tmp_path, "cifar-fs__purer__0__x", {1: (37.0, 0.5)}, method="purer", adv_schedule="switch",
              init="average", first_order=False)
    train_run(tmp_path, "cifar-fs__purer__1__x", {1: (33.0, 0.5)}, method="purer", adv_schedule="off",
              init="random", first_order=False)
    train_run(tmp_path, "cifar-fs__bidf-mkd__0__x", {1: (30.0, 0.5)}, method="bidf-mkd", boundary=False,
              inner_loss="kd", kd_form="kl", first_order=False)
    train_run(tmp_path, "cifar-fs__dro__0__x", {1: (31.0, 0.5)}, method="dro", beta=0.0, flow="svgd", head="fused",
              meta_init="mean")
    train_run(tmp_path, "cifar-fs__dro__1__x", {1: (32.0, 0.5)}, method="dro", beta=0.5, flow="svgd", head="fused",
              meta_init="mean")
    train_run(tmp_path, "cifar-fs__purer__2__x", {1: (36.0, 0.5)}, method="purer", adv_schedule="switch",
              init="random", first_order=False, zoo_archs=["conv4", "resnet10"])
    text = build_report([str(tmp_path)])
    main_t, other = table(text, "Main results"), table(text, "Other runs")
    assert re.search(r"\| PURER \| ours \| 37\.00 ± 0\.50 \[\d+\] \|", main_t)
    assert re.search(r"\| DRO \| ours \| 32\.00 ± 0\.50 \[\d+\] \|", main_t)  # beta 0.5: a weight, not an ablation
    assert "BiDf-MKD | ours" not in main_t and "33.00" not in main_t and "31.00" not in main_t
    assert "| `cifar-fs__purer__1__x` | PURER | CIFAR-FS | single | adv_schedule=off, init=random |" in other
    assert "| `cifar-fs__bidf-mkd__0__x` | BiDf-MKD | CIFAR-FS | single | boundary=false |" in other
    assert "| `cifar-fs__dro__0__x` | DRO | CIFAR-FS | single | beta=0.0 |" in other
    assert re.search(r"\| PURER \| ours \| 36\.00 ± 0\.50 \[\d+\] \|", table(text, "Multi-architecture"))


def test_a_run_written_before_fisher_cosine_shows_the_form_it_used(tmp_path) -> None:
    """A TGR run whose config predates --fisher-cosine grouped with the authors' per-layer form, not today's default:
    beside a run of the paper's form, the two get rows of their own, named by what each ran."""
    old = train_run(tmp_path, "cifar-fs__tgr__0__old", {1: (40.0, 0.6)})
    config = json.loads((old / "config.json").read_text())
    del config["fisher_cosine"]
    (old / "config.json").write_text(json.dumps(config))
    train_run(tmp_path, "cifar-fs__tgr__0__new", {1: (41.0, 0.6)})
    off = train_run(tmp_path, "cifar-fs__tgr__0__off", {1: (39.0, 0.6)}, epochs=50, grouping="off", igr="off")
    config = json.loads((off / "config.json").read_text())
    del config["fisher_cosine"]
    (off / "config.json").write_text(json.dumps(config))
    text = build_report([str(tmp_path)])
    main_t = table(text, "Main results")
    assert re.search(r"\| TGR \[fisher_cosine=layers\] \| ours \| 40\.00 ± 0\.60", main_t), main_t
    assert re.search(r"\| TGR \[fisher_cosine=whole\] \| ours \| 41\.00 ± 0\.60", main_t), main_t
    vanilla = [x for x in table(text, "Ablation").splitlines() if "39.00" in x or "__off`" in x]
    assert len(vanilla) == 2 and "fisher_cosine" not in "".join(vanilla), vanilla  # it grouped nothing: no Eq. 6
    assert "fisher_cosine=layers" in "".join(x for x in main_t.splitlines() if "__old`" in x)  # its footnote
