"""DRO baseline: parameter fusion by a hyper-network, the Wasserstein worst case over task embeddings, and the run on
the shared loop (CLI end to end, determinism, exact resume, fused parameters validated, bad input)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import make_zoo

from dfmeta.cli import main
from dfmeta.config import make
from dfmeta.errors import DfmetaError
from dfmeta.meta.dro import (DROConfig, HyperNetwork, ParameterSpace, reconstruction_losses, svgd_direction,
                             train_dro, worst_case_embeddings)
from dfmeta.nets import build
from dfmeta.zoo import load_zoo
from dfmeta.zoo.format import Teacher, save_teacher, write_manifest

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 16
TINY = dict(dataset="embedded", image_size=SIZE, device="cpu", epochs=4, val_every=2, val_episodes=3, episodes=3,
            shots=(1,), eval_steps=2, embed_dim=4, hidden=8, steps_per_epoch=2, flow_steps=2)


def tiny(zoo: Path, out: Path, **kw) -> DROConfig:
    return make(DROConfig, {**TINY, "zoo": str(zoo), "out_dir": str(out), **kw})


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    return make_zoo(tmp_path_factory.mktemp("zoo"), 3)


def run_dir(out: Path) -> Path:
    (d,) = [p for p in out.iterdir() if p.is_dir()]
    return d


def checkpoint(out: Path) -> dict:
    return torch.load(run_dir(out) / "checkpoint.pt", weights_only=False)


def space_of(zoo: Path, head: bool = True) -> tuple[ParameterSpace, list[dict[str, torch.Tensor]]]:
    teachers = load_zoo(str(zoo)).teachers
    names = [k for k, _ in teachers[0].model("batch").named_parameters() if head or not k.startswith("head.")]
    return ParameterSpace(names, [t.state for t in teachers]), [t.state for t in teachers]


# ---------------------------------------------------------------------- the core step
def test_parameter_space_round_trip_and_standardisation(zoo):
    space, states = space_of(zoo)
    for target, state in zip(space.targets, states):
        back = space.unflatten(target)
        for k in space.names:
            assert torch.allclose(back[k], state[k], atol=1e-5), k
    assert torch.allclose(space.targets.mean(0), torch.zeros(space.dim), atol=1e-5)  # h(z) = 0 is the Average
    spreads = [float(part.pow(2).mean()) for part in space.targets.split(space.sizes, 1)]
    assert all(math.isclose(s, 1.0, rel_tol=1e-4) or s == 0 for s in spreads)  # unit spread, or equal in all
    assert sum(s == 0 for s in spreads) < len(spreads) // 2


def test_fusion_reconstructs_every_teacher(zoo):
    torch.manual_seed(0)
    space, states = space_of(zoo)
    hyper, z = HyperNetwork(4, 8, space.dim), torch.nn.Parameter(torch.randn(3, 4))
    opt = torch.optim.Adam([*hyper.parameters(), z], lr=1e-2)
    first = reconstruction_losses(hyper, z, space.targets).detach()
    for _ in range(150):
        loss = reconstruction_losses(hyper, z, space.targets).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = reconstruction_losses(hyper, z, space.targets).detach()
    assert (last < 0.05 * first).all(), (first, last)
    fused = space.unflatten(hyper(z[1]).detach())  # teacher 1's embedding gives back teacher 1, not the others
    err = [sum(float((fused[k] - s[k]).pow(2).sum()) for k in space.names) for s in states]
    assert err[1] < 0.1 * min(err[0], err[2])


def test_svgd_direction_is_the_kernel_normalised_stein_update():
    torch.manual_seed(1)
    z, g = torch.randn(5, 3), torch.randn(5, 3)
    sq = torch.cdist(z, z).pow(2)
    for scale in (0.05, 1.0):
        phi = svgd_direction(z, g, scale)
        h = scale * sq[~torch.eye(5, dtype=torch.bool)].median() / math.log(6)
        expected = torch.zeros_like(z)
        for i in range(5):  # sum_j [k(z_j, z_i) g_j + d/dz_j k(z_j, z_i)] / sum_j k(z_j, z_i), by autograd
            total = 0.0
            for j in range(5):
                zj = z[j].clone().requires_grad_(True)
                k = torch.exp(-(zj - z[i]).pow(2).sum() / h)
                (dk,) = torch.autograd.grad(k, zj)
                expected[i] += k.detach() * g[j] + dk
                total += float(k.detach())
            expected[i] /= total
        assert torch.allclose(phi, expected, atol=1e-5), scale
    assert torch.equal(svgd_direction(z[:1], g[:1]), g[:1])


def test_worst_case_ascends_spreads_and_is_penalised(zoo):
    torch.manual_seed(2)
    space, _ = space_of(zoo)
    hyper, z = HyperNetwork(4, 8, space.dim), torch.randn(3, 4)
    nominal = reconstruction_losses(hyper, z, space.targets)
    one = worst_case_embeddings(hyper, z[:1], space.targets[:1], 0.0, 5, 0.5, "svgd")  # one particle: pure ascent
    assert reconstruction_losses(hyper, one, space.targets[:1]) > nominal[:1]
    worst = worst_case_embeddings(hyper, z, space.targets, 0.2, 5, 1.0, "svgd")  # the defaults: a worse case
    assert reconstruction_losses(hyper, worst, space.targets).mean() > nominal.mean()
    near = worst_case_embeddings(hyper, z, space.targets, 1e3, 5, 1e-4, "svgd")
    far = worst_case_embeddings(hyper, z, space.targets, 0.0, 5, 1e-4, "svgd")
    assert (near - z).norm() < (far - z).norm()  # the transport penalty gamma keeps the worst case close
    flat = HyperNetwork(4, 8, space.dim)
    torch.nn.init.zeros_(flat.net[2].weight)  # no loss gradient: SVGD's repulsion alone spreads the embeddings
    spread = worst_case_embeddings(flat, z, space.targets, 0.0, 3, 0.5, "svgd", bandwidth_scale=1.0)
    assert torch.pdist(spread).min() > 1.05 * torch.pdist(z).min()
    g = torch.Generator().manual_seed(0)
    a = worst_case_embeddings(hyper, z, space.targets, 0.2, 2, 1e-3, "sgld", g)
    b = worst_case_embeddings(hyper, z, space.targets, 0.2, 2, 1e-3, "sgld", torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, z)


# ---------------------------------------------------------------------- the run
def test_cli_end_to_end_validates_the_fused_meta_initialisation(zoo, tmp_path):
    args = ["baseline", "dro", "--dataset", "embedded", "--image-size", str(SIZE), "--zoo", str(zoo), "--out-dir",
            str(tmp_path), "--device", "cpu", "--epochs", "2", "--val-every", "1", "--val-episodes", "3", "--episodes",
            "3", "--shots", "1", "--eval-steps", "2", "--embed-dim", "4", "--hidden", "8", "--steps-per-epoch", "2",
            "--flow-steps", "2", "--threads", "1"]
    assert main(args) == 0
    d = run_dir(tmp_path)
    res = json.loads((d / "results.json").read_text())
    assert res["method"] == "dro" and 0 <= res["test"]["1"]["acc"] <= 100
    rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "epoch" in r][-1]
    for key in ("loss", "worst_loss", "shift", "t_fuse", "val_acc"):
        assert key in last, key
    st = checkpoint(tmp_path)
    space, _ = space_of(zoo)
    hyper = HyperNetwork(4, 8, space.dim)
    hyper.load_state_dict(st["extra"]["hyper"])
    fused = space.unflatten(hyper(st["extra"]["embeddings"].mean(0)).detach())
    for k, v in st["params"].items():  # the parameters the loop validated are h(mean embedding)
        assert torch.allclose(v, fused[k], atol=1e-6), k


def test_same_seed_identical_and_resume_equals_uninterrupted(zoo, tmp_path):
    kw = dict(flow="sgld", flow_lr=1e-3, meta_init="sample", head="zero")  # every random stream in use
    full = train_dro(tiny(zoo, tmp_path / "a", **kw))
    again = train_dro(tiny(zoo, tmp_path / "c", **kw))
    assert again == full
    assert train_dro(tiny(zoo, tmp_path / "b", stop_after=3, **kw)) == {"stopped_at": 3}
    resumed = train_dro(make(DROConfig, {"resume": str(run_dir(tmp_path / "b")), "device": "cpu"}))
    assert resumed == full
    a, b, c = (checkpoint(tmp_path / x) for x in "abc")
    for other in (b, c):
        for k in a["params"]:
            assert torch.equal(a["params"][k], other["params"][k]), k
        for k in a["extra"]["hyper"]:
            assert torch.equal(a["extra"]["hyper"][k], other["extra"]["hyper"][k]), k
        assert torch.equal(a["extra"]["embeddings"], other["extra"]["embeddings"])
    assert not a["params"]["head.weight"].any()  # head "zero": not fused


# ---------------------------------------------------------------------- bad input
def mixed_zoo(path: Path) -> Path:
    entries = []
    for i, arch in enumerate(["conv4", "conv4", "resnet10"]):
        m = build(arch, 5, SIZE, 3, "running").eval()
        entries.append(save_teacher(path, Teacher(str(i), arch, SIZE, 3, (0.5,) * 3, (0.25,) * 3, "embedded",
                                                  [f"pattern_{5 * i + j:03d}" for j in range(5)],
                                                  dict(m.state_dict()))))
    write_manifest(path, entries)
    return path


def test_bad_input_before_compute(zoo, tmp_path):
    with pytest.raises(DfmetaError, match="resnet10 x1"):
        train_dro(tiny(mixed_zoo(tmp_path / "mixed"), tmp_path / "out"))
    with pytest.raises(DfmetaError, match="arch"):
        tiny(zoo, tmp_path, arch="resnet10")
    for field, value in (("embed_dim", 0), ("flow_lr", 0.0), ("beta", -1.0), ("steps_per_epoch", 0)):
        with pytest.raises(DfmetaError, match=field):
            tiny(zoo, tmp_path, **{field: value})
    with pytest.raises(DfmetaError):
        tiny(zoo, tmp_path, flow="adam")
    with pytest.raises(DfmetaError, match="--ways"):
        train_dro(tiny(zoo, tmp_path, ways=3))
    with pytest.raises(DfmetaError, match="flow"):
        worst_case_embeddings(HyperNetwork(2, 2, 3), torch.zeros(2, 2), torch.zeros(2, 3), 0.0, 1, 0.1, "adam")


def test_presets_are_valid_configs():
    from dfmeta.commands.dro import PRESETS
    assert PRESETS and not any(name.startswith("multi-arch") for name in PRESETS)
    for name, values in PRESETS.items():
        assert make(DROConfig, {"zoo": "z", **values}).epochs >= 1, name
