"""The zoo on disk: round trip, and load errors that name the model id and the file."""

from __future__ import annotations

import json

import pytest
import torch

from dfmeta.errors import DfmetaError
from dfmeta.nets import build
from dfmeta.zoo import Teacher, load_zoo, save_teacher, write_manifest
from dfmeta.zoo.format import MANIFEST


def make_teacher(tid: str, arch: str = "conv4", seed: int = 0, acc: float | None = 80.0,
                 classes: tuple[str, ...] = ("a", "b", "c")) -> Teacher:
    torch.manual_seed(seed)
    state = {k: v.clone() for k, v in build(arch, len(classes), 16, 3, "running").state_dict().items()}
    return Teacher(tid, arch, 16, 3, (0.5,) * 3, (0.25,) * 3, "tiny", list(classes), state, acc, {"epochs": 1})


def write_zoo(path, teachers) -> list[dict]:
    entries = [save_teacher(path, t) for t in teachers]
    write_manifest(path, entries, {"source": "test"})
    return entries


@pytest.fixture
def zoo_dir(tmp_path):
    write_zoo(tmp_path, [make_teacher("0", seed=0, acc=70.0), make_teacher("1", seed=1, acc=None)])
    return tmp_path


def test_round_trip(zoo_dir):
    zoo = load_zoo(zoo_dir)
    assert [t.id for t in zoo.teachers] == ["0", "1"] and zoo.skipped == []
    ref = make_teacher("1", seed=1)
    t = zoo[1]
    assert (t.arch, t.image_size, t.in_channels, t.heldout_acc) == ("conv4", 16, 3, None)
    assert t.class_names == ["a", "b", "c"]
    assert t.mean == (0.5,) * 3 and t.recipe == {"epochs": 1} and zoo[0].heldout_acc == 70.0
    assert t.state.keys() == ref.state.keys() and all(torch.equal(t.state[k], ref.state[k]) for k in t.state)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(t.model()(x), ref.model()(x))
    assert zoo.by_arch() == {"conv4": [0, 1]}


def _break(zoo_dir, how):
    f = zoo_dir / "model_1.safetensors"
    man = json.loads((zoo_dir / MANIFEST).read_text())
    if how == "missing":
        f.unlink()
    elif how == "truncated":
        f.write_bytes(f.read_bytes()[:100])
    elif how == "checksum":
        data = bytearray(f.read_bytes())
        data[-1] ^= 1
        f.write_bytes(bytes(data))
    elif how == "unreadable":  # consistent checksum but not safetensors
        f.write_bytes(b"not a safetensors file")
        import hashlib
        man["models"][1]["sha256"] = hashlib.sha256(b"not a safetensors file").hexdigest()
    elif how == "arch":
        man["models"][1]["arch"] = "vgg11"
    elif how in ("keys", "shape"):
        t = make_teacher("1", seed=1)
        if how == "keys":
            t.state["extra.weight"] = torch.zeros(1)
            del t.state["head.bias"]
        else:
            t.state["head.weight"] = torch.zeros(7, 32)
        man["models"][1] = save_teacher(zoo_dir, t)
    (zoo_dir / MANIFEST).write_text(json.dumps(man))


@pytest.mark.parametrize("how,msg", [
    ("missing", "file missing"),
    ("truncated", "checksum mismatch"),
    ("checksum", "checksum mismatch"),
    ("unreadable", "not a readable safetensors file"),
    ("arch", "unknown architecture 'vgg11'"),
    ("keys", r"keys do not match conv4: missing \['head.bias'\], unexpected \['extra.weight'\]"),
    ("shape", r"head.weight has shape \(7, 32\), conv4 expects \(3, 32\)"),
])
def test_load_errors_name_model_and_file(zoo_dir, how, msg):
    _break(zoo_dir, how)
    with pytest.raises(DfmetaError, match=msg) as e:
        load_zoo(zoo_dir)
    assert "model 1" in str(e.value) and "\n" not in str(e.value)
    if how != "arch":
        assert "model_1.safetensors" in str(e.value)
    zoo = load_zoo(zoo_dir, skip_bad=True)  # the bad model is left out and reported
    assert [t.id for t in zoo.teachers] == ["0"]
    assert len(zoo.skipped) == 1 and "model 1" in zoo.skipped[0]


def test_manifest_errors(tmp_path):
    with pytest.raises(DfmetaError, match="zoo directory not found"):
        load_zoo(tmp_path / "nope")
    with pytest.raises(DfmetaError, match="no manifest.json"):
        load_zoo(tmp_path)
    (tmp_path / MANIFEST).write_text("{")
    with pytest.raises(DfmetaError, match="not valid JSON"):
        load_zoo(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "dfmeta-zoo", "version": 1, "models": [{"id": "3"}]}))
    with pytest.raises(DfmetaError, match="model 3: missing field 'arch'"):
        load_zoo(tmp_path)
    with pytest.raises(DfmetaError, match="holds no usable model"):
        load_zoo(tmp_path, skip_bad=True)


def test_dataset_warning_names_a_zoo_of_other_datasets() -> None:
    from pathlib import Path
    from types import SimpleNamespace

    from dfmeta.zoo.format import Zoo
    zoo = Zoo(Path("z"), [SimpleNamespace(dataset="cifar-fs"), SimpleNamespace(dataset="cifar-fs")])
    assert zoo.dataset_warning(["cifar-fs"]) == ""
    assert "come from cifar-fs, not embedded" in zoo.dataset_warning(["embedded"])
    assert "no teacher of the zoo comes from omniglot" in zoo.dataset_warning(["cifar-fs", "omniglot"])
    assert Zoo(Path("z"), [SimpleNamespace(dataset="")]).dataset_warning(["embedded"]) == ""  # provenance unknown
