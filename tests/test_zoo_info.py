"""``zoo info``: the table, coverage of the meta-train classes, class names the dataset lacks."""

from __future__ import annotations

import json

import pytest

from dfmeta.cli import main
from dfmeta.data.registry import load_split
from dfmeta.errors import DfmetaError
from dfmeta.zoo import load_zoo
from dfmeta.zoo.build import rebuild_manifest, sidecar
from dfmeta.zoo.info import class_problems, coverage, report, require_classes
from test_zoo_format import make_teacher, write_zoo


@pytest.fixture
def zoo(tmp_path):
    write_zoo(tmp_path, [make_teacher("0", acc=91.5, classes=("pattern_000", "pattern_001", "pattern_002")),
                         make_teacher("1", acc=None, classes=("pattern_001", "pattern_003", "no_such_class"))])
    return load_zoo(tmp_path)


def test_table_coverage_and_warnings(zoo):
    split = load_split("embedded", "train", image_size=16)
    assert coverage(zoo, split)[0] == 4 and len(coverage(zoo, split)[1]) == 156
    text, warnings = report(zoo, split)
    lines = text.splitlines()
    assert lines[0].split() == ["id", "arch", "held-out", "%", "classes"]
    assert lines[1].split()[:3] == ["0", "conv4", "91.50"] and lines[2].split()[:3] == ["1", "conv4", "-"]
    assert "2 teachers (2 conv4); held-out accuracy mean 91.5%" in text
    assert "coverage of embedded/train: 4 of 160 classes" in text
    assert warnings == class_problems(zoo, split)
    assert warnings == [f"model 1 ({zoo.path / 'model_1.safetensors'}): class 'no_such_class' is not a class of "
                        "embedded/train"]
    with pytest.raises(DfmetaError, match=r"model 1 \(.*model_1.safetensors\): class 'no_such_class'"):
        require_classes(zoo, split)


def test_cli_info(zoo, capsys):
    assert main(["zoo", "info", "--zoo", str(zoo.path), "--dataset", "embedded"]) == 0
    out = capsys.readouterr()
    assert "coverage of embedded/train: 4 of 160" in out.out
    assert "warning: model 1" in out.err and "no_such_class" in out.err
    assert main(["zoo", "info", "--zoo", str(zoo.path)]) == 0  # dataset 'tiny' is not registered: no coverage
    assert "coverage" not in capsys.readouterr().out
    assert main(["zoo", "info"]) == 2
    assert "field 'zoo': required" in capsys.readouterr().err


def test_info_rebuilds_manifest_from_sidecars(zoo, capsys):
    for t in zoo.teachers:  # as written by zoo build's shards
        entry = next(e for e in json.loads((zoo.path / "manifest.json").read_text())["models"] if e["id"] == t.id)
        sidecar(zoo.path, t.id).write_text(json.dumps(entry))
    (zoo.path / "manifest.json").write_text(json.dumps({"format": "dfmeta-zoo", "version": 1, "models": []}))
    assert main(["zoo", "info", "--zoo", str(zoo.path)]) == 0
    assert [t.id for t in load_zoo(zoo.path).teachers] == ["0", "1"]
    assert rebuild_manifest(zoo.path) == 2
