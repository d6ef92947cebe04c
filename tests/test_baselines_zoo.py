"""The zoo-only baselines: best-model, average and OTA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dfmeta.baselines import BASELINES, NEEDS_ZOO, BaselineInput
from dfmeta.baselines.ota import align_conv4, ota_fuse, permute_conv4
from dfmeta.errors import DfmetaError
from dfmeta.nets import build, fcall
from dfmeta.zoo import Zoo
from test_zoo_format import make_teacher


def teacher(tid, seed, acc=80.0, arch="conv4"):
    t = make_teacher(tid, arch=arch, seed=seed, acc=acc)
    g = torch.Generator().manual_seed(seed)
    for k, v in t.state.items():  # BN params away from their 1/0 init, so neurons are distinguishable
        if ".bn." in k and v.is_floating_point():
            v.copy_(torch.rand(v.shape, generator=g) + 0.5)
    return t


def inp(teachers, arch="conv4"):
    return BaselineInput(arch, 5, 16, 3, 0, Zoo(Path("zoo"), teachers))


def test_registered():
    assert {"best-model", "average", "ota"} <= NEEDS_ZOO and {"best-model", "average", "ota"} <= set(BASELINES)


def test_best_model_picks_max_heldout():
    ts = [teacher("0", 0, 70.0), teacher("1", 1, 92.5), teacher("2", 2, None), teacher("3", 3, 99.0, "resnet10")]
    init = BASELINES["best-model"](inp(ts))
    assert init.head == "zero" and init.params["head.weight"].shape == (5, 32)
    assert all(torch.equal(init.params[k], ts[1].state[k]) for k in init.params if not k.startswith("head."))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) and m.track_running_stats for m in init.model.modules())


def test_average_of_identical_teachers_is_the_teacher():
    ts = [teacher(str(i), 7) for i in range(3)]
    init = BASELINES["average"](inp(ts))
    for k, v in init.params.items():
        if not k.startswith("head."):
            torch.testing.assert_close(v, ts[0].state[k])
    two = BASELINES["average"](inp([teacher("0", 1), teacher("1", 2)]))
    k = "blocks.2.bn.weight"
    torch.testing.assert_close(two.params[k], (teacher("0", 1).state[k] + teacher("1", 2).state[k]) / 2)


def test_permutation_keeps_the_function():
    t = teacher("0", 3)
    perms = [torch.randperm(32, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    moved = permute_conv4(t.state, perms)
    assert not torch.equal(moved["blocks.1.conv.weight"], t.state["blocks.1.conv.weight"])
    model = build("conv4", 3, 16, 3, "running").eval()
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(fcall(model, {}, x, moved), fcall(model, {}, x, t.state))


def test_ota_recovers_a_permuted_copy():
    t = teacher("0", 3)
    perms = [torch.randperm(32, generator=torch.Generator().manual_seed(10 + i)) for i in range(4)]
    copy = make_teacher("1", seed=0)
    copy.state = permute_conv4(t.state, perms)
    aligned = align_conv4(copy.state, t.state)
    assert all(torch.equal(aligned[k], t.state[k]) for k in t.state)
    init = BASELINES["ota"](inp([t, copy]))
    for k, v in init.params.items():
        if not k.startswith("head."):
            torch.testing.assert_close(v, t.state[k])
    x = torch.randn(6, 3, 16, 16)  # the fused meta-model computes the teacher's function
    same = {k: (v if k.startswith("head.") else t.state[k]) for k, v in init.params.items()}
    torch.testing.assert_close(fcall(init.model, init.params, x), fcall(init.model, same, x))
    plain = BASELINES["average"](inp([t, copy]))  # without alignment the average is a different network
    assert not torch.allclose(plain.params["blocks.0.conv.weight"], t.state["blocks.0.conv.weight"])
    assert ota_fuse([t.state], ["blocks.0.conv.weight"])["blocks.0.conv.weight"].equal(t.state["blocks.0.conv.weight"])


def test_zoo_baselines_errors():
    with pytest.raises(DfmetaError, match="no conv4 teacher for 16px 3-channel images"):
        BASELINES["average"](inp([teacher("0", 0, arch="resnet10")]))
    with pytest.raises(DfmetaError, match="ota: alignment is implemented for conv4"):
        BASELINES["ota"](inp([teacher("0", 0, arch="resnet10")], arch="resnet10"))
