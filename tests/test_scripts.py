"""Shell scripts under benchmarks/: their argument checks answer with one line and exit 2 before any work."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

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
