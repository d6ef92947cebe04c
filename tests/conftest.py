"""Shared fixtures: small generated data for unit tests, the real data root for integration tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from dfmeta.memory import keep_freed_memory
from dfmeta.nets import build
from dfmeta.zoo.format import Teacher, save_teacher, write_manifest

torch.set_num_threads(min(2, torch.get_num_threads()))
keep_freed_memory()  # as the command line does: large CPU tensors reuse freed memory


def data_root() -> Path:
    """Real data root: $DFMETA_DATA, default ../shared/data (relative to the repository)."""
    return Path(os.environ.get("DFMETA_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def require_data(sub: str, base: Path | None = None) -> Path:
    """The real dataset folder ``sub`` under the data root (or ``base``); skip, or fail when DFMETA_REQUIRE_DATA=1,
    if absent."""
    p = (base or data_root()) / sub
    if not p.exists():
        msg = f"real data not found at {p} (set DFMETA_DATA)"
        if os.environ.get("DFMETA_REQUIRE_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return p


def require_zoo(name: str = "cifar-fs-conv4") -> Path:
    """A reference zoo in the authors' format beside the data root (``../shared/zoos/<name>``)."""
    return require_data(f"{name}/manifest.json", data_root().parent / "zoos").parent


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny ops: two gain nothing and lose a lot on a shared, busy CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Unit tests decode into a private cache; the real-data cache is shared across tests for speed."""
    if "DFMETA_CACHE" not in os.environ:
        monkeypatch.setenv("DFMETA_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    yield


def make_zoo(path: Path, n: int = 6, size: int = 16, stride: int = 5) -> Path:
    """A zoo of random Conv4 teachers with non-trivial BatchNorm statistics (no training needed); teacher i's classes
    are ``pattern_{stride * i + j}``, j < 5 (``stride`` < 5: neighbours share classes)."""
    entries = []
    for i in range(n):
        torch.manual_seed(100 + i)
        m = build("conv4", 5, size, 3, "running").train()
        with torch.no_grad():
            m(torch.randn(16, 3, size, size) * (1 + 0.3 * i))
        t = Teacher(str(i), "conv4", size, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "embedded",
                    [f"pattern_{stride * i + j:03d}" for j in range(5)], dict(m.state_dict()), 50.0 + i)
        entries.append(save_teacher(path, t))
    write_manifest(path, entries)
    return path
