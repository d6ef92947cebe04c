"""Run directories, atomic writes, metrics logging, seeding and device selection."""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from dfmeta.config import to_dict
from dfmeta.errors import DfmetaError

try:
    import fcntl
except ImportError:  # not POSIX: run directories are not locked
    fcntl = None  # type: ignore[assignment]

LOCK = "lock"
"""The file a process holds (``flock``) while it writes into a run directory; readers ignore it."""
STARTED = {"config.json", "env.jsonl", LOCK}
"""The files starting a run writes: a run directory holding no more has no work in it."""


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename: a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_write`."""
    import io
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(n: int) -> None:
    """Use ``n`` CPU threads in torch (0 leaves torch's default)."""
    if n > 0:
        torch.set_num_threads(n)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class RunDir:
    """A run's directory: ``config.json`` (resolved config), ``metrics.jsonl`` and artefacts."""

    def __init__(self, path: str | os.PathLike, config: Any | None = None) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.made_root = False
        """Whether :meth:`new` made the parent folder (:meth:`discard_if_unused` then removes it too, if empty)."""
        if config is not None:
            self.write_config(config)

    @staticmethod
    def new(root: str | os.PathLike, dataset: str, method: str, seed: int, config: Any | None = None) -> "RunDir":
        """A fresh run directory named ``{dataset}__{method}__{seed}__{time}`` under ``root``, made by this call alone:
        where another run took the name (started in the same second), ``-2``, ``-3``, ... is appended."""
        root = Path(root)
        made_root = not root.exists()
        root.mkdir(parents=True, exist_ok=True)
        name = f"{dataset}__{method}__{seed}__{time.strftime('%Y%m%d-%H%M%S')}"
        for n in itertools.count(1):
            path = root / (name if n == 1 else f"{name}-{n}")
            try:
                path.mkdir()
                break
            except FileExistsError:
                continue
        run = RunDir(path, config)
        run.made_root = made_root
        return run

    def write_config(self, config: Any) -> None:
        """Atomically write the resolved config as ``config.json``."""
        atomic_write(self.path / "config.json", json.dumps(to_dict(config), indent=2) + "\n")

    @contextmanager
    def locked(self) -> Iterator["RunDir"]:
        """Hold the run's ``lock`` file (``flock``, released on exit and when the process dies, a kill included)
        while writing into the run: a second process that would train or continue it fails at once."""
        with open(self.path / LOCK, "a") as fh:
            if fcntl is not None:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise DfmetaError(f"{self.path}: run in progress (another dfmeta process holds its lock)") from None
            yield self

    def discard_if_unused(self) -> bool:
        """Remove the run directory if it holds nothing but what starting it wrote (:data:`STARTED`), and the parent
        folder :meth:`new` made if that is then empty: a call that failed on bad input leaves nothing behind."""
        if not {f.name for f in self.path.iterdir()} <= STARTED:
            return False
        shutil.rmtree(self.path)
        if self.made_root and not any(self.path.parent.iterdir()):
            self.path.parent.rmdir()
        return True

    def log(self, **metrics: Any) -> None:
        """Append one JSON line to ``metrics.jsonl``."""
        self._append("metrics.jsonl", metrics)

    def record_environment(self, device: torch.device | str) -> None:
        """Append this call's machine and software (:func:`dfmeta.environment.environment`) to ``env.jsonl``."""
        from dfmeta.environment import environment
        self._append("env.jsonl", environment(device))

    def log_call(self, **settings: Any) -> None:
        """Append one JSON line to ``calls.jsonl`` (a call that continued the run: its epoch and settings)."""
        self._append("calls.jsonl", settings)

    def _append(self, name: str, row: dict[str, Any]) -> None:
        with open(self.path / name, "a") as fh:
            fh.write(json.dumps(row, default=float) + "\n")

    def metrics(self) -> list[dict[str, Any]]:
        """All logged metric lines."""
        p = self.path / "metrics.jsonl"
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    def rewrite_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Atomically replace ``metrics.jsonl`` with ``rows``."""
        atomic_write(self.path / "metrics.jsonl", "".join(json.dumps(m, default=float) + "\n" for m in rows))

    def write_json(self, name: str, obj: Any) -> None:
        """Atomically write ``name`` as JSON."""
        atomic_write(self.path / name, json.dumps(obj, indent=2, default=float) + "\n")
