"""Import of the TGR authors' zoo format: generated fakes, and the reference zoo against CIFAR-FS (integration)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import require_data, require_zoo
from dfmeta.cli import main
from dfmeta.data.episodes import to_input
from dfmeta.data.folder import list_class_images
from dfmeta.data.images import decode_many
from dfmeta.errors import DfmetaError
from dfmeta.nets import build
from dfmeta.zoo import load_zoo
from dfmeta.zoo.authors import import_authors_zoo

CLASSES = ["apple", "bear", "cloud", "lion", "orange", "tulip", "wolf"]


def authors_state(seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A Conv4 under dfmeta's names and the same tensors under the authors' (with the duplicate registrations)."""
    torch.manual_seed(seed)
    ours = {k: v.clone() for k, v in build("conv4", 5, 32, 3, "running").state_dict().items()}
    theirs = {}
    for k, v in ours.items():
        if k.startswith("head."):
            theirs["trunk.5." + k[5:]] = v
            continue
        _, i, layer, rest = k.split(".", 3)
        theirs[f"trunk.{i}.{'C' if layer == 'conv' else 'BN'}.{rest}"] = v
        theirs[f"trunk.{i}.trunk.{0 if layer == 'conv' else 1}.{rest}"] = v
    return ours, theirs


def make_authors_zoo(path, n: int = 2) -> list[dict[str, torch.Tensor]]:
    (path / "model").mkdir(parents=True)
    models, ours_all = {}, []
    for i in range(n):
        ours, theirs = authors_state(i)
        specific = [(i + j) % len(CLASSES) for j in range(5)]
        torch.save({"teacher": theirs, "specific": specific}, path / "model" / f"model_specific_{i}.pth")
        models[str(i)] = {"specific": specific, "heldout_acc": 80.0 + i, "best_epoch": 3}
        ours_all.append(ours)
    (path / "manifest.json").write_text(json.dumps({"classes": CLASSES, "arch": "conv4-32", "image_size": 32,
                                                   "models": models}))
    return ours_all


def test_import_fake_authors_zoo(tmp_path):
    ours = make_authors_zoo(tmp_path / "src")
    n, skipped = import_authors_zoo(tmp_path / "src", tmp_path / "dst")
    assert (n, skipped) == (2, [])
    zoo = load_zoo(tmp_path / "dst")
    assert [t.id for t in zoo.teachers] == ["0", "1"]
    t = zoo[1]
    assert t.class_names == ["bear", "cloud", "lion", "orange", "tulip"] and t.heldout_acc == 81.0
    assert t.arch == "conv4" and t.image_size == 32 and t.dataset == "cifar-fs"
    assert t.recipe["best_epoch"] == 3 and t.mean == (0.5071, 0.4867, 0.4408)
    assert all(torch.equal(t.state[k], ours[1][k]) for k in ours[1])
    # a manifest without normalisation: the dataset's (ImageNet statistics for the 84 px datasets), not CIFAR's
    import_authors_zoo(tmp_path / "src", tmp_path / "cub", dataset="cub")
    assert load_zoo(tmp_path / "cub")[0].mean == (0.485, 0.456, 0.406)


def test_import_rejects_differing_duplicate(tmp_path):
    make_authors_zoo(tmp_path / "src", 1)
    f = tmp_path / "src" / "model" / "model_specific_0.pth"
    obj = torch.load(f, weights_only=True)
    obj["teacher"]["trunk.2.trunk.1.weight"] = obj["teacher"]["trunk.2.trunk.1.weight"] + 1
    torch.save(obj, f)
    with pytest.raises(DfmetaError, match=r"model 0 \(.*model_specific_0.pth\): trunk.2.trunk.1.weight differs"):
        import_authors_zoo(tmp_path / "src", tmp_path / "dst")


def test_cli_import_skip_bad(tmp_path, capsys):
    make_authors_zoo(tmp_path / "src", 3)
    (tmp_path / "src" / "model" / "model_specific_1.pth").write_bytes(b"garbage")
    args = ["zoo", "import", "--src", str(tmp_path / "src"), "--dst", str(tmp_path / "dst")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "model 1 (" in err and "model_specific_1.pth): cannot read" in err
    assert main(args + ["--skip-bad"]) == 0
    out = capsys.readouterr()
    assert "imported 2 teachers" in out.out and "skipped 1" in out.out and "model 1" in out.err
    assert [t.id for t in load_zoo(tmp_path / "dst").teachers] == ["0", "2"]
    assert main(["zoo", "import", "--src", str(tmp_path / "src")]) == 2
    assert "field 'dst': required" in capsys.readouterr().err


def reference_zoo():
    return require_zoo()


@pytest.mark.integration
def test_reference_zoo_heldout_accuracy(tmp_path):
    """Teacher 0 of the reference zoo, imported, scores its manifest's held-out accuracy (files 480-599)."""
    src = reference_zoo()
    images_dir = require_data("cifar100") / "images"
    n, skipped = import_authors_zoo(src, tmp_path)
    assert n >= 81 and skipped == []
    t = load_zoo(tmp_path)[0]
    expected = json.loads((src / "manifest.json").read_text())["models"]["0"]["heldout_acc"]
    assert t.heldout_acc == expected == 90.83
    xs, ys = [], []
    for label, name in enumerate(t.class_names):
        files = [str(f) for f in list_class_images(images_dir, name)[480:600]]
        xs.append(torch.from_numpy(decode_many(files, files, None, 3, expect_size=32)))
        ys += [label] * len(files)
    x = to_input(torch.cat(xs), t.mean, t.std)
    with torch.no_grad():
        acc = (t.model()(x).argmax(1) == torch.tensor(ys)).float().mean().item() * 100
    assert acc == pytest.approx(expected, abs=0.01)
