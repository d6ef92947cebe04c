"""Eq. 8 task loss: true KL, the authors' form, switchable terms, vmap-friendly."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.func import vmap

from dfmeta.errors import DfmetaError
from dfmeta.meta.loss import kd_loss, task_loss
from dfmeta.nets import build, fcall, params_of


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = build("conv4", 5, 16, 3, "batch").double()
    x = torch.randn(8, 3, 16, 16, dtype=torch.float64)
    return model, params_of(model), x, torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 5, (8,))


def test_kl_form_is_true_kl_plus_ce(setup):
    model, p, x, t, y = setup
    s = fcall(model, p, x)
    ref = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")
    torch.testing.assert_close(task_loss(model, p, x, t, y), ref + F.cross_entropy(s, y))
    torch.testing.assert_close(task_loss(model, p, x, t, y, ce=False), ref)
    torch.testing.assert_close(task_loss(model, p, x, t, y, kd=False), F.cross_entropy(s, y))
    assert float(kd_loss(s, s.detach())) == pytest.approx(0.0, abs=1e-12)


def test_authors_form_matches_their_call(setup):
    model, p, x, t, y = setup
    s = fcall(model, p, x)
    torch.testing.assert_close(kd_loss(s, t, "authors"), F.kl_div(F.softmax(s, -1), F.softmax(t, -1)))
    torch.testing.assert_close(task_loss(model, p, x, t, y, ce=False, kd_form="authors"),
                               F.kl_div(F.softmax(s, -1), F.softmax(t, -1)))


def test_vmap_without_fallback(setup):
    model, p, x, t, y = setup
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = vmap(lambda a, b, c: task_loss(model, p, a, b, c))(x.view(2, 4, 3, 16, 16), t.view(2, 4, 5), y.view(2, 4))
    torch.testing.assert_close(out[0], task_loss(model, p, x[:4], t[:4], y[:4]))


def test_bad_arguments(setup):
    model, p, x, t, y = setup
    with pytest.raises(DfmetaError):
        task_loss(model, p, x, t, y, kd=False, ce=False)
    with pytest.raises(DfmetaError):
        task_loss(model, p, x, t, y, kd_form="js")
