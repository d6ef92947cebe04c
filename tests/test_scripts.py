"""Shell scripts under benchmarks/: argument checks answer with one line and exit 2 before any work; the ablation
grid runs end to end at toy size."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash not found")


def _grid(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "ablation_grid.sh"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_ablation_grid_checks_its_arguments(tmp_path) -> None:
    r = _grid(cwd=tmp_path)
    assert r.returncode == 2 and "VARIANT" in r.stdout  # usage
    r = _grid(str(tmp_path / "nozoo"), str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().endswith("not found (a dfmeta zoo directory expected)")
    (tmp_path / "zoo").mkdir()
    r = _grid(str(tmp_path / "zoo"), str(tmp_path / "out"), "tgr", "groups-12", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown variant 'groups-12'" in r.stderr
    assert not (tmp_path / "out").exists()  # nothing was started


TOY_TRAIN = ("--dataset embedded --image-size 16 --epochs 2 --val-every 1 --teachers-per-epoch 2 --small-groups merge "
             "--rec-steps 2 --rec-per-class 2 --rec-nf 8 --val-episodes 3 --episodes 3 --shots 1 --meta-batch 2 "
             "--replay-max-batches 2 --fisher-samples 2 --replay-queries 1 --eval-steps 2 --device cpu --threads 1")
TOY_GROUP = "--steps 2 --per-class 2 --nf 8 --fisher-samples 2 --device cpu --threads 1"


def test_ablation_grid_end_to_end(tmp_path) -> None:
    """Toy grid: groups computed once and shared, each variant meta-trained and reported in its table, and a rerun
    skips the finished variants."""
    from conftest import make_zoo
    zoo = make_zoo(tmp_path / "zoo", n=6)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "LANES": "2", "EXTRA": TOY_TRAIN, "GROUP_EXTRA": TOY_GROUP}
    variants = ["tgr", "vanilla", "similarity", "groups-2", "teachers-5"]

    def grid(*only: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(ROOT / "benchmarks" / "ablation_grid.sh"), str(zoo), str(tmp_path / "out"),
                               *(only or variants)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)

    r = grid()
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "groups").iterdir() if p.is_dir()) == [
        "dissimilarity-2", "dissimilarity-5", "similarity-5"]
    # W is computed by the first grouping only; the others reuse its cached Fisher matrix
    logs = {p.stem: p.read_text() for p in (out / "groups").glob("*.log")}
    assert "recovering tasks" in logs["dissimilarity-5"] and "(cached W)" not in logs["dissimilarity-5"]
    for name in ("similarity-5", "dissimilarity-2"):
        assert "(cached W)" in logs[name] and "recovering tasks" not in logs[name], name
    groups = {p.parent.name: json.loads(p.read_text()) for p in (out / "groups").glob("*/groups.json")}
    assert groups["similarity-5"]["mode"] == "similarity" and groups["dissimilarity-2"]["groups"] == 2
    for v in variants:
        assert (out / "runs" / f"{v}.done").exists(), r.stdout
        (run,) = [p for p in (out / "runs" / v).iterdir() if p.is_dir()]
        cfg = json.loads((run / "config.json").read_text())
        assert json.loads((run / "results.json").read_text())["test"], v
        expect = {"tgr": ("dissimilarity", "first", 5), "vanilla": ("off", "off", 5),
                  "similarity": ("similarity", "first", 5), "groups-2": ("dissimilarity", "first", 2),
                  "teachers-5": ("dissimilarity", "first", 5)}[v]
        assert (cfg["grouping"], cfg["igr"], cfg["groups"]) == expect, v
        assert bool(cfg["groups_from"]) == (v != "vanilla"), v
        assert cfg["zoo_size"] == (5 if v == "teachers-5" else 0), v
    # the subset is grouped from the zoo's W (no second recovery), its 5 teachers clustered again
    sub = json.loads(next((out / "runs" / "teachers-5").glob("*/groups.json")).read_text())
    assert sub["regrouped"] and len(sub["labels"]) == 5
    assert sub["small_groups"] == "fewer" and min(sub["used_sizes"]) >= 2  # c = 5 on 5 teachers: clustered again
    report = (out / "report.md").read_text()
    for title in ("Table 4", "Table 6", "Table 8", "Fig. 6"):
        assert title in report, title

    again = grid()  # every variant finished: nothing is trained again
    assert again.returncode == 0 and again.stdout.count("done before, skipped") == len(variants), again.stdout
    later = grid("groups-3")  # a later call with only a new c regroups from the W an earlier call left in OUT/groups
    assert later.returncode == 0 and (out / "runs" / "groups-3.done").exists(), later.stdout + later.stderr
    log = (out / "groups" / "dissimilarity-3.log").read_text()
    assert "(cached W)" in log and "recovering tasks" not in log


def _multi_arch(out: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **env}
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "multi_arch.sh"), str(out)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def test_multi_arch_checks_its_arguments(tmp_path) -> None:
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "multi_arch.sh")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "TEACHERS" in r.stdout  # usage
    for env, says in (({"SHOT": "3"}, "SHOT must be 1 or 5"), ({"LANES": "0"}, "positive integers, got '0'")):
        r = _multi_arch(tmp_path / "out", tmp_path, **env)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()  # nothing was started


def test_multi_arch_end_to_end(tmp_path) -> None:
    """Toy Table 3: a mixed zoo and a Conv4 zoo of the same teachers' classes, grouped, meta-trained, reported in
    Table 3 and Table 1; a rerun trains nothing again."""
    from dfmeta.zoo import load_zoo
    env = dict(TEACHERS="5", LANES="2", DATASET="embedded", ARCHS="conv4 resnet10",
               ZOO_EXTRA="--image-size 16 --epochs 1 --device cpu --threads 1", GROUP_EXTRA=TOY_GROUP, EXTRA=TOY_TRAIN)
    out = tmp_path / "out"
    r = _multi_arch(out, tmp_path, **env)
    assert r.returncode == 0, r.stdout + r.stderr
    mixed, conv4 = load_zoo(out / "zoo-mixed").teachers, load_zoo(out / "zoo-conv4").teachers
    assert {t.arch for t in mixed} == {"conv4", "resnet10"} and {t.arch for t in conv4} == {"conv4"}
    assert [t.class_names for t in mixed] == [t.class_names for t in conv4]  # the same tasks, other architectures
    runs = {}
    for name, archs in (("zoo-mixed", [t.arch for t in mixed]), ("zoo-conv4", ["conv4"] * 5)):
        (run,) = [p for p in (out / "runs" / f"{name}-seed0").iterdir() if p.is_dir()]
        res = json.loads((run / "results.json").read_text())
        assert res["zoo_archs"] == archs and res["test"], name
        assert json.loads((run / "config.json").read_text())["groups_from"] == str(out / "groups" / name)
        runs[name] = run
    # the report names a run by its directory, with its parent where both runs started in the same second
    same = runs["zoo-mixed"].name == runs["zoo-conv4"].name
    shown = {n: f"`{r.parent.name}/{r.name}`" if same else f"`{r.name}`" for n, r in runs.items()}
    report = (out / "report.md").read_text()
    table3 = report.split("## Multi-architecture scenario (Table 3)")[1].split("\n## ")[0]
    table1 = report.split("## Main results (Table 1)")[1].split("\n## ")[0]
    assert shown["zoo-mixed"] in table3 and shown["zoo-conv4"] not in table3
    assert shown["zoo-conv4"] in table1 and shown["zoo-mixed"] not in table1

    again = _multi_arch(out, tmp_path, **env)
    assert again.returncode == 0 and again.stdout.count("done before, skipped") == 2, again.stdout
    assert "== groups" not in again.stdout


def test_probe_study_compares_probes_on_the_same_tasks(tmp_path) -> None:
    """benchmarks/probe_study.py: one recovery, W per probe; the same probe twice gives the same W and groups."""
    import torch
    from safetensors.torch import save_file

    from conftest import make_zoo
    from dfmeta.nets import build
    zoo = make_zoo(tmp_path / "zoo", n=6, stride=2)  # neighbours share 3 classes, next neighbours 1
    torch.manual_seed(3)
    save_file(build("conv4", 40, 16, 3, "running").state_dict(), str(tmp_path / "probe.safetensors"))
    probes = ["random:42", "random:0", f"conv4={tmp_path / 'probe.safetensors'}", "random:42"]
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "probe_study.py"), "--zoo", str(zoo), "--steps", "2",
                        "--nf", "4", "--per-class", "2", "--groups", "2", "--threads", "1",
                        "--out", str(tmp_path / "s.json"), "--fisher-labels", "task", "probe", "--fisher-cosine",
                        "whole", "layers", "--probes", *probes],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "s.json").read_text())["rows"]
    assert len(rows) == 12 and "40-way" in rows[probes[2]]["probe"]  # a repeated probe is one row
    assert rows["random:0 [layers]"]["W"] != rows["random:0"]["W"]  # the authors' form of Eq. 6: another W
    assert rows["random:0 [probe]"]["W"] != rows["random:0"]["W"]  # the probe's own labels: another W
    assert rows["random:0"]["W"] != rows["random:42"]["W"]  # another random probe: another W
    for row in rows.values():
        assert len(row["labels"]) == 6 and -1 <= row["rho"] <= 1 and row["ari"][probes[0]] <= 1
        assert row["within_overlap"] >= 0
    assert rows["random:42"]["ari"]["random:42"] == 1
    assert r.stdout.count("\n| ") == 13  # header and one line per probe, labels and Eq. 6 form
    assert "random partitions into random:42's group sizes" in r.stdout
    for spec in ("conv4", "random:x"):
        bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "probe_study.py"), "--zoo", str(zoo),
                              "--probes", spec], capture_output=True, text=True, timeout=600)
        assert bad.returncode != 0 and bad.stderr.strip().endswith("expected random:SEED or ARCH=FILE"), spec
        assert bad.stderr.count("\n") == 1, bad.stderr  # one line, no traceback


def test_group_overlap_reads_both_groups_json_forms(tmp_path) -> None:
    """benchmarks/group_overlap.py: a TGR run's labels + teacher_ids and a group run's members give one row each; an
    unknown teacher is a one-line error."""
    from conftest import make_zoo
    zoo = make_zoo(tmp_path / "zoo", n=6, stride=2)
    (tmp_path / "a.json").write_text(json.dumps({"labels": [0, 1, 0, 1, 0, 1], "teacher_ids": list("012345")}))
    members = [[{"id": "0"}, {"id": "1"}, {"id": "2"}], [{"id": "3"}, {"id": "4"}, {"id": "5"}]]
    (tmp_path / "b.json").write_text(json.dumps({"members": members}))
    script = str(ROOT / "benchmarks" / "group_overlap.py")
    r = subprocess.run([sys.executable, script, "--zoo", str(zoo), str(tmp_path / "a.json"), str(tmp_path / "b.json")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    # classes of teacher i: 2i .. 2i+4, so neighbours share 3, next neighbours 1; all pairs: 3*5 + 1*4 = 19 over 15
    # a: pairs (0,2) (0,4) (2,4) (1,3) (1,5) (3,5): 1+0+1+1+0+1 = 4 over 6; b: (0,1) (0,2) (1,2), (3,4) (3,5) (4,5)
    assert f"| {0.6667 / (19 / 15):.2f} |" in r.stdout.splitlines()[2]
    assert f"| {(3 + 1 + 3) * 2 / 6 / (19 / 15):.2f} |" in r.stdout.splitlines()[3]
    (tmp_path / "c.json").write_text(json.dumps({"labels": [0, 1], "teacher_ids": ["0", "99"]}))
    bad = subprocess.run([sys.executable, script, "--zoo", str(zoo), str(tmp_path / "c.json")], capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode != 0 and "teacher '99' is not in the zoo" in bad.stderr


def test_bank_classes_counts_repeated_dataset_classes(tmp_path) -> None:
    """benchmarks/bank_classes.py: the chance that an ``across`` replay task holds one dataset class twice, computed
    exactly, matches brute-force enumeration; a class with fewer than K + Q images is not drawn; a missing checkpoint
    is a one-line error."""
    from itertools import combinations

    import torch
    task = lambda teacher, names, n: {"images": torch.zeros(len(names) * n, 3, 2, 2), "teacher": teacher,  # noqa: E731
                                      "labels": torch.arange(len(names)).repeat_interleave(n), "names": names}
    tasks = [task(0, ["a", "b", "c", "d", "e"], 16), task(1, ["a", "b", "f", "g", "h"], 16),
             task(2, ["a", "i", "j", "k", "l"], 16), task(3, ["m", "n", "o", "p", "q"], 8)]  # 3: too few images
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    config = {"ways": 5, "train_shot": 1, "replay_queries": 15, "replay_mix": "across"}
    torch.save({"epoch": 7, "config": config, "extra": {"bank": {"capacity": 20, "tasks": tasks}}}, run / "checkpoint.pt")
    script = str(ROOT / "benchmarks" / "bank_classes.py")
    r = subprocess.run([sys.executable, script, str(run)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    names = [n for t in tasks[:3] for n in t["names"]]  # the 15 teacher classes with 16 images each
    draws = list(combinations(names, 5))
    repeats = sum(len(set(d)) < 5 for d in draws) / len(draws)
    assert f"| runs/r | 7 | across | 20 | 15 | 12 | 1:10 2:1 3:1 | {repeats:.3f} |" in r.stdout
    bad = subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "expected a TGR checkpoint" in bad.stderr


def _bank_run(path: Path, style: float, *, seed: int = 0, dataset: str = "") -> Path:
    """A run directory whose checkpoint holds a bank of three teachers sharing dataset class "a" (and 0 and 1 "b"):
    each class is its name's fixed pattern plus noise, each teacher's images shifted by ``style`` times its own
    colour offset (a generator's style)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    names = [[dataset + n for n in t] for t in ([["a", "b", "c", "d", "e"], ["a", "b", "f", "g", "h"],
                                               ["a", "i", "j", "k", "l"]])]
    pattern = {n: torch.rand(3, 8, 8, generator=g) for n in sorted({n for t in names for n in t})}
    tasks = []
    for teacher, task_names in enumerate(names):
        offset = torch.rand(3, 1, 1, generator=g) * 2 - 1
        images = torch.stack([pattern[n] + 0.3 * torch.randn(3, 8, 8, generator=g) + style * offset
                              for n in task_names for _ in range(16)])
        tasks.append({"images": images, "labels": torch.arange(5).repeat_interleave(16), "teacher": teacher,
                      "names": task_names})
    path.mkdir(parents=True)
    torch.save({"epoch": 3, "config": {"ways": 5}, "extra": {"bank": {"capacity": 20, "tasks": tasks}}},
               path / "checkpoint.pt")
    return path


