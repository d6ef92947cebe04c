"""The analyses: Fig. 4's data from `dfmeta group`, Fig. 5's IGR-against-ERM run (same tasks, exact continue)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_zoo
from dfmeta.analysis.igr_vs_erm import IGRvsERMConfig, run_igr_vs_erm
from dfmeta.commands.group import class_overlap, dissimilarity_analysis, summarise_dissimilarity
from dfmeta.config import make
from dfmeta.errors import DfmetaError
from dfmeta.zoo import load_zoo

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return make_zoo(tmp_path_factory.mktemp("zoo"), n=4)


def test_class_overlap_and_summary(zoo) -> None:
    z = load_zoo(zoo)
    z.teachers[1].class_names = z.teachers[0].class_names[:3] + ["x", "y"]
    z.teachers[3].arch = "resnet10"  # label only: the analysis reads the arch names
    ov = class_overlap(z)
    assert ov[0, 0] == 5 and ov[0, 1] == 3 and ov[1, 0] == 3 and ov[0, 2] == 0
    W = np.array([[0, .1, .5, .6], [.1, 0, .5, .6], [.5, .5, 0, .6], [.6, .6, .6, 0]])
    a = dissimilarity_analysis(z, W)
    assert a["overlap"] == ov.tolist() and a["archs"][3] == "resnet10" and a["W"][0][1] == pytest.approx(.1)
    text = "\n".join(summarise_dissimilarity(a))
    assert "sharing 3 classes:     1, mean W 0.1000" in text
    assert "sharing 0 classes:     5, mean W 0.5600" in text
    assert "arch: same 0.3667, different 0.6000" in text
    assert "rho of W against shared classes: -0.707" in text  # ranks of W (.1 .5 .6 .5 .6 .6), overlap (3 0 0 0 0 0)
    flat = dissimilarity_analysis(z, np.full((4, 4), .5))
    assert "rho" not in "\n".join(summarise_dissimilarity(flat))  # a constant W has no rank correlation


def _cfg(zoo, out, **kw) -> IGRvsERMConfig:
    base = dict(zoo=str(zoo), out_dir=str(out), device="cpu", epochs=3, teachers_per_epoch=3, steps=2,
                per_class=2, nf=8, beta=0.05)
    base.update(kw)
    return make(IGRvsERMConfig, base)


def test_igr_and_erm_see_the_same_tasks_and_continue_exactly(zoo, tmp_path) -> None:
    full = run_igr_vs_erm(_cfg(zoo, tmp_path / "a"))
    igr, erm = full["runs"]["igr"], full["runs"]["erm"]
    assert len(igr["loss"]) == 3
    # the same start and the same tasks: identical statistics at epoch 1, then the update rules part ways
    assert igr["loss"][0] == erm["loss"][0] and igr["regulariser"][0] == erm["regulariser"][0]
    assert igr["loss"][2] != erm["loss"][2]
    # a run killed after 2 epochs and continued equals the uninterrupted one
    part = run_igr_vs_erm(_cfg(zoo, tmp_path / "b", epochs=2))
    (run,) = (tmp_path / "b").iterdir()
    rest = run_igr_vs_erm(_cfg(zoo, tmp_path / "b", epochs=3, run_dir=str(run)))
    assert rest["runs"] == full["runs"] and len(part["runs"]["igr"]["loss"]) == 2
    assert json.loads((run / "analysis.json").read_text())["analysis"] == "igr-vs-erm"


def test_beta_zero_makes_igr_erm(zoo, tmp_path) -> None:
    out = run_igr_vs_erm(_cfg(zoo, tmp_path, beta=0.0))
    for name in ("loss", "regulariser", "cosine"):  # equal up to float rounding (another summation order)
        np.testing.assert_allclose(out["runs"]["igr"][name], out["runs"]["erm"][name], rtol=1e-4)


def test_bad_input(zoo, tmp_path) -> None:
    with pytest.raises(DfmetaError, match="teachers_per_epoch"):
        run_igr_vs_erm(_cfg(zoo, tmp_path, teachers_per_epoch=9))
    with pytest.raises(DfmetaError, match="cosine needs 2"):
        _cfg(zoo, tmp_path, teachers_per_epoch=1)


def test_group_command_writes_fig4_data(zoo, tmp_path, capsys) -> None:
    from dfmeta.cli import main
    assert main(["group", "--zoo", str(zoo), "--steps", "2", "--per-class", "2", "--nf", "8", "--groups", "2",
                 "--fisher-samples", "4", "--out-dir", str(tmp_path), "--device", "cpu"]) == 0
    (run,) = tmp_path.iterdir()
    a = json.loads((run / "analysis.json").read_text())
    assert a["analysis"] == "dissimilarity" and len(a["W"]) == 4 and a["overlap"][0][0] == 5
    assert (run / "W.png").exists() and "W against class overlap" in capsys.readouterr().out


def test_teachers_drawn_from_one_group(zoo, tmp_path) -> None:
    groups = tmp_path / "groups"
    groups.mkdir()
    ids = [t.id for t in load_zoo(zoo).teachers]
    # teachers 0 and 2 form the only group of m = 2 or more; teacher 3's group is too small, teacher 1's as well
    (groups / "groups.json").write_text(json.dumps({"teacher_ids": ids, "labels": [0, 1, 0, 2]}))
    out = run_igr_vs_erm(_cfg(zoo, tmp_path / "a", teachers_per_epoch=2, groups_from=str(groups)))
    assert out["groups_from"] == str(groups)
    (run,) = (tmp_path / "a").iterdir()
    drawn = [json.loads(line)["teachers"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert drawn == [[ids[0], ids[2]]] * 3
    (groups / "groups.json").write_text(json.dumps({"teacher_ids": ids, "labels": [0, 1, 2, 3]}))
    with pytest.raises(DfmetaError, match="no group has m = 2 teachers"):
        run_igr_vs_erm(_cfg(zoo, tmp_path / "b", teachers_per_epoch=2, groups_from=str(groups)))
    (groups / "groups.json").write_text(json.dumps({"teacher_ids": ids[:3], "labels": [0, 0, 1]}))
    with pytest.raises(DfmetaError, match="no group for teacher"):
        run_igr_vs_erm(_cfg(zoo, tmp_path / "c", teachers_per_epoch=2, groups_from=str(groups)))
    with pytest.raises(DfmetaError, match="no groups.json there"):
        _cfg(zoo, tmp_path, groups_from=str(tmp_path / "nowhere"))