def test_generator_style_tells_generators_apart_only_when_they_differ(tmp_path) -> None:
    """benchmarks/generator_style.py: pairs of one dataset class from two teachers are told apart when the teachers'
    images carry different colour offsets, and not when they carry none; pairs are counted by kind; a run without a
    checkpoint is a one-line error."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("generator_style", ROOT / "benchmarks" / "generator_style.py")
    gs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gs)
    import torch
    # leave-one-out: two rows each, far apart -> all right; the same two rows in both classes -> all wrong
    assert gs.loo_accuracy(torch.tensor([[0.0], [2.0]]), torch.tensor([[10.0], [12.0]])) == 1.0
    assert gs.loo_accuracy(torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [1.0]])) == 0.0
    script = str(ROOT / "benchmarks" / "generator_style.py")
    styled, plain = _bank_run(tmp_path / "runs" / "styled", 1.0), _bank_run(tmp_path / "runs" / "plain", 0.0)
    r = subprocess.run([sys.executable, script, str(styled), str(plain), "--size", "4"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = {(cells[0], cells[2]): cells[3:] for line in r.stdout.splitlines()[2:]
            if (cells := [c.strip() for c in line.strip("|").split("|")])}
    acc = {k: [float(c.split()[0]) for c in v] for k, v in rows.items()}
    # pairs: "a" x3 teachers (3) + "b" x2 (1) same class; 3 x C(5,2) one teacher; C(15,2) - 4 - 30 = 71 across
    assert [c.split()[1] for c in rows[("runs/styled", "pixels")]] == ["(4)", "(30)", "(71)"]
    assert acc[("runs/styled", "colour")][0] > 0.95 and acc[("runs/styled", "pixels")][0] > 0.95
    assert acc[("runs/plain", "pixels")][0] < 0.7 and acc[("runs/plain", "pixels")][1] > 0.95
    # the channel-mean gap: the teachers' colour offsets (uniform in [-1, 1] per channel) apart, ~0 without them
    assert acc[("runs/styled", "mean gap")][0] > 0.3 and acc[("runs/plain", "mean gap")][0] < 0.05
    a, b = torch.rand(6, 3, 4, 4), torch.rand(5, 3, 4, 4) + torch.tensor([0.3, 0.0, -0.3]).view(1, 3, 1, 1)
    gap = gs.pair_values(gs.features(a, 2), gs.features(b, 2))["mean gap"]
    assert abs(gap - float((a.mean((0, 2, 3)) - b.mean((0, 2, 3))).pow(2).mean().sqrt())) < 1e-6
    # --equalise takes each teacher's colour offset away: its one class then looks like the others' copies
    eq = subprocess.run([sys.executable, script, str(styled), "--size", "4", "--equalise"], capture_output=True,
                        text=True, timeout=300)
    assert eq.returncode == 0, eq.stderr
    colour = next(line for line in eq.stdout.splitlines() if "| colour |" in line)
    assert float(colour.strip(" |").split(" | ")[3].split()[0]) < 0.7
    bad = subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "expected a TGR checkpoint" in bad.stderr


@pytest.mark.parametrize("kind", ["colour", "pattern"])
def test_generator_style_cue_adds_the_replay_cast(tmp_path, kind) -> None:
    """--cue C: each class gets the very cast ``--replay-cue C --replay-cue-scope stored`` gives it in replay tasks,
    so one dataset class recovered by two teachers (no style in the plain bank) becomes told apart."""
    import importlib.util

    import torch

    from dfmeta.meta.bank import MemoryBank
    spec = importlib.util.spec_from_file_location("generator_style", ROOT / "benchmarks" / "generator_style.py")
    gs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gs)
    bank = MemoryBank(mix="within", cue=0.5, cue_scope="stored", cue_kind=kind)
    labels = torch.arange(5).repeat_interleave(4)
    bank.add(SimpleNamespace(images=torch.zeros(20, 3, 8, 8), labels=labels, teacher=7))
    shifts = bank.sample_tasks(1, 5, 1, 3, torch.Generator().manual_seed(0))[0][0]        # [5, C, H, W]: the casts
    classes = {(7, lab): (f"c{lab}", torch.zeros(4, 3, 8, 8)) for lab in range(5)}
    gs.add_stored_casts(classes, 0.5, kind)
    ours = [imgs[0] for _, imgs in classes.values()]
    assert all(any(torch.allclose(s, o, atol=1e-6) for o in ours) for s in shifts)
    assert len({float(o.sum()) for o in ours}) == 5
    plain = _bank_run(tmp_path / "runs" / "plain", 0.0)
    script = str(ROOT / "benchmarks" / "generator_style.py")
    r = subprocess.run([sys.executable, script, str(plain), "--size", "4", "--cue", "3", "--cue-kind", kind],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    pixels = next(line for line in r.stdout.splitlines() if "| pixels |" in line)
    assert float(pixels.strip(" |").split(" | ")[3].split()[0]) > 0.9


def test_generator_style_scores_real_class_pairs(tmp_path) -> None:
    """With --data-root, every two of the bank's dataset classes are scored on their first real meta-train images
    (as many as a bank class holds), normalised as the model takes them; an unknown class is a one-line error."""
    import importlib.util

    import torch
    spec = importlib.util.spec_from_file_location("generator_style", ROOT / "benchmarks" / "generator_style.py")
    gs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gs)
    from dfmeta.data.episodes import to_input
    from dfmeta.data.registry import load_split
    split = load_split("embedded", "train")
    names = split.class_names[:12]
    run = _bank_run(tmp_path / "runs" / "r", 1.0, dataset="embedded/")
    # rename the bank's classes a..l to the embedded split's first 12 classes
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    letters = "abcdefghijkl"
    for task in ck["extra"]["bank"]["tasks"]:
        task["names"] = [f"embedded/{names[letters.index(n[-1])]}" for n in task["names"]]
    torch.save(ck, run / "checkpoint.pt")
    script = str(ROOT / "benchmarks" / "generator_style.py")
    r = subprocess.run([sys.executable, script, str(run), "--size", "4", "--data-root", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "two real classes (pairs)" in r.stdout
    first = lambda c: to_input(torch.from_numpy(split.images[split.starts[c]:split.starts[c] + 16]),  # noqa: E731
                               split.mean, split.std)
    expected = sum(gs.loo_accuracy(gs.features(first(i), 4)["colour"], gs.features(first(j), 4)["colour"])
                   for i in range(12) for j in range(i + 1, 12)) / 66
    colour = next(line for line in r.stdout.splitlines() if "| colour |" in line)
    assert colour.strip(" |").split(" | ")[-1] == f"{expected:.3f} (66)"
    for task in ck["extra"]["bank"]["tasks"]:
        task["names"][0] = "embedded/no_such_class"
    torch.save(ck, run / "checkpoint.pt")
    bad = subprocess.run([sys.executable, script, str(run), "--data-root", str(tmp_path)], capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "no class 'no_such_class'" in bad.stderr
